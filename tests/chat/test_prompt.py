"""Prompt building: order, budgets, and who said what."""

from __future__ import annotations

from bot.chat.prompt import Turn, build_prompt, render_system_prompt
from bot.llm import ChatMessage


def turns(*contents: str) -> list[Turn]:
    return [
        Turn("user" if index % 2 == 0 else "assistant", "alice" if index % 2 == 0 else "bot", content)
        for index, content in enumerate(contents)
    ]


def test_history_in_order_between_system_and_current() -> None:
    prompt = build_prompt(
        "sys", turns("q1", "a1", "q2", "a2"), Turn("user", "alice", "q3"), max_messages=20, max_chars=1000
    )
    assert [(m.role, m.content) for m in prompt.messages] == [
        ("system", "sys"),
        ("user", "q1"),
        ("assistant", "a1"),
        ("user", "q2"),
        ("assistant", "a2"),
        ("user", "q3"),
    ]
    assert prompt.dropped == 0


def test_oldest_dropped_first_by_count_and_by_characters() -> None:
    history = turns("q1", "a1", "q2", "a2")
    by_count = build_prompt("sys", history, Turn("user", "alice", "q3"), max_messages=2, max_chars=1000)
    assert [m.content for m in by_count.messages] == ["sys", "q2", "a2", "q3"]
    assert by_count.dropped == 2
    long_history = turns("x" * 600, "y" * 300, "z" * 300)
    by_chars = build_prompt("sys", long_history, Turn("user", "alice", "now"), max_messages=20, max_chars=700)
    assert [m.content for m in by_chars.messages] == ["sys", "y" * 300, "z" * 300, "now"]
    assert by_chars.dropped == 1
    none = build_prompt("sys", history, Turn("user", "alice", "q3"), max_messages=0, max_chars=1000)
    assert none.messages == [ChatMessage("system", "sys"), ChatMessage("user", "q3")]


def test_speakers_are_named_only_when_several_people_talk() -> None:
    history = [Turn("user", "alice", "hi"), Turn("assistant", "bot", "hello")]
    prompt = build_prompt("s", history, Turn("user", "bob", "me too"), max_messages=20, max_chars=1000)
    assert [m.content for m in prompt.messages] == ["s", "alice: hi", "hello", "bob: me too"]


def test_system_prompt_placeholders() -> None:
    text = render_system_prompt(
        "In {server} #{channel} on {date}; json {a: 1}", server="S", channel="c", date="2026-11-25"
    )
    assert text == "In S #c on 2026-11-25; json {a: 1}"
    dm = render_system_prompt("Talking with {user}, {server}", user="alice")
    assert dm == "Talking with alice, {server}"
