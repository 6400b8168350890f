"""Blog request validation, prompt sizing and the Markdown file with its front matter."""

from __future__ import annotations

import datetime

import pytest
import yaml

from bot.blog.article import (
    InvalidRequest,
    build_prompt,
    make_article,
    normalise_tags,
    num_predict_for,
    slugify,
    validate_choice,
    validate_target_length,
    validate_topic,
)

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)


def front_matter(text: str) -> dict[str, object]:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    parsed = yaml.safe_load(head)
    assert isinstance(parsed, dict)
    return parsed


def test_article_has_front_matter_with_the_reference_fields() -> None:
    raw = "# Night Owls: A Field Guide\n\nOwls hunt at night.\n\n## Eyes\n\nBig ones."
    article = make_article(
        raw,
        topic="owls",
        style="casual",
        tone="friendly",
        tags=("birds", "night"),
        model="mistral:latest",
        now=NOW,
    )
    meta = front_matter(article.text)
    assert meta == {
        "title": "Night Owls: A Field Guide",
        "slug": "night-owls-a-field-guide",
        "topic": "owls",
        "tags": ["birds", "night"],
        "style": "casual",
        "tone": "friendly",
        "model": "mistral:latest",
        "generated_at": "2026-11-25T12:00:00Z",
        "word_count": 7,
    }
    assert article.text.split("\n---\n", 1)[1].lstrip().startswith("# Night Owls: A Field Guide\n\nOwls hunt")
    assert article.slug == "night-owls-a-field-guide" and article.word_count == 7


def test_hostile_model_output_still_gives_valid_yaml() -> None:
    raw = '# "Quotes": and\tcolons: {braces} [x] #hash \u2028 \x07bell\n<think>secret</think>body'
    article = make_article(
        raw, topic='topic: "x"', style="opinion", tone="humorous", tags=(), model="m", now=NOW
    )
    meta = front_matter(article.text)
    assert meta["title"] == '"Quotes": and\tcolons: {braces} [x] #hash \u2028 bell'
    assert meta["topic"] == 'topic: "x"' and meta["tags"] == []
    assert "secret" not in article.text


def test_missing_title_falls_back_to_the_topic() -> None:
    article = make_article(
        "Just text.", topic="rust async", style="technical", tone="neutral", tags=(), model="m", now=NOW
    )
    assert article.title == "Rust async" and article.slug == "rust-async"


@pytest.mark.parametrize(
    ("raw", "tags"),
    [
        (None, ()),
        ("", ()),
        ("Python, async IO,#python, ,", ("python", "async-io")),
        ("C++, c#", ("c++", "c")),
    ],
)
def test_tags_are_normalised(raw: str | None, tags: tuple[str, ...]) -> None:
    assert normalise_tags(raw) == tags


def test_invalid_options_name_the_problem() -> None:
    with pytest.raises(InvalidRequest, match="`topic` must be 3 to 300"):
        validate_topic("  a ")
    with pytest.raises(InvalidRequest, match="`target_length` must be between 300 and 5000"):
        validate_target_length(299)
    with pytest.raises(InvalidRequest, match="`style` must be one of"):
        validate_choice("style", "poetry", ("technical",))
    with pytest.raises(InvalidRequest, match="at most 10 tags"):
        normalise_tags(",".join(f"t{i}" for i in range(11)))
    assert validate_topic("  owls   at\nnight ") == "owls at night"


def test_prompt_and_budget_follow_the_request() -> None:
    system, prompt = build_prompt("owls", "tutorial", "friendly", 800, ("birds",))
    assert "owls" in prompt and "about 800 words" in prompt and "birds" in prompt and "step-by-step" in prompt
    assert system
    assert num_predict_for(800) > 800 * 1.3


def test_slugify() -> None:
    assert slugify("Héllo, Wörld! 2026") == "hello-world-2026"
    assert len(slugify("word " * 40)) <= 60 and not slugify("word " * 40).endswith("-")
    assert slugify("!!!") == ""
