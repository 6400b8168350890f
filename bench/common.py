"""Shared benchmark plumbing: the stand-ins in their own processes, and result files."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` and say where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {path.relative_to(ROOT)}")
    return path


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


class ServerProcess:
    """Runs ``python -m <module> --host 127.0.0.1 --port 0 ...`` and waits for its ``listening on`` line."""

    def __init__(self, module: str, *args: str) -> None:
        self._command = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", "0", *args]
        self._process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.http = httpx.AsyncClient(timeout=30)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def __aenter__(self) -> ServerProcess:
        self._process = await asyncio.create_subprocess_exec(
            *self._command, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(20):
            while True:
                line = (await self._process.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{self._command[2]} exited before listening")
                if line.startswith("listening on "):
                    self.url = line.split()[-1]
                    return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.http.aclose()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                async with asyncio.timeout(10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()

    async def get(self, path: str) -> Any:
        response = await self.http.get(self.url + path)
        response.raise_for_status()
        return response.json()

    async def post(self, path: str, body: Any) -> Any:
        response = await self.http.post(self.url + path, json=body)
        response.raise_for_status()
        return response.json() if response.content else None


class FakeOllamaProcess(ServerProcess):
    """The fake Ollama server in its own process."""

    def __init__(self, models: list[str], *options: str) -> None:
        super().__init__("tests.fakes.ollama_server", "--models", ",".join(models), *options)

    async def script(self, model: str, replies: list[str]) -> None:
        await self.post("/_fake/script", {"model": model, "replies": replies})


class DiscordEmulatorProcess(ServerProcess):
    """The Discord emulator in its own process."""

    def __init__(self, *options: str) -> None:
        super().__init__("tests.fakes.discord_server", *options)
