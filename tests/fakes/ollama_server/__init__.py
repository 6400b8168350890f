"""A fake Ollama server speaking the real HTTP API over real sockets (aiohttp).

Wire format, error table and scheduling follow ``shared/reference/ollama.md`` (ollama v0.5–0.13):
NDJSON streamed and flushed per token with headers held until the first chunk, ``stream`` defaulting to
true, stats only on the final object, 404/400/503 errors with Ollama's bodies, cancellation when the
client goes away, ``num_predict`` cutting the reply (``done_reason: "length"``), ``num_parallel`` slots
per loaded model with a FIFO wait, model load time, and eviction when ``max_loaded`` models are in memory.

Control endpoints for tests and benchmarks live under ``/_fake/`` (see :mod:`.app`).
"""

from tests.fakes.ollama_server.app import FakeOllamaServer
from tests.fakes.ollama_server.replies import tokenize

__all__ = ["FakeOllamaServer", "tokenize"]
