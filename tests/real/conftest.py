"""The real model server, started once per test session (only when the lane runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.real.lane import LlamaServer, real_extra_missing


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-cpp-python's server on SmolLM2-135M-Instruct, with its default settings (interrupting
    included), killed at the end of the session."""
    reason = real_extra_missing()
    if reason is not None:
        pytest.skip(reason)
    with LlamaServer(tmp_path_factory.mktemp("llama") / "server.log") as server:
        yield server
