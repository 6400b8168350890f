"""The bot's own error types, and the one list of what a Discord write can raise.

Start-up errors stop the bot before it connects; each becomes one readable line and exit status 2.
"""

from __future__ import annotations

import aiohttp
import discord


class StartupError(Exception):
    """The bot cannot start; the message is shown to the operator as one line."""


class ConfigError(StartupError):
    """The configuration file or environment is invalid; the message names the offending key."""


#: What a Discord REST call can raise. discord.py wraps error *replies* in HTTPException but lets transport
#: failures through unwrapped (a reset connection is an aiohttp.ClientError, a refused one an OSError, a
#: stalled one a TimeoutError, which is an OSError): every caller catches all of them, the same way.
DISCORD_ERRORS: tuple[type[BaseException], ...] = (discord.HTTPException, aiohttp.ClientError, OSError)


def is_transient(error: BaseException) -> bool:
    """Whether trying the same Discord write again later may work (transport trouble, 5xx, 429)."""
    if isinstance(error, discord.HTTPException):
        return error.status >= 500 or error.status == 429
    return isinstance(error, aiohttp.ClientError | OSError)


def describe_discord_error(error: BaseException) -> str:
    """A short description for logs and job records."""
    if isinstance(error, discord.HTTPException):
        return f"Discord error {error.status}" + (f" ({error.code})" if error.code else "")
    return f"connection to Discord failed ({type(error).__name__})"
