"""The operations endpoint end to end: the real bot, the emulator and the fake Ollama server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.exts.test_chat import final_reply
from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, make_config, running_bot


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_healthz_and_metrics_tell_the_truth(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    discord_api: EmulatorControl,
    http: Any,
) -> None:
    ollama.script("llama2", ["an answer"])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = make_config(tmp_path, emulator.url, [ollama.url], metrics={"listen": f"127.0.0.1:{port}"})
    async with running_bot(config) as runner:
        health = await http.get(f"{base}/healthz")
        assert health.status_code == 200, health.text
        assert health.json() == {"gateway": True, "database": True, "loops": True}
        # Another process sharing the token used up a bucket: the 429 is counted, the reply still lands.
        await discord_api.fault(
            kind="rate_limit_shared", method="POST", path="/channels/*/messages", count=1, retry_after=0.2
        )
        question = await discord_api.mention("general", "alice", "hello")
        await final_reply(discord_api, "general", question["id"], contains="an answer")
        await discord_api.invoke("general", "bob", "blog new", topic="owls at night")
        scraped = await http.get(f"{base}/metrics")
        assert scraped.headers["content-type"].startswith("text/plain; version=")
        values = samples(scraped.text)
        # The database stops answering: the endpoint says so, with the failing check.
        assert runner.bot is not None
        await runner.bot.db.close()
        broken = await http.get(f"{base}/healthz")
    backend = (("backend", "backend0"),)
    assert values[("llmbot_chat_replies_total", (("outcome", "ok"),))] == 1
    assert values[("llmbot_chat_first_text_seconds_count", ())] == 1
    assert values[("llmbot_chat_final_text_seconds_count", ())] == 1
    assert values[("llmbot_discord_rate_limited_total", (("scope", "shared"),))] == 1
    assert values[("llmbot_backend_up", backend)] == 1
    assert values[("llmbot_backend_slots", backend)] == config.backends[0].max_concurrent
    jobs = {labels[0][1]: value for (name, labels), value in values.items() if name == "llmbot_blog_jobs"}
    assert sum(jobs.values()) == 1 and jobs.keys() >= {"queued", "running", "delivered", "failed"}
    assert all(value == 1 for (name, _), value in values.items() if name == "llmbot_loop_running")
    assert any(name == "llmbot_loop_running" for name, _ in values)
    assert broken.status_code == 503 and broken.json()["database"] is False
