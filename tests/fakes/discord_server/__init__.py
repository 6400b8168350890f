"""A local Discord emulator: real HTTP + WebSocket on one port that an unmodified discord.py bot connects to.

Point discord.py at it through the bot's config (``api_base`` / ``gateway_url``), or directly with
``discord.http.Route.BASE = emu.api_base`` and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(emu.gateway_url)``.
The world, the REST rules it enforces and the control API are described in :mod:`.server` and :mod:`.world`.
"""

from tests.fakes.discord_server.server import DiscordEmulator

__all__ = ["DiscordEmulator"]
