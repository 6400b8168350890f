"""``python -m tests.fakes.ollama_server --host 127.0.0.1 --port P --models llama2,mistral:latest ...``

Every option of :class:`FakeOllamaServer` is a ``--kebab-case`` flag (booleans also as ``--no-...``)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.fakes.ollama_server.app import FakeOllamaServer


async def serve(args: argparse.Namespace) -> None:
    server = FakeOllamaServer(
        [name.strip() for name in args.models.split(",") if name.strip()],
        tokens_per_second=args.tokens_per_second,
        load_seconds=args.load_seconds,
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        max_loaded=args.max_loaded,
        subword_tokens=args.subword_tokens,
        prompt_tokens_per_second=args.prompt_tokens_per_second,
        openai_ping_interval=args.openai_ping_interval,
        interrupt_requests=args.interrupt_requests,
        serialize_requests=args.serialize_requests,
        num_ctx=args.num_ctx,
        props_endpoint=args.props_endpoint,
        chatty_articles=args.chatty_articles,
        openai_overflow_empty_stream=args.openai_overflow_empty_stream,
    )
    url = await server.start(args.host, args.port)
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.ollama_server", description="A fake Ollama server."
    )
    flag = argparse.BooleanOptionalAction
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--models", default="llama2,mistral:latest", help="comma-separated model names")
    parser.add_argument("--tokens-per-second", type=float, default=None, help="default: as fast as possible")
    parser.add_argument("--load-seconds", type=float, default=0.0, help="time to load a model into memory")
    parser.add_argument(
        "--num-parallel", type=int, default=1, help="slots per loaded model (OLLAMA_NUM_PARALLEL)"
    )
    parser.add_argument(
        "--max-queue", type=int, default=512, help="requests waiting for a load (OLLAMA_MAX_QUEUE)"
    )
    parser.add_argument("--max-loaded", type=int, default=None, help="models in memory at once")
    parser.add_argument("--subword-tokens", action=flag, default=False, help="sub-word tokenizer")
    parser.add_argument(
        "--prompt-tokens-per-second", type=float, default=None, help="prompt reading; default: instant"
    )
    parser.add_argument(
        "--openai-ping-interval", type=float, default=15.0, help="seconds between SSE pings on /v1"
    )
    parser.add_argument(
        "--interrupt-requests", action=flag, default=True, help="a new request ends running /v1 streams"
    )
    parser.add_argument(
        "--serialize-requests", action=flag, default=True, help="GET /v1/models waits for completions"
    )
    parser.add_argument(
        "--num-ctx", type=int, default=None, help="context window (Ollama routes: 2048 if unset)"
    )
    parser.add_argument("--props-endpoint", action=flag, default=False, help="serve llama.cpp's /props")
    parser.add_argument(
        "--chatty-articles", action=flag, default=False, help="articles the way small models write them"
    )
    parser.add_argument(
        "--openai-overflow-empty-stream",
        action=flag,
        default=True,
        help="a streamed /v1 prompt over the window gets 200 and an empty stream (else 400)",
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
