"""``python -m tests.fakes.discord_server --host 127.0.0.1 --port P [--interaction-token-ttl SECONDS]``"""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.fakes.discord_server.server import DiscordEmulator


async def serve(args: argparse.Namespace) -> None:
    emulator = DiscordEmulator(interaction_token_ttl=args.interaction_token_ttl)
    url = await emulator.start(args.host, args.port)
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await stop.wait()
    await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.discord_server", description="A local Discord."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900, help="0 picks a free port")
    parser.add_argument(
        "--interaction-token-ttl", type=float, default=900.0, help="seconds (Discord: 15 min)"
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
