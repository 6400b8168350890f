"""The blog worker's pure parts: progress estimates and joining continued text."""

from __future__ import annotations

import pytest

from bot.blog.worker import Progress, join_continuation


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


def test_the_estimate_uses_the_writing_speed_not_the_time_spent_waiting_and_reading() -> None:
    clock = Clock()
    progress = Progress(target_words=300, clock=clock)
    assert progress.seconds_left() is None, "no estimate while waiting for a model server"
    clock.now += 30  # in line for a server
    progress.enter("reading")
    clock.now += 5  # reading the prompt
    progress.enter("writing")
    clock.now += 15
    progress.base_text = words(150)  # 10 words/s while writing
    assert progress.words == 150
    assert progress.seconds_left() == pytest.approx(15, rel=0.05)
    assert progress.fraction == pytest.approx(0.5)


def test_past_the_target_the_estimate_expects_as_long_again_within_the_budget() -> None:
    clock = Clock()
    progress = Progress(target_words=300, clock=clock)
    progress.enter("writing")
    clock.now += 40
    progress.base_text = words(400)  # 10 words/s, and nothing says when the model will stop
    assert progress.fraction == pytest.approx(0.5)
    assert progress.seconds_left() == pytest.approx(40, rel=0.05)
    # With 100 tokens of budget left and no continuation allowed, at most 75 words can follow.
    progress.budget_tokens, progress.parts_left = 500, 0
    progress.close_part()
    assert progress.words_left() == pytest.approx(10.0), "the part ended: nothing more can come"
    progress.parts_left = 1
    assert progress.words_left() == pytest.approx(375), "one more part of 500 tokens may follow"
    assert progress.fraction < 1.0


def test_the_expected_length_follows_what_the_model_really_writes() -> None:
    clock = Clock()
    progress = Progress(target_words=300, expected_words=450, clock=clock)
    progress.enter("writing")
    clock.now += 15
    progress.base_text = words(150)
    assert progress.seconds_left() == pytest.approx(30, rel=0.05)


def test_speed_is_kept_across_parts_and_pauses() -> None:
    clock = Clock()
    progress = Progress(target_words=300, clock=clock)
    progress.enter("writing")
    clock.now += 10
    progress.base_text = words(100)
    progress.enter("waiting")  # preempted by a chat, or a continuation waits for its slot
    clock.now += 60
    progress.enter("reading")
    clock.now += 5
    assert progress.words_per_second() == pytest.approx(10)
    assert progress.seconds_left() == pytest.approx(20, rel=0.05)


@pytest.mark.parametrize(
    ("before", "after", "joined"),
    [
        ("It was a dark", " and stormy night.", "It was a dark and stormy night."),
        ("It was a dark", "and stormy night.", "It was a dark and stormy night."),
        (
            "The end of part one.",
            "Sure! Here is the rest of the post:\nPart two.",
            "The end of part one. Part two.",
        ),
        ("A list follows", "## Next\n\ntext", "A list follows\n\n## Next\n\ntext"),
        ("Numbers", ", then more", "Numbers, then more"),
        ("", "start", "start"),
    ],
)
def test_continued_text_joins_into_one(before: str, after: str, joined: str) -> None:
    assert join_continuation(before, after) == joined


def test_continuations_still_to_come_add_their_prompt_reading() -> None:
    clock = Clock()
    progress = Progress(target_words=300, clock=clock, budget_tokens=400, parts_left=2, prompt_chars=400)
    progress.enter("reading")
    clock.now += 1  # 100 prompt tokens read in 1 s
    progress.enter("writing")
    clock.now += 30
    progress.base_text = "word " * 300  # 10 words/s; past the target, with the part's budget spent
    progress.close_part()
    assert progress.words_left() == 300, "as long again"
    # That takes one more part, which first reads the request and the text: (400 + 1500) / 4 = 475
    # tokens at 100 tokens/s.
    assert progress.seconds_left() == pytest.approx(30 + 4.75)
