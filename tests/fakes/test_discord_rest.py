"""The emulator's REST refuses what Discord's does: rate limits, permissions, validation, endpoints, faults.

Each rule is checked with plain HTTP or the minimal discord.py bot of ``test_discord_server``; the doc each
rule follows is named where the emulator implements it (``tests/fakes/discord_server``).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import aiohttp
import discord
import httpx
import pytest

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.test_discord_server import channel, mini_bot
from tests.harness import EmulatorControl

AUTH = {"Authorization": "Bot a-token"}
CREATE = "POST /channels/{channel_id}/messages"


async def call(
    http: httpx.AsyncClient, emulator: DiscordEmulator, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    return await http.request(method, emulator.api_base + path, headers=headers, **kwargs)


async def post(
    http: httpx.AsyncClient, emulator: DiscordEmulator, channel_id: str, **body: Any
) -> httpx.Response:
    return await call(http, emulator, "POST", f"/channels/{channel_id}/messages", json=body)


def errors_at(response: httpx.Response, *path: str) -> list[dict[str, Any]]:
    """The ``_errors`` of a 50035 at ``path`` (Discord nests them by field)."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 50035, body
    node = body["errors"]
    for key in path:
        node = node[key]
    errors: list[dict[str, Any]] = node["_errors"]
    return errors


# -- rate limits -----------------------------------------------------------------------------------------


