"""An unmodified hikari bot for ``test_clients.py``: ``python hikari_tour.py <emulator url> <token>``.

It is pointed at the emulator the documented way (``rest_url``; the gateway URL then comes from
``GET /gateway/bot``) and prints one JSON line per step on stdout. Orders arrive as messages in a channel:
"tour" (send, edit, reply, upload, send and delete, register /tour) and "retry" (one send, for an
injected 429); the /tour slash command is answered with a deferral and a followup.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import hikari


def emit(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def main() -> None:
    base, token = sys.argv[1:3]
    bot = hikari.GatewayBot(
        token,
        rest_url=f"{base}/api/v10",
        intents=hikari.Intents.GUILDS | hikari.Intents.GUILD_MESSAGES | hikari.Intents.MESSAGE_CONTENT,
        banner=None,
        logs="WARNING",
        suppress_optimization_warning=True,
    )

    @bot.listen()
    async def on_guild(event: hikari.GuildAvailableEvent) -> None:
        channels = event.guild.get_channels().values()
        me = bot.get_me()
        emit(
            "ready",
            user=None if me is None else str(me.id),
            guilds=[{"id": str(g.id), "name": g.name} for g in bot.cache.get_guilds_view().values()],
            channels=[{"id": str(c.id), "name": c.name} for c in channels],
        )

    async def tour(order: hikari.Message) -> None:
        rest = bot.rest
        channel = order.channel_id
        sent = await rest.create_message(channel, "tour: sent")
        emit("sent", id=str(sent.id), content=sent.content)
        edited = await rest.edit_message(channel, sent, "tour: edited")
        emit("edited", id=str(edited.id), content=edited.content)
        reply = await rest.create_message(channel, "tour: reply", reply=order)
        reference = reply.message_reference
        emit("replied", id=str(reply.id), reference=str(reference.id) if reference and reference.id else None)
        file = hikari.Bytes(b"uploaded by hikari", "tour.txt")
        uploaded = await rest.create_message(channel, "tour: upload", attachment=file)
        files = [{"name": a.filename, "size": a.size} for a in uploaded.attachments]
        emit("uploaded", id=str(uploaded.id), files=files)
        doomed = await rest.create_message(channel, "tour: delete me")
        await rest.delete_message(channel, doomed)
        emit("deleted", id=str(doomed.id))
        application = await rest.fetch_application()
        assert order.guild_id is not None
        command = await rest.create_slash_command(
            application, "tour", "Answer with a deferral", guild=order.guild_id
        )
        emit("command", id=str(command.id), name=command.name, guild=str(command.guild_id))

    @bot.listen()
    async def on_message(event: hikari.GuildMessageCreateEvent) -> None:
        if event.author.is_bot:
            return
        message = event.message
        emit("received", id=str(message.id), content=message.content, author=event.author.username)
        try:
            if message.content == "tour":
                await tour(message)
            elif message.content == "retry":
                sent = await bot.rest.create_message(message.channel_id, "tour: after a 429")
                emit("retried", id=str(sent.id), content=sent.content)
        except Exception as exc:  # reported to the test, which fails on it
            emit("error", during=message.content, error=repr(exc))

    @bot.listen()
    async def on_interaction(event: hikari.InteractionCreateEvent) -> None:
        interaction = event.interaction
        if not isinstance(interaction, hikari.CommandInteraction):
            return
        emit("interaction", id=str(interaction.id), name=interaction.command_name)
        try:
            await interaction.create_initial_response(hikari.ResponseType.DEFERRED_MESSAGE_CREATE)
            emit("deferred", id=str(interaction.id))
            followup = await interaction.execute("tour: followup")
            emit("followup", id=str(followup.id), content=followup.content)
        except Exception as exc:
            emit("error", during=interaction.command_name, error=repr(exc))

    bot.run(check_for_updates=False, close_loop=True, enable_signal_handlers=True)


if __name__ == "__main__":
    main()
