"""``python -m tests.fakes.discord_server --host 127.0.0.1 --port P [options]`` (``--help`` lists them)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from tests.fakes.discord_server.server import DiscordEmulator

PRIVILEGED_CHOICES = {
    "none": set(),
    "message_content": {"message_content"},
    "all": {"message_content", "members", "presences"},
}


async def serve(args: argparse.Namespace) -> None:
    emulator = DiscordEmulator(
        interaction_token_ttl=args.interaction_token_ttl,
        privileged_intents=PRIVILEGED_CHOICES[args.privileged_intents],
        valid_tokens=None if args.require_token is None else {args.require_token},
        heartbeat_interval=args.heartbeat_interval,
        session_timeout=args.session_timeout,
        guilds=args.guilds,
        max_concurrency=args.max_concurrency,
        identify_interval=args.identify_interval,
    )
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
    parser.add_argument(
        "--privileged-intents",
        choices=sorted(PRIVILEGED_CHOICES),
        default="all",
        help="privileged intents the application was granted; asking for more closes with 4014",
    )
    parser.add_argument(
        "--require-token",
        metavar="TOKEN",
        help="the only bot token accepted (others: close 4004 on IDENTIFY, 401 on REST)",
    )
    parser.add_argument("--heartbeat-interval", type=float, default=41.25, help="seconds (Discord: 41.25)")
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=180.0,
        help="seconds a disconnected session stays resumable",
    )
    parser.add_argument(
        "--guilds",
        type=int,
        metavar="N",
        help="N guilds, each with a #general channel, spread evenly over shards (default: the one guild)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=1,
        help="GET /gateway/bot's max_concurrency: IDENTIFY buckets (shard_id %% max_concurrency)",
    )
    parser.add_argument(
        "--identify-interval",
        type=float,
        help="seconds between two IDENTIFYs of one bucket; an earlier one gets op 9 "
        "(default: Discord's 5 with --guilds, none without)",
    )
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