async def test_every_route_answers_with_a_stable_bucket(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    general, blog = discord_api.channel("general"), discord_api.channel("blog")
    buckets: dict[str, set[str]] = {}
    for channel_id in (general, blog):
        message = (await post(http, emulator, channel_id, content="x")).json()
        for name, method, path in [
            ("get channel", "GET", f"/channels/{channel_id}"),
            ("history", "GET", f"/channels/{channel_id}/messages?limit=5"),
            ("typing", "POST", f"/channels/{channel_id}/typing"),
            ("react", "PUT", f"/channels/{channel_id}/messages/{message['id']}/reactions/%F0%9F%91%8D/@me"),
            ("thread", "POST", f"/channels/{channel_id}/messages/{message['id']}/threads"),
            ("delete", "DELETE", f"/channels/{channel_id}/messages/{message['id']}"),
        ]:
            response = await call(
                http, emulator, method, path, json={"name": "t"} if name == "thread" else None
            )
            assert response.status_code < 300, (name, response.text)
            headers = response.headers
            assert {
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "x-ratelimit-reset-after",
            } <= set(headers)
            buckets.setdefault(name, set()).add(headers["x-ratelimit-bucket"])
    assert all(len(hashes) == 1 for hashes in buckets.values())  # the same hash in every channel
    assert len({next(iter(h)) for h in buckets.values()}) == len(buckets)  # one per route
    assert all(len(next(iter(h))) == 32 for h in buckets.values())


async def test_a_full_bucket_answers_429_with_discord_headers_for_its_resource_only(
    discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    limits = {"DELETE /channels/{channel_id}/messages/{id}": (2, 5.0)}
    async with DiscordEmulator(route_limits=limits) as emulator:
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        general, blog = api.channel("general"), api.channel("blog")
        ids = [(await post(http, emulator, general, content=str(n))).json()["id"] for n in range(3)]
        other = (await post(http, emulator, blog, content="b")).json()["id"]
        answers = [await call(http, emulator, "DELETE", f"/channels/{general}/messages/{i}") for i in ids]
        elsewhere = await call(http, emulator, "DELETE", f"/channels/{blog}/messages/{other}")
    assert [a.status_code for a in answers] == [204, 204, 429]
    limited = answers[2]
    assert limited.headers["x-ratelimit-bucket"] == answers[0].headers["x-ratelimit-bucket"]
    assert limited.headers["x-ratelimit-scope"] == "user" and limited.headers["via"]
    assert limited.headers["x-ratelimit-remaining"] == "0" and float(limited.headers["x-ratelimit-reset"]) > 0
    assert int(limited.headers["retry-after"]) >= 1
    body = limited.json()
    assert body["global"] is False and 0 < body["retry_after"] <= 5.0
    assert elsewhere.status_code == 204  # another channel is another bucket


async def test_discord_py_stays_inside_the_delete_bucket(
    discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    limits = {"DELETE /channels/{channel_id}/messages/{id}": (2, 0.5)}
    async with DiscordEmulator(route_limits=limits) as emulator:
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        async with mini_bot(emulator.url) as bot:
            general = channel(bot, api, "general")
            sent = [await general.send(f"note {n}") for n in range(5)]
            for message in sent:
                await message.delete()
        statuses = [r["status"] for r in await api.requests() if r["method"] == "DELETE"]
    assert statuses == [204] * 5


async def test_the_global_limit_is_fifty_a_second_by_default_and_spares_interaction_tokens(
    discord_api: EmulatorControl, http: httpx.AsyncClient, emulator: DiscordEmulator
) -> None:
    assert emulator.ratelimits.global_limit == 50
    async with DiscordEmulator(global_limit=5) as small:
        api = EmulatorControl(small.url, http)
        await api.refresh()
        answers = [await call(http, small, "GET", f"/channels/{api.channel('general')}") for _ in range(6)]
        webhook = await http.post(
            f"{small.api_base}/webhooks/{api.state['application_id']}/no-such-token", json={}
        )
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    limited = answers[-1]
    assert (
        limited.headers["x-ratelimit-global"] == "true" and limited.headers["x-ratelimit-scope"] == "global"
    )
    assert limited.json()["global"] is True
    assert webhook.status_code == 401  # not 429: webhook-token calls are outside the global limit


@pytest.mark.parametrize("kind", ["rate_limit", "rate_limit_global", "rate_limit_shared"])
async def test_discord_py_retries_an_injected_429_once(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient, kind: str
) -> None:
    await discord_api.fault(kind=kind, method="POST", path="/channels/*/messages", count=1, retry_after=0.2)
    probe = await post(http, emulator, discord_api.channel("blog"), content="probe")
    await discord_api.fault(kind=kind, method="POST", path="/channels/*/messages", count=1, retry_after=0.2)
    async with mini_bot(emulator.url) as bot:
        await channel(bot, discord_api, "general").send("after an injected 429")
    creates = [r for r in await discord_api.requests() if r["route"] == CREATE]
    assert [r["status"] for r in creates] == [429, 429, 200]
    scope = {"rate_limit": "user", "rate_limit_global": "global", "rate_limit_shared": "shared"}[kind]
    assert probe.headers["x-ratelimit-scope"] == scope and probe.headers["via"]
    assert probe.json()["global"] is (kind == "rate_limit_global")
    if kind != "rate_limit_global":
        assert probe.headers["x-ratelimit-bucket"] == creates[-1]["bucket"]


# -- permissions -----------------------------------------------------------------------------------------


async def test_a_reply_needs_read_message_history_and_history_without_it_is_empty(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        first = await general.send("before")
        await discord_api.permissions("general", "bot", deny=["READ_MESSAGE_HISTORY"])
        with pytest.raises(discord.Forbidden) as reply:
            await first.reply("a reply")
        plain = await general.send("a plain message still goes")
        history = [m async for m in general.history(limit=10)]
        with pytest.raises(discord.Forbidden) as fetch:
            await general.fetch_message(first.id)
    assert reply.value.code == 160002
    assert plain.content == "a plain message still goes"
    assert history == []  # Discord answers 200 [] here, not 403
    assert fetch.value.code == 50001


async def test_sending_in_a_thread_needs_send_messages_in_threads(
    emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        thread = await (await general.send("start")).create_thread(name="a thread")
        await discord_api.permissions("general", "bot", deny=["SEND_MESSAGES"])
        in_thread = await thread.send("the parent's Send Messages does not matter here")
        with pytest.raises(discord.Forbidden) as in_parent:
            await general.send("but here it does")
        await discord_api.permissions("general", "bot", deny=["SEND_MESSAGES_IN_THREADS"])
        with pytest.raises(discord.Forbidden) as refused:
            await thread.send("no longer")
    assert in_thread.channel.id == thread.id
    assert in_parent.value.code == refused.value.code == 50013


async def test_a_channel_the_bot_cannot_see_is_missing_access(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    await discord_api.permissions("general", "@everyone", deny=["VIEW_CHANNEL"])
    answers = [
        await call(http, emulator, "GET", f"/channels/{discord_api.channel('general')}"),
        await post(http, emulator, discord_api.channel("general"), content="hello?"),
    ]
    assert [(a.status_code, a.json()["code"]) for a in answers] == [(403, 50001)] * 2


async def test_overwrites_apply_in_discords_order_and_administrator_bypasses_them(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    general = discord_api.channel("general")

    async def status() -> int:
        return (await post(http, emulator, general, content="x")).status_code

    await discord_api.permissions("general", "@everyone", deny=["SEND_MESSAGES"])
    refused_by_everyone = await status()
    await discord_api.permissions("general", "LLMBot", allow=["SEND_MESSAGES"])  # the bot's role
    allowed_by_role = await status()
    await discord_api.permissions("general", "bot", deny=["send_messages"])  # lower case works too
    refused_by_member = await status()
    await discord_api.permissions(None, "LLMBot", allow=["ADMINISTRATOR"])
    administrator = await status()
    assert (refused_by_everyone, allowed_by_role, refused_by_member, administrator) == (403, 200, 403, 200)


async def test_denials_imply_and_embeds_drop_without_embed_links(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    general = discord_api.channel("general")
    await discord_api.permissions("general", "bot", deny=["EMBED_LINKS", "CREATE_PUBLIC_THREADS"])
    embedded = await post(
        http, emulator, general, content="with an embed", embeds=[{"description": "hidden"}]
    )
    thread = await call(
        http,
        emulator,
        "POST",
        f"/channels/{general}/messages/{embedded.json()['id']}/threads",
        json={"name": "t"},
    )
    await discord_api.permissions("general", "bot", deny=["SEND_MESSAGES"])
    typing = await call(http, emulator, "POST", f"/channels/{general}/typing")
    upload = await call(
        http,
        emulator,
        "POST",
        f"/channels/{general}/messages",
        files={"files[0]": ("a.txt", b"x")},
        data={"payload_json": "{}"},
    )
    assert embedded.status_code == 200 and embedded.json()["embeds"] == []
    assert thread.status_code == 403 and typing.status_code == 403 and upload.status_code == 403


async def test_the_permissions_control_api(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    url = f"{emulator.url}/_emulator/permissions"
    bad = [
        await http.post(
            url, json={"channel_id": discord_api.channel("general"), "target": "bot", "deny": ["FLY"]}
        ),
        await http.post(url, json={"channel_id": discord_api.channel("general"), "target": "nobody"}),
        await http.post(url, json={"channel_id": "999", "target": "bot"}),
    ]
    legacy = await http.post(
        f"{emulator.url}/_emulator/channels/{discord_api.channel('general')}/permissions",
        json={"bot_denied": ["attach_files"]},
    )
    overwrite = await discord_api.permissions(
        "general", "alice", allow=["MANAGE_MESSAGES"], deny=["ADD_REACTIONS"]
    )
    assert [b.status_code for b in bad] == [400] * 3
    assert legacy.status_code == 200
    members = {o["id"]: o for o in overwrite["permission_overwrites"]}
    assert members[discord_api.user("alice")] == {
        "id": discord_api.user("alice"), "type": 1, "allow": str(1 << 13), "deny": str(1 << 6)
    }  # fmt: skip
    assert members[discord_api.bot_id]["deny"] == str(1 << 15)


# -- endpoints -------------------------------------------------------------------------------------------


async def test_guild_roles_members_and_unknown_guilds(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    guild = discord_api.state["guild_id"]
    roles = await call(http, emulator, "GET", f"/guilds/{guild}/roles")
    members = await call(http, emulator, "GET", f"/guilds/{guild}/members?limit=10")
    nobody = await call(http, emulator, "GET", f"/guilds/{guild}/members/123")
    unknown = await call(http, emulator, "GET", "/guilds/123/roles")
    assert roles.status_code == 200 and {r["name"] for r in roles.json()} == {
        "@everyone",
        "Moderator",
        "LLMBot",
    }
    assert members.status_code == 200 and len(members.json()) == 4
    assert (nobody.status_code, nobody.json()["code"]) == (404, 10007)
    assert (unknown.status_code, unknown.json()["code"]) == (404, 10004)
    async with DiscordEmulator(privileged_intents={"message_content"}) as ungranted:
        api = EmulatorControl(ungranted.url, http)
        await api.refresh()
        refused = await call(http, ungranted, "GET", f"/guilds/{api.state['guild_id']}/members")
    assert (refused.status_code, refused.json()["code"]) == (403, 50001)  # needs the GUILD_MEMBERS grant


async def test_pins_and_channel_edits(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    general = discord_api.channel("general")
    message = (await post(http, emulator, general, content="pin me")).json()
    refused_pin = await call(http, emulator, "PUT", f"/channels/{general}/messages/pins/{message['id']}")
    refused_edit = await call(http, emulator, "PATCH", f"/channels/{general}", json={"name": "renamed"})
    await discord_api.permissions("general", "bot", allow=["PIN_MESSAGES", "MANAGE_CHANNELS"])
    pinned = await call(http, emulator, "PUT", f"/channels/{general}/messages/pins/{message['id']}")
    pins = await call(http, emulator, "GET", f"/channels/{general}/messages/pins")
    old_style = await call(http, emulator, "GET", f"/channels/{general}/pins")
    edited = await call(http, emulator, "PATCH", f"/channels/{general}", json={"name": "renamed"})
    assert refused_pin.status_code == refused_edit.status_code == 403
    assert pinned.status_code == 204
    assert [item["message"]["id"] for item in pins.json()["items"]] == [message["id"]]
    assert [m["id"] for m in old_style.json()] == [message["id"]] and old_style.json()[0]["pinned"] is True
    assert edited.status_code == 200 and edited.json()["name"] == "renamed"


async def test_one_command_at_a_time_as_discord_js_and_hikari_register_them(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    base = (
        f"/applications/{discord_api.state['application_id']}/guilds/{discord_api.state['guild_id']}/commands"
    )
    command = {"name": "tour", "description": "A tour", "type": 1}
    created = await call(http, emulator, "POST", base, json=command)
    again = await call(http, emulator, "POST", base, json={**command, "description": "Again"})
    one = f"{base}/{created.json()['id']}"
    fetched = await call(http, emulator, "GET", one)
    patched = await call(http, emulator, "PATCH", one, json={"description": "Patched"})
    bad = await call(http, emulator, "POST", base, json={"name": "Bad Name", "description": "x"})
    deleted = await call(http, emulator, "DELETE", one)
    gone = await call(http, emulator, "GET", one)
    other_guild = await call(
        http, emulator, "POST", base.replace(discord_api.state["guild_id"], "123"), json=command
    )
    assert (created.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == created.json()["id"]  # same name: overwritten, not duplicated
    assert fetched.json()["description"] == "Again" and patched.json()["description"] == "Patched"
    assert bad.status_code == 400 and bad.json()["code"] == 50035
    assert deleted.status_code == 204 and (gone.status_code, gone.json()["code"]) == (404, 10063)
    assert other_guild.status_code == 403


async def test_attachments_download_and_the_application_is_readable(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    async with mini_bot(emulator.url) as bot:
        sent = await channel(bot, discord_api, "general").send(
            "file", file=discord.File(io.BytesIO(b"the bytes"), filename="a.txt")
        )
        downloaded = await sent.attachments[0].read()
    application = await call(http, emulator, "GET", "/applications/@me")
    assert downloaded == b"the bytes"
    assert application.status_code == 200 and application.json()["id"] == discord_api.state["application_id"]


async def test_unknown_routes_and_methods(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    missing = await call(http, emulator, "GET", "/no/such/route")
    wrong_method = await call(http, emulator, "DELETE", f"/channels/{discord_api.channel('general')}/typing")
    assert (missing.status_code, missing.json()) == (404, {"message": "404: Not Found", "code": 0})
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, 0)


async def test_rest_reads_blank_content_without_the_message_content_grant(http: httpx.AsyncClient) -> None:
    async with DiscordEmulator(privileged_intents=set()) as emulator:
        api = EmulatorControl(emulator.url, http)
        await api.refresh()
        await api.say("general", "alice", "private words")
        await api.mention("general", "bob", "this one mentions the bot")
        await post(http, emulator, api.channel("general"), content="the bot's own words")
        history = (await call(http, emulator, "GET", f"/channels/{api.channel('general')}/messages")).json()
    assert [m["content"] for m in reversed(history)] == [
        "",
        f"<@{api.bot_id}> this one mentions the bot",
        "the bot's own words",
    ]


# -- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("embeds", "path"),
    [
        ([{"title": "t" * 257}], ("embeds", "0", "title")),
        ([{"description": "d" * 4097}], ("embeds", "0", "description")),
        ([{}, {"fields": [{"name": "n", "value": "v"}] * 26}], ("embeds", "1", "fields")),
        ([{"fields": [{"name": "n", "value": "v" * 1025}]}], ("embeds", "0", "fields", "0", "value")),
        ([{"footer": {"text": "f" * 2049}}], ("embeds", "0", "footer", "text")),
        ([{"author": {"name": "a" * 257}}], ("embeds", "0", "author", "name")),
        ([{"description": "d" * 3500}, {"description": "d" * 3500}], ("embeds",)),
        ([{}] * 11, ("embeds",)),
    ],
)
async def test_embed_limits_with_nested_error_paths(
    emulator: DiscordEmulator,
    discord_api: EmulatorControl,
    http: httpx.AsyncClient,
    embeds: list[Any],
    path: tuple[str, ...],
) -> None:
    response = await post(http, emulator, discord_api.channel("general"), embeds=embeds)
    assert errors_at(response, *path)[0]["code"] == "BASE_TYPE_MAX_LENGTH"


async def test_allowed_mentions_limit_and_json_are_validated(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    general = discord_api.channel("general")
    bad_parse = await post(http, emulator, general, content="x", allowed_mentions={"parse": ["users", "all"]})
    exclusive = await post(
        http,
        emulator,
        general,
        content="x",
        allowed_mentions={"parse": ["users"], "users": [discord_api.user("bob")]},
    )
    too_many = await call(http, emulator, "GET", f"/channels/{general}/messages?limit=101")
    too_few = await call(http, emulator, "GET", f"/channels/{general}/messages?limit=0")
    malformed = await call(
        http,
        emulator,
        "POST",
        f"/channels/{general}/messages",
        content=b"{oops",
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert errors_at(bad_parse, "allowed_mentions", "parse", "1")[0]["code"] == "BASE_TYPE_CHOICES"
    assert errors_at(exclusive, "allowed_mentions")
    assert errors_at(too_many, "limit")[0]["code"] == "NUMBER_TYPE_MAX"
    assert errors_at(too_few, "limit")[0]["code"] == "NUMBER_TYPE_MIN"
    assert (malformed.status_code, malformed.json()["code"]) == (400, 50109)


async def test_unknown_callback_types_are_refused(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    async with mini_bot(emulator.url) as bot:
        await bot.tree.sync()
        bot.tree.remove_command("echo")  # nobody answers: the test does
        invocation = await discord_api.invoke("general", "alice", "echo", text="x")
        url = (
            f"{emulator.api_base}/interactions/{invocation['interaction_id']}/{invocation['token']}/callback"
        )
        unknown = await http.post(url, json={"type": 42})
        wrong_kind = await http.post(url, json={"type": 7, "data": {"content": "x"}})  # 7 is for components
        deferred = await http.post(url, json={"type": 5})
    assert errors_at(unknown, "type")[0]["code"] == "BASE_TYPE_CHOICES"
    assert wrong_kind.status_code == 400
    assert deferred.status_code == 200  # the refused ones did not count as the response


# -- faults ----------------------------------------------------------------------------------------------


async def test_connection_reset_drops_the_connection_without_a_response(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    await discord_api.fault(kind="connection_reset", method="POST", path="/channels/*/messages", count=2)
    with pytest.raises(httpx.TransportError):
        await post(http, emulator, discord_api.channel("general"), content="lost")
    async with mini_bot(emulator.url) as bot:
        general = channel(bot, discord_api, "general")
        with pytest.raises(aiohttp.ClientError) as error:  # discord.py does not wrap this in HTTPException
            await general.send("lost too")
        await general.send("the next one goes through")
    statuses = [r["status"] for r in await discord_api.requests() if r["route"] == CREATE]
    assert not isinstance(error.value, discord.HTTPException)
    assert statuses == ["reset", "reset", 200]
    assert [m["content"] for m in await discord_api.messages("general")] == ["the next one goes through"]


# -- components ------------------------------------------------------------------------------------------


class Buttons(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)
        self.pressed: asyncio.Queue[str] = asyncio.Queue()

    @discord.ui.button(label="Update", custom_id="update", style=discord.ButtonStyle.primary)
    async def update(self, interaction: discord.Interaction, button: discord.ui.Button[Buttons]) -> None:
        await interaction.response.edit_message(content=f"updated by {interaction.user.name}", view=self)
        self.pressed.put_nowait("update")

    @discord.ui.button(label="Later", custom_id="later", style=discord.ButtonStyle.secondary)
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button[Buttons]) -> None:
        await interaction.response.defer()
        await interaction.followup.send("a followup after a deferred update")
        self.pressed.put_nowait("later")


async def test_buttons_are_kept_and_pressed_as_type_3_interactions(
    emulator: DiscordEmulator, discord_api: EmulatorControl, http: httpx.AsyncClient
) -> None:
    async with mini_bot(emulator.url) as bot:
        view = Buttons()
        sent = await channel(bot, discord_api, "general").send("choose", view=view)
        (stored,) = await discord_api.messages("general")
        updated = await discord_api.press(str(sent.id), "update", "alice")
        assert await asyncio.wait_for(view.pressed.get(), 5) == "update"
        deferred = await discord_api.press(str(sent.id), "later", "bob")
        assert await asyncio.wait_for(view.pressed.get(), 5) == "later"
        missing = await http.post(
            f"{emulator.url}/_emulator/interactions",
            json={
                "type": "component",
                "message_id": str(sent.id),
                "custom_id": "nope",
                "user_id": discord_api.user("bob"),
            },
        )
    assert [c["custom_id"] for c in stored["components"][0]["components"]] == ["update", "later"]
    assert [c["type"] for c in (await discord_api.interaction(updated["interaction_id"]))["callbacks"]] == [7]
    assert [c["type"] for c in (await discord_api.interaction(deferred["interaction_id"]))["callbacks"]] == [
        6
    ]
    messages = await discord_api.messages("general")
    assert messages[0]["content"] == "updated by alice" and messages[0]["components"]
    assert messages[1]["content"] == "a followup after a deferred update"
    assert missing.status_code == 400
