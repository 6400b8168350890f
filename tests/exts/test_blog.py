"""/blog end to end: the real bot, the Discord emulator and the fake Ollama server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.discord_server import DiscordEmulator
from tests.fakes.ollama_server import FakeOllamaServer
from tests.harness import EmulatorControl, FakeOllamaControl, make_config, running_bot, wait_until

ARTICLE = "# Owls at Night\n\nOwls are quiet hunters.\n\n## Eyes\n\nThey see in the dark." + (
    "\n\n## More\n\n" + "Owls hunt mice, voles and insects at night. " * 20
)  # 180 words: more than half of a 300-word target, so it is a whole article
FAST_BLOG = {"retry_base_seconds": 0.05, "progress_interval": 0.5, "lease_seconds": 5.0}
EPHEMERAL = 64


async def posted_articles(api: EmulatorControl, channel: str = "general") -> list[dict[str, Any]]:
    return [
        m
        for m in await api.bot_replies(channel)
        if any(a["filename"].endswith(".md") for a in m["attachments"])
    ]


async def wait_for_articles(api: EmulatorControl, count: int, within: float = 15.0) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        found = await posted_articles(api)
        return found if len(found) >= count else None

    return await wait_until(probe, within=within)


def first_callback(record: dict[str, Any]) -> dict[str, Any]:
    callback: dict[str, Any] = record["callbacks"][0]
    return callback


async def status_text(api: EmulatorControl, record: dict[str, Any]) -> str:
    """The current text of the public status message an interaction created."""
    message_id = str(record["original"]["id"])
    for message in await api.messages("general"):
        if str(message["id"]) == message_id:
            return str(message["content"])
    raise AssertionError("status message not found")


async def test_blog_new_is_acknowledged_shows_progress_and_posts_the_article(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=40) as fake:
        fake.script("mistral:latest", [ARTICLE + " More words here." * 10])
        config = make_config(tmp_path, emulator.url, [fake.url], blog=FAST_BLOG)
        async with running_bot(config):
            await discord_api.refresh()
            assert {c["name"] for c in discord_api.state["commands"]} >= {"blog"}
            invocation = await discord_api.invoke(
                "general",
                "alice",
                "blog new",
                topic="owls",
                style="casual",
                tone="friendly",
                target_length=300,
                tags="Birds, night,birds",
            )
            record = await discord_api.answered(invocation["interaction_id"])
            ack = first_callback(record)
            assert ack["type"] == 4 and not (ack["data"].get("flags", 0) & EPHEMERAL)
            assert ack["at"] - record["dispatched_at"] < 0.5
            assert "Blog post #1" in ack["data"]["content"] and "position 1" in ack["data"]["content"]
            (post,) = await wait_for_articles(discord_api, 1)
            final = await wait_until(lambda: _contains(status_text(discord_api, record), "Done"), within=10)
        (request,) = [r for r in fake.requests if r["path"] == "/api/chat"]
    attachment = post["attachments"][0]
    assert attachment["filename"] == "owls-at-night-1.md"
    meta = yaml.safe_load(attachment["text"].split("---\n")[1])
    assert meta["title"] == "Owls at Night" and meta["topic"] == "owls" and meta["tags"] == ["birds", "night"]
    assert (meta["style"], meta["tone"], meta["model"]) == ("casual", "friendly", "mistral:latest")
    assert meta["word_count"] > 10 and meta["slug"] == "owls-at-night-1"
    assert "Owls are quiet hunters." in attachment["text"]
    assert post["pinged"] == [discord_api.user("alice")]
    assert post["nonce"] == "blog-1"
    assert request["body"]["model"] == "mistral:latest"
    assert request["body"]["options"]["num_predict"] >= 600
    assert "owls" in request["body"]["messages"][-1]["content"]
    # The status message moved through queued → writing → done.
    status = next(
        m for m in await discord_api.messages("general") if str(m["id"]) == str(record["original"]["id"])
    )
    contents = [h["content"] for h in status["history"]]
    assert any("Writing" in c for c in contents), contents
    assert final and str(post["id"]) in contents[-1]


async def test_status_list_and_cancel(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=20) as slow:
        slow.script("mistral:latest", ["word " * 2000])
        config = make_config(tmp_path, emulator.url, [slow.url], blog={**FAST_BLOG, "workers": 1})
        async with running_bot(config):
            first = await discord_api.invoke("general", "alice", "blog new", topic="first topic")
            second = await discord_api.invoke("general", "alice", "blog new", topic="second topic")
            await discord_api.answered(first["interaction_id"])
            await discord_api.answered(second["interaction_id"])
            await wait_until(lambda: _true(len([r for r in slow.requests if r["first_token_at"]]) == 1))

            listing = await discord_api.answered(
                (await discord_api.invoke("general", "alice", "blog list"))["interaction_id"]
            )
            text = first_callback(listing)["data"]["content"]
            assert "#1" in text and "#2" in text and "running" in text and "queued (position 1)" in text
            assert first_callback(listing)["data"]["flags"] & EPHEMERAL

            status = await discord_api.answered(
                (await discord_api.invoke("general", "alice", "blog status", job=1))["interaction_id"]
            )
            assert "Writing with `mistral:latest`" in first_callback(status)["data"]["content"]

            # bob may not cancel alice's job; alice may.
            refused = await discord_api.answered(
                (await discord_api.invoke("general", "bob", "blog cancel", job=1))["interaction_id"]
            )
            assert "can't find blog post #1" in first_callback(refused)["data"]["content"]
            cancelled = await discord_api.answered(
                (await discord_api.invoke("general", "alice", "blog cancel", job=1))["interaction_id"]
            )
            assert "is cancelled" in first_callback(cancelled)["data"]["content"]
            # The running generation is stopped: Ollama sees the connection close.
            await wait_until(lambda: _true(any(r["disconnected"] for r in slow.requests)), within=5)
            # A moderator (Manage Messages) may cancel anyone's job.
            by_mod = await discord_api.answered(
                (await discord_api.invoke("general", "mod", "blog cancel", job=2))["interaction_id"]
            )
            assert "is cancelled" in first_callback(by_mod)["data"]["content"]
            assert await posted_articles(discord_api) == []


async def test_bad_options_and_quota_get_ephemeral_messages(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    config = make_config(tmp_path, emulator.url, [ollama.url], blog={**FAST_BLOG, "max_queued_per_user": 1})
    async with running_bot(config) as runner:
        assert runner.bot is not None
        await runner.bot.get_cog("Blog").worker.stop()  # type: ignore[union-attr]  # keep jobs queued
        too_many_tags = await discord_api.answered(
            (
                await discord_api.invoke(
                    "general", "alice", "blog new", topic="tags", tags=",".join(f"t{i}" for i in range(12))
                )
            )["interaction_id"]
        )
        blank_topic = await discord_api.answered(
            (await discord_api.invoke("general", "alice", "blog new", topic="   \u200b "))["interaction_id"]
        )
        ok = await discord_api.answered(
            (await discord_api.invoke("general", "alice", "blog new", topic="fine"))["interaction_id"]
        )
        over = await discord_api.answered(
            (await discord_api.invoke("general", "alice", "blog new", topic="one more"))["interaction_id"]
        )
    for record, expected in [
        (too_many_tags, "at most 10 tags"),
        (blank_topic, "`topic` must be 3 to 300 characters"),
        (over, "You already have 1 blog post"),
    ]:
        callback = first_callback(record)
        assert expected in callback["data"]["content"], callback
        assert callback["data"]["flags"] & EPHEMERAL
    assert "queued" in first_callback(ok)["data"]["content"].lower()


async def test_permanent_error_fails_the_job_and_retryable_error_is_retried(
    tmp_path: Path,
    emulator: DiscordEmulator,
    ollama: FakeOllamaServer,
    ollama_control: FakeOllamaControl,
    discord_api: EmulatorControl,
) -> None:
    await ollama_control.fault(kind="status", status=503, count=2, model="mistral:latest")
    config = make_config(tmp_path, emulator.url, [ollama.url], blog={**FAST_BLOG, "max_attempts": 4})
    async with running_bot(config):
        retried = await discord_api.invoke("general", "alice", "blog new", topic="retry me")
        (post,) = await wait_for_articles(discord_api, 1)
        record = await discord_api.interaction(retried["interaction_id"])
        await wait_until(lambda: _contains(status_text(discord_api, record), "Done"), within=10)
    assert post["attachments"][0]["filename"].endswith(".md")
    statuses = [r["status"] for r in ollama.requests if r["path"] == "/api/chat"]
    assert statuses[:2] == [503, 503] and statuses[-1] == 200

    missing = make_config(tmp_path, emulator.url, [ollama.url], blog={**FAST_BLOG, "model": "llama9"})
    async with running_bot(missing):
        failed = await discord_api.invoke("general", "bob", "blog new", topic="no such model")
        record = await discord_api.answered(failed["interaction_id"])
        text = await wait_until(lambda: _contains(status_text(discord_api, record), "Failed"), within=10)
    assert "`llama9` is not available" in text
    assert len([r for r in ollama.requests if r["body"] and r["body"].get("model") == "llama9"]) == 1


async def _contains(text_coroutine: Any, needle: str) -> str | None:
    text = await text_coroutine
    return text if needle in text else None


async def _true(value: bool) -> bool:
    return value


async def test_a_deleted_channel_fails_the_job_and_the_requester_gets_the_article(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl, http: Any
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=50) as slow:
        slow.script("mistral:latest", [ARTICLE])
        async with running_bot(make_config(tmp_path, emulator.url, [slow.url], blog=FAST_BLOG)) as runner:
            invocation = await discord_api.invoke(
                "blog", "bob", "blog new", topic="into the void", target_length=300
            )
            await discord_api.answered(invocation["interaction_id"])
            await wait_until(lambda: _true(any(r["first_token_at"] for r in slow.requests)))
            deleted = await http.delete(f"{emulator.url}/_emulator/channels/{discord_api.channel('blog')}")
            assert deleted.status_code == 200
            assert runner.bot is not None
            store = runner.bot.get_cog("Blog").store  # type: ignore[union-attr]
            job = await wait_until(lambda: _finished(store, 1), within=15)
    assert job.state == "failed" and job.error == "the channel no longer exists"
    dm = discord_api.state["dm_channels"]["bob"]
    (notice,) = (await http.get(f"{emulator.url}/_emulator/channels/{dm}/messages")).json()
    assert "could not be posted (the channel no longer exists)" in notice["content"]
    assert notice["attachments"][0]["filename"] == "owls-at-night-1.md"


async def _finished(store: Any, job_id: int) -> Any:
    job = await store.get(job_id)
    return job if job is not None and job.state in ("delivered", "failed", "cancelled") else None


def words(count: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + count))


async def run_one_job(
    tmp_path: Path,
    emulator: DiscordEmulator,
    api: EmulatorControl,
    fake: FakeOllamaServer,
    blog: dict[str, Any],
    topic: str = "a long story",
) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """One /blog job from command to post: (the posted message, the final status text, the model requests)."""
    config = make_config(tmp_path, emulator.url, [fake.url], blog={**FAST_BLOG, **blog})
    async with running_bot(config):
        invocation = await api.invoke("general", "alice", "blog new", topic=topic, target_length=300)
        record = await api.answered(invocation["interaction_id"])
        (post,) = await wait_for_articles(api, 1, within=20)
        final = await wait_until(lambda: _final_status(status_text(api, record)), within=10)
    return post, final, [r for r in fake.requests if r["path"] == "/api/chat"]


async def _final_status(text_coroutine: Any) -> str | None:
    text = await text_coroutine
    return text if text.startswith(("✅", "⚠️", "❌")) else None


async def test_an_article_cut_at_the_budget_is_continued_into_one_whole_article(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    # 100 tokens of the fake: "#", " The", " Long", " Story", then w0 … w95.
    first, rest = f"# The Long Story\n\n{words(150)}", f" {words(60, start=96)}. The end."
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [first, rest])
        post, final, requests = await run_one_job(tmp_path, emulator, discord_api, fake, {"max_tokens": 100})
    assert final.startswith("✅") and "Done" in final
    assert len(requests) == 2
    continuation = requests[1]["body"]["messages"]
    assert continuation[-2]["role"] == "assistant" and continuation[-2]["content"].endswith("w95")
    assert continuation[-1]["role"] == "user" and "Continue" in continuation[-1]["content"]
    text = post["attachments"][0]["text"]
    body = text.split("---\n", 2)[2]
    assert words(156) + ". The end." in " ".join(body.split()), "one text, nothing lost or repeated"
    assert "Incomplete" not in post["content"]


async def test_an_article_still_cut_after_every_continuation_is_posted_marked_incomplete(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [f"# Endless\n\n{words(400)}", words(400, start=400)])
        post, final, requests = await run_one_job(
            tmp_path, emulator, discord_api, fake, {"max_tokens": 60, "max_continuations": 1}
        )
    assert len(requests) == 2
    assert final.startswith("⚠️") and "Done" not in final and "incomplete" in final.lower()
    assert "Incomplete" in post["content"] and "length cap" in post["content"]


async def test_a_finished_but_far_too_short_article_is_continued(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [f"# Brief\n\n{words(26)}.", f"\n\n## More\n\n{words(200, start=26)}."])
        _, final, requests = await run_one_job(tmp_path, emulator, discord_api, fake, {})
    assert len(requests) == 2
    assert "too short" in requests[1]["body"]["messages"][-1]["content"]
    assert final.startswith("✅")


async def test_a_stream_that_breaks_mid_article_continues_from_its_text(
    tmp_path: Path,
    emulator: DiscordEmulator,
    discord_api: EmulatorControl,
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [f"# Broken\n\n{words(300)}.", f"{words(120, start=40)}. Done now."])
        fake.add_fault({"kind": "die_mid_stream", "after_tokens": 42, "model": "mistral:latest"})
        post, final, requests = await run_one_job(tmp_path, emulator, discord_api, fake, {})
    assert len(requests) == 2
    resumed = requests[1]["body"]["messages"]
    assert resumed[-2]["role"] == "assistant" and resumed[-2]["content"].rstrip().endswith("w39")
    body = " ".join(post["attachments"][0]["text"].split("---\n", 2)[2].split())
    assert words(160) in body and body.count("w39 ") == 1
    assert final.startswith("✅")


async def test_queued_statuses_follow_the_queue_and_say_when_it_is_paused(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=30) as slow:
        slow.script("mistral:latest", ["word " * 3000] * 3)
        config = make_config(tmp_path, emulator.url, [slow.url], blog={**FAST_BLOG, "workers": 1})
        async with running_bot(config):
            records = []
            for user in ("alice", "bob", "mod"):
                invocation = await discord_api.invoke("general", user, "blog new", topic=f"{user}'s post")
                records.append(await discord_api.answered(invocation["interaction_id"]))
            third = records[2]
            await wait_until(lambda: _contains(status_text(discord_api, third), "position 2"), within=10)
            await discord_api.invoke("general", "alice", "blog cancel", job=1)
            await wait_until(lambda: _contains(status_text(discord_api, third), "position 1"), within=12)
            await discord_api.answered(
                (await discord_api.invoke("general", "mod", "llm pause"))["interaction_id"]
            )
            paused = await wait_until(lambda: _contains(status_text(discord_api, third), "paused"), within=12)
    assert "moderators have paused" in paused


async def test_the_requester_is_told_once_when_a_job_fails_or_a_moderator_cancels_it(
    tmp_path: Path, emulator: DiscordEmulator, ollama: FakeOllamaServer, discord_api: EmulatorControl
) -> None:
    config = make_config(tmp_path, emulator.url, [ollama.url], blog={**FAST_BLOG, "model": "llama9"})
    async with running_bot(config):
        failing = await discord_api.invoke("general", "bob", "blog new", topic="no such model")
        await discord_api.answered(failing["interaction_id"])
        notice = await wait_until(lambda: _bot_message(discord_api, "could not be written"), within=10)
    assert notice["content"].startswith(f"<@{discord_api.user('bob')}> your blog post #1")
    assert "is not available" in notice["content"] and notice["pinged"] == [discord_api.user("bob")]

    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=20) as slow:
        slow.script("mistral:latest", ["word " * 3000])
        async with running_bot(make_config(tmp_path, emulator.url, [slow.url], blog=FAST_BLOG)):
            job = await discord_api.invoke("general", "alice", "blog new", topic="cancel me")
            record = await discord_api.answered(job["interaction_id"])
            await discord_api.answered(
                (await discord_api.invoke("general", "mod", "blog cancel", job=2))["interaction_id"]
            )
            cancelled = await wait_until(lambda: _bot_message(discord_api, "was cancelled by"), within=10)
            status = await status_text(discord_api, record)
    assert cancelled["pinged"] == [discord_api.user("alice")]
    assert f"<@{discord_api.user('mod')}>" in cancelled["content"] and "Cancelled by" in status
    texts = [m["content"] for m in await discord_api.bot_replies("general")]
    assert (
        sum("could not be written" in t for t in texts) == 1
        and sum("was cancelled by" in t for t in texts) == 1
    )


async def _bot_message(api: EmulatorControl, needle: str) -> dict[str, Any] | None:
    return next((m for m in await api.bot_replies("general") if needle in m["content"]), None)


async def test_a_job_whose_model_is_on_a_server_that_is_down_waits_for_it(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    gpu = FakeOllamaServer(models=["llama2", "mistral:latest"])
    await gpu.start()
    port = int(gpu.url.rsplit(":", 1)[1])
    await gpu.stop()  # the GPU box is down; the laptop has only llama2
    async with FakeOllamaServer(models=["llama2"]) as laptop:
        config = make_config(tmp_path, emulator.url, [gpu.url, laptop.url], blog=FAST_BLOG)
        async with running_bot(config):
            invocation = await discord_api.invoke(
                "general", "alice", "blog new", topic="owls", target_length=300
            )
            record = await discord_api.answered(invocation["interaction_id"])
            waiting = await wait_until(
                lambda: _contains(status_text(discord_api, record), "Waiting for a model server"), within=10
            )
            revived = FakeOllamaServer(models=["llama2", "mistral:latest"])
            revived.script("mistral:latest", [ARTICLE])
            await revived.start(port=port)
            try:
                (post,) = await wait_for_articles(discord_api, 1, within=20)
            finally:
                await revived.stop()
    assert "mistral" in waiting
    assert post["attachments"][0]["filename"] == "owls-at-night-1.md"
    assert [r["status"] for r in laptop.requests if r["path"] == "/api/chat"] == [404], (
        "asked once, then skipped"
    )


@pytest.mark.parametrize("after_processing", [False, True], ids=["before", "after-processing"])
async def test_a_connection_reset_while_posting_still_posts_the_article_exactly_once(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl, after_processing: bool
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [ARTICLE])
        config = make_config(tmp_path, emulator.url, [fake.url], blog=FAST_BLOG)
        async with running_bot(config):
            await discord_api.fault(
                kind="connection_reset",
                method="POST",
                path="/channels/*/messages",
                attachments=True,
                count=1,
                after_processing=after_processing,
            )
            invocation = await discord_api.invoke("general", "alice", "blog new", topic="owls")
            record = await discord_api.answered(invocation["interaction_id"])
            await wait_for_articles(discord_api, 1)
            final = await wait_until(lambda: _contains(status_text(discord_api, record), "Done"), within=15)
            posts = await posted_articles(discord_api)
            resets = [r for r in await discord_api.requests() if r["status"] == "reset"]
    assert len(resets) == 1, "the fault never fired"
    assert len(posts) == 1, [p["id"] for p in posts]
    assert final.startswith("✅")


async def test_without_attach_files_the_article_goes_by_dm_and_the_status_says_why(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl, http: Any
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"]) as fake:
        fake.script("mistral:latest", [ARTICLE])
        async with running_bot(make_config(tmp_path, emulator.url, [fake.url], blog=FAST_BLOG)):
            await discord_api.permissions("general", "bot", deny=["ATTACH_FILES"])
            invocation = await discord_api.invoke("general", "alice", "blog new", topic="owls")
            record = await discord_api.answered(invocation["interaction_id"])
            dm = discord_api.state["dm_channels"]["alice"]

            async def in_dm() -> list[dict[str, Any]] | None:
                messages = (await http.get(f"{emulator.url}/_emulator/channels/{dm}/messages")).json()
                return [m for m in messages if m["attachments"]] or None

            (notice,) = await wait_until(in_dm, within=15)
            final = await wait_until(lambda: _contains(status_text(discord_api, record), "Attach Files"))
    assert notice["attachments"][0]["filename"].endswith(".md")
    assert "Attach Files" in notice["content"]
    assert "sent to the requester by DM" in final, final
    assert not await posted_articles(discord_api)


def status_buttons(message: dict[str, Any]) -> list[str]:
    return [
        child["custom_id"] for row in message.get("components") or [] for child in row.get("components") or []
    ]


async def test_the_cancel_button_on_a_status_message_stops_the_job(
    tmp_path: Path, emulator: DiscordEmulator, discord_api: EmulatorControl
) -> None:
    async with FakeOllamaServer(models=["mistral:latest"], tokens_per_second=20) as slow:
        slow.script("mistral:latest", [ARTICLE * 5])
        config = make_config(tmp_path, emulator.url, [slow.url], blog=FAST_BLOG)
        async with running_bot(config):
            invocation = await discord_api.invoke("general", "alice", "blog new", topic="owls at night")
            record = await discord_api.answered(invocation["interaction_id"])
            message_id = str(record["original"]["id"])

            async def status() -> dict[str, Any]:
                return next(m for m in await discord_api.messages("general") if str(m["id"]) == message_id)

            async def writing() -> dict[str, Any] | None:
                found = await status()
                return found if "Writing" in found["content"] else None

            shown = await wait_until(writing, within=10)
            [cancel] = status_buttons(shown)
            refused = await discord_api.press(message_id, cancel, "bob")
            refusal = first_callback(await discord_api.answered(refused["interaction_id"]))
            assert refusal["data"]["flags"] & EPHEMERAL and "moderator" in refusal["data"]["content"]
            pressed = await discord_api.press(message_id, cancel, "alice")
            await discord_api.answered(pressed["interaction_id"])

            async def cancelled() -> dict[str, Any] | None:
                found = await status()
                return found if "Cancelled" in found["content"] else None

            ended = await wait_until(cancelled, within=10)
            generation = next(r for r in slow.requests if r["path"] == "/api/chat")
            await wait_until(lambda: _true(generation["finished_at"]), within=5)
    assert status_buttons(shown) == ["llmbot:blog-cancel:1"]
    assert status_buttons(ended) == [], "a finished job's status has no Cancel button"
    assert generation["disconnected"], "the generation was stopped, not left running"
    assert await posted_articles(discord_api) == []


async def _true(value: Any) -> Any:
    return value
