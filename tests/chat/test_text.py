"""Splitting, reasoning-hiding and cleaning of model output."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.chat.text import MESSAGE_LIMIT, _open_code_block, clean_output, hide_reasoning, split_message

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def rejoin(chunks: list[str]) -> str:
    """Undo the fences split_message adds, so the original's words can be compared."""
    parts = []
    closed = []
    for index, chunk in enumerate(chunks[:-1]):
        block = _open_code_block(chunk.rsplit("\n", 1)[0]) if "\n" in chunk else None
        closed.append(block is not None and chunks[index + 1].startswith(f"{block[0]}{block[1]}\n"))
    closed.append(False)
    for index, chunk in enumerate(chunks):
        if closed[index]:
            chunk = chunk.rsplit("\n", 1)[0]  # drop the closing fence line split_message added
        if index > 0 and closed[index - 1]:
            chunk = chunk.split("\n", 1)[1]  # drop the reopening fence line
        parts.append(chunk)
    return " ".join(parts)


def words(text: str) -> list[str]:
    return text.split()


def test_short_text_is_one_chunk() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("") == [""]


def test_prefers_paragraph_then_line_then_word_breaks() -> None:
    paragraph = "a" * 1200 + "\n\n" + "b" * 1200
    assert split_message(paragraph) == ["a" * 1200, "b" * 1200]
    lines = "a" * 1500 + "\n" + "b" * 1000
    assert split_message(lines) == ["a" * 1500, "b" * 1000]
    spaced = ("word " * 600).strip()
    chunks = split_message(spaced)
    assert all(not chunk.startswith(" ") and not chunk.endswith(" ") for chunk in chunks)
    assert all(set(chunk.split()) == {"word"} for chunk in chunks)


def test_unbroken_text_is_cut_hard() -> None:
    chunks = split_message("x" * 4500)
    assert "".join(chunks) == "x" * 4500
    assert all(len(chunk) <= MESSAGE_LIMIT for chunk in chunks)


def test_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "\n".join(f"print({i})" for i in range(400))
    text = "Here:\n```python\n" + code + "\n```\nDone."
    chunks = split_message(text)
    assert len(chunks) >= 2
    for chunk in chunks:
        assert len(FENCE.findall(chunk)) % 2 == 0, chunk[-50:]
    assert chunks[0].endswith("\n```")
    assert chunks[1].startswith("```python\n")
    assert words(rejoin(chunks)) == words(text)


def test_tilde_fences_are_closed_with_tildes() -> None:
    text = "~~~\n" + "line\n" * 500 + "~~~"
    chunks = split_message(text)
    assert chunks[0].endswith("\n~~~") and chunks[1].startswith("~~~\n")


texts = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300),
        st.sampled_from(["\n", "\n\n", " ", "```py\n", "\n```\n", "~~~\n", "x" * 700, "word " * 120]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(texts, st.integers(min_value=64, max_value=2000))
def test_split_properties(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert all(len(chunk) <= limit for chunk in chunks)
    # Cuts may fall mid-word, so compare the text without its whitespace.
    assert "".join(words(rejoin(chunks))) == "".join(words(text))


@settings(max_examples=100, deadline=None)
@given(texts, st.integers(min_value=0, max_value=100))
def test_split_is_prefix_stable(text: str, percent: int) -> None:
    prefix = text[: len(text) * percent // 100]
    settled = split_message(prefix, 200)[:-1]
    assert split_message(text, 200)[: len(settled)] == settled


def test_hide_reasoning() -> None:
    assert hide_reasoning("<think>hmm\nyes</think>\nAnswer", final=True) == "Answer"
    assert hide_reasoning("<think>still thinking", final=False) == ""
    assert hide_reasoning("<think>never closed", final=True) == ""
    assert hide_reasoning("Answer <thi", final=False) == "Answer "
    assert hide_reasoning("a < b", final=True) == "a < b"
    assert hide_reasoning("x <", final=True) == "x <"


def test_clean_output_drops_controls_but_keeps_text() -> None:
    assert clean_output("a\x00b\x1b[31mc\r\nd\te\u200b") == "ab[31mc\nd\te\u200b"
