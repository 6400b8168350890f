"""Splitting, reasoning-hiding and cleaning of model output."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.chat.text import MESSAGE_LIMIT, _open_code_block, clean_output, hide_reasoning, split_message

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def rejoins_to(chunks: list[str], text: str) -> bool:
    """Whether ``chunks`` are ``text`` cut up, with a closing fence added at the end of a chunk and the
    block reopened at the start of the next (compared without whitespace, as cuts drop a separator).

    Which fences split_message added cannot be read off the chunks alone: ``"A\n```"`` + ``"```\nB"`` is
    both ``"A\n```\n```\nB"`` cut at its middle line break and a cut inside a block holding ``"A B"``.
    So every reading is tried against the original (a set of positions in it, not a single guess).
    """
    target = "".join(text.split())
    closable = [False] * len(chunks)
    for index, chunk in enumerate(chunks[:-1]):
        block = _open_code_block(chunk.rsplit("\n", 1)[0]) if "\n" in chunk else None
        closable[index] = block is not None and chunks[index + 1].startswith(f"{block[0]}{block[1]}\n")
    reachable = {(0, False)}  # (position in target, whether this chunk starts with an added reopening)
    for index, chunk in enumerate(chunks):
        following = set()
        for position, reopened in reachable:
            for closed in (False, True) if closable[index] else (False,):
                body = chunk.rsplit("\n", 1)[0] if closed else chunk
                if reopened:
                    body = body.split("\n", 1)[1]
                stripped = "".join(body.split())
                if target.startswith(stripped, position):
                    following.add((position + len(stripped), closed))
        reachable = following
    return (len(target), False) in reachable


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
    assert rejoins_to(chunks, text)


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


def test_original_fences_at_a_cut_are_not_mistaken_for_added_ones() -> None:
    # A block closed by the text itself, then a new one opened right after: the cut falls between the
    # two fence lines, which looks exactly like a block closed and reopened by split_message.
    text = "0000\n```\n" + "word " * 120 + "\n```\n```\n" + "word " * 120
    chunks = split_message(text, 64)
    assert any(chunk.endswith(" \n```") for chunk in chunks)
    assert rejoins_to(chunks, text)
    # The checker is not blind: a changed fence, a missing word or an extra one are caught.
    assert not rejoins_to(chunks, text.replace("\n```\n```\n", "\n~~~\n~~~\n"))
    assert not rejoins_to(chunks, text.replace("word ", "", 1))
    assert not rejoins_to(chunks, text + "word")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(texts, st.integers(min_value=64, max_value=2000))
@example(text="0000\n```\n" + "word " * 300 + "\n```\n```\n" + "word " * 300, limit=64)
def test_split_properties(text: str, limit: int) -> None:
    chunks = split_message(text, limit)
    assert all(len(chunk) <= limit for chunk in chunks)
    # Cuts may fall mid-word, so the text is compared without its whitespace.
    assert rejoins_to(chunks, text)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(texts, st.integers(min_value=0, max_value=100))
def test_split_is_prefix_stable(text: str, percent: int) -> None:
    prefix = text[: len(text) * percent // 100]
    settled = split_message(prefix, 200)[:-1]
    assert split_message(text, 200)[: len(settled)] == settled


def test_hide_reasoning_at_the_start() -> None:
    assert hide_reasoning("<think>hmm\nyes</think>\nAnswer", final=True) == "Answer"
    assert hide_reasoning("\n  <think>\nhmm\n</think>\n\n  Answer", final=False) == "Answer"
    assert hide_reasoning("<think>a</think>\n<think>b</think>\nAnswer", final=True) == "Answer"
    assert hide_reasoning("<think>still thinking", final=False) == ""
    assert hide_reasoning("<think>never closed", final=True) == ""
    assert hide_reasoning("<think>done</think>", final=False) == ""
    for partial in ("<", "<th", " \n<think", "<think>x</think>\n<thi"):
        assert hide_reasoning(partial, final=False) == "", partial
    assert hide_reasoning("<thi", final=True) == "<thi"


def test_think_later_in_the_text_is_ordinary_text() -> None:
    prose = "Wrap the reasoning in a <think> tag, then close it with </think> when done."
    assert hide_reasoning(prose, final=True) == prose
    assert hide_reasoning("Use the <think> tag to", final=False) == "Use the <think> tag to"
    assert hide_reasoning("Answer <thi", final=False) == "Answer <thi"
    assert hide_reasoning("<think>x</think>A <think>b</think> c", final=True) == "A <think>b</think> c"
    assert hide_reasoning("a < b", final=True) == "a < b"
    assert hide_reasoning("x <", final=False) == "x <"
    assert hide_reasoning("  indented", final=True) == "  indented"


def test_clean_output_drops_controls_but_keeps_text() -> None:
    assert clean_output("a\x00b\x1b[31mc\r\nd\te\u200b") == "ab[31mc\nd\te\u200b"
    assert clean_output("lone \ud800 surrogate \U0001f989") == "lone  surrogate \U0001f989"
    assert clean_output("x\x85y\x7f\r") == "xy\n"
