"""Blog request validation, prompt sizing, cleaning model output, and the Markdown file with front matter."""

from __future__ import annotations

import datetime
import re
import time

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bot.blog.article import (
    CleanArticle,
    InvalidRequest,
    build_prompt,
    clean_article,
    clean_title,
    count_words,
    make_article,
    normalise_tags,
    num_predict_for,
    slugify,
    validate_choice,
    validate_target_length,
    validate_topic,
)

NOW = datetime.datetime(2026, 11, 25, 23, 30, tzinfo=datetime.UTC)
KEYS = ["title", "slug", "date", "tags", "topic", "style", "tone", "model", "generated_at", "word_count"]
BODY = "Owls hunt at night.\n\n## Eyes\n\nBig ones."


def split_file(text: str) -> tuple[dict[str, object], str]:
    """The parsed front matter and the body of an article file."""
    assert text.startswith("---\n")
    head, separator, body = text[4:].partition("\n---\n")
    assert separator
    parsed = yaml.safe_load(head)
    assert isinstance(parsed, dict)
    assert list(parsed) == KEYS
    return parsed, body


def article(raw: str, *, topic: str = "owls", job_id: int = 7, tags: tuple[str, ...] = ()):
    return make_article(
        raw,
        topic=topic,
        style="casual",
        tone="friendly",
        tags=tags,
        model="mistral:latest",
        now=NOW,
        job_id=job_id,
    )


def h1_lines(text: str) -> list[str]:
    return re.findall(r"^#[ \t].*$", text, re.MULTILINE)


# -- the file ------------------------------------------------------------------------------------------------


def test_article_has_front_matter_with_the_reference_fields() -> None:
    # Changed for the new convention: a date key, the job id in the slug, and no "# Title" in the body.
    raw = "# Night Owls: A Field Guide\n\n" + BODY
    result = article(raw, tags=("birds", "night"))
    meta, body = split_file(result.text)
    assert meta == {
        "title": "Night Owls: A Field Guide",
        "slug": "night-owls-a-field-guide-7",
        "date": datetime.date(2026, 11, 25),
        "tags": ["birds", "night"],
        "topic": "owls",
        "style": "casual",
        "tone": "friendly",
        "model": "mistral:latest",
        "generated_at": "2026-11-25T23:30:00Z",
        "word_count": 7,
    }
    assert body == "\n" + BODY + "\n"
    assert result.title == "Night Owls: A Field Guide" and result.slug == "night-owls-a-field-guide-7"
    assert result.word_count == 7 and result.generated_at == "2026-11-25T23:30:00Z"


def test_date_is_the_utc_day() -> None:
    # 23:30 in New York is already the next day in UTC.
    new_york = datetime.timezone(datetime.timedelta(hours=-5))
    result = make_article(
        "text",
        topic="owls",
        style="casual",
        tone="friendly",
        tags=(),
        model="m",
        now=datetime.datetime(2026, 11, 25, 23, 30, tzinfo=new_york),
        job_id=1,
    )
    meta, _ = split_file(result.text)
    assert meta["date"] == datetime.date(2026, 11, 26) and meta["generated_at"] == "2026-11-26T04:30:00Z"


def test_hostile_model_output_still_gives_valid_yaml() -> None:
    # Changed: the reasoning block is at the start (only there is it reasoning), and the title is cleaned
    # (whitespace collapsed); the raw hostile characters now go through the topic and the model name.
    raw = '<think>secret</think>\n# "Quotes": and\tcolons: {braces} [x] #hash \u2028 \x07bell\nbody'
    hostile = 'topic: "x" \u2028 \u0085 \u2029 # {a: [b]}'
    result = make_article(
        raw,
        topic=hostile,
        style="opinion",
        tone="humorous",
        tags=("c++",),
        model="m\u2028: x",
        now=NOW,
        job_id=3,
    )
    meta, body = split_file(result.text)
    assert meta["title"] == '"Quotes": and colons: {braces} [x] #hash bell'
    assert meta["topic"] == hostile and meta["model"] == "m\u2028: x" and meta["tags"] == ["c++"]
    assert "secret" not in result.text and body == "\nbody\n"


def test_missing_title_falls_back_to_the_topic() -> None:
    # Changed: the slug carries the job id.
    result = article("Just text.", topic="rust async")
    assert result.title == "Rust async" and result.slug == "rust-async-7"
    meta, body = split_file(result.text)
    assert meta["title"] == "Rust async" and body == "\nJust text.\n"


def test_empty_output_still_gives_a_file() -> None:
    for raw in ("", "   \n\n", "<think>never finished", "Sure! Here is the blog post:"):
        result = article(raw, topic="owls")
        meta, body = split_file(result.text)
        assert meta["title"] == "Owls" and meta["word_count"] == 0 and body == ""
        assert result.slug == "owls-7"


# -- what models wrap around the post ------------------------------------------------------------------------


def test_preamble_is_dropped() -> None:
    for preamble in (
        "Sure! Here is a blog post about owls:",
        "Certainly!\n\nHere's a 1500-word casual blog post on night owls:",
        "Of course. Below is the article you asked for.",
        "**Here’s your blog post:**\n\n---",
        "Absolutely! I'd be happy to write a post about owls.",
    ):
        cleaned = clean_article(f"{preamble}\n\n# Night Owls\n\n{BODY}")
        assert cleaned == clean_article(f"# Night Owls\n\n{BODY}"), preamble
        assert cleaned.title == "Night Owls" and cleaned.body == BODY


def test_article_text_that_looks_like_a_preamble_is_kept() -> None:
    # Only short lines about the post, before the post, are preamble: these are the article.
    for raw in (
        "Sure, AI is overhyped. But it is useful.\n\n## Why",
        "Here is why owls matter: they keep mice in check.",
        "Certainly the most interesting bird of the night is the barn owl.",
    ):
        assert clean_article(raw).body == raw
    later = "# Owls\n\nIntro.\n\nHere is the article you asked for:\n\nMore."
    assert clean_article(later).body == "Intro.\n\nHere is the article you asked for:\n\nMore."


def test_sign_off_is_dropped() -> None:
    for sign_off in (
        "I hope this helps!",
        "Let me know if you'd like any changes.\n\nHappy coding!",
        "---\n\n*Feel free to adjust the tone or length.*",
        "Hope this helps! 😊",
        "Would you like me to add a section on barn owls?",
        "(Word count: 1,512)",
    ):
        cleaned = clean_article(f"# Night Owls\n\n{BODY}\n\n{sign_off}\n")
        assert cleaned.body == BODY, sign_off


def test_sign_off_is_only_taken_from_the_very_end() -> None:
    raw = f"# Owls\n\nLet me know if you see one: write to the society.\n\n{BODY}"
    assert clean_article(raw).body == f"Let me know if you see one: write to the society.\n\n{BODY}"
    kept = f"# Owls\n\n{BODY}\n\nThanks for reading, and watch the sky tonight."
    assert clean_article(kept).body.endswith("watch the sky tonight.")


@pytest.mark.parametrize(
    "first_line",
    [
        "# Night Owls",
        "# Night Owls #",
        "Title: Night Owls",
        "title: **Night Owls**",
        "**Title:** Night Owls",
        "**Title**: Night Owls",
        "# Title: Night Owls",
        "Title - Night Owls",
        "**Night Owls**",
        "__Night Owls__",
        "Night Owls\n==========",
    ],
)
def test_title_is_recognised(first_line: str) -> None:
    assert clean_article(f"\n{first_line}\n\n{BODY}") == clean_article(f"# Night Owls\n\n{BODY}")
    result = article(f"{first_line}\n\n{BODY}")
    meta, body = split_file(result.text)
    assert meta["title"] == "Night Owls" and result.slug == "night-owls-7"
    assert body == f"\n{BODY}\n" and h1_lines(result.text) == []


def test_lines_that_are_not_titles() -> None:
    for raw in (
        "Title-holders rarely read the fine print.",
        "**Owls** are birds.",
        "**Owls** and **bats** hunt at night.",
        "## Introduction",
    ):
        cleaned = clean_article(f"{raw}\n\nMore.")
        assert cleaned.title is None and cleaned.body == f"{raw}\n\nMore.", raw


def test_title_written_twice_appears_once() -> None:
    for raw in (
        f"Title: Night Owls\n\n# Night Owls\n\n{BODY}",
        f"**Night Owls**\n\n## Night Owls\n\n{BODY}",
        f"# Night Owls\n\n# night owls\n\n{BODY}",
    ):
        result = article(raw)
        meta, body = split_file(result.text)
        assert meta["title"] == "Night Owls" and body == f"\n{BODY}\n", raw
        assert result.text.count("Night Owls") == 1


def test_other_h1s_are_demoted_but_code_is_left_alone() -> None:
    raw = (
        "# Night Owls\n\nIntro.\n\n# Eyes\n\nBig.\n\n```python\n# a comment\nx = 1\n```\n\n# Ears #\n\nSharp."
    )
    cleaned = clean_article(raw)
    assert cleaned.title == "Night Owls"
    assert (
        cleaned.body == "Intro.\n\n## Eyes\n\nBig.\n\n```python\n# a comment\nx = 1\n```\n\n## Ears\n\nSharp."
    )
    untitled = clean_article("Intro.\n\n# Eyes\n\nBig.")
    assert untitled.title is None and untitled.body == "Intro.\n\n## Eyes\n\nBig."


@pytest.mark.parametrize(
    "raw",
    [
        f"```markdown\n# Night Owls\n\n{BODY}\n```",
        f"```md\n# Night Owls\n\n{BODY}\n```\n",
        f"Sure! Here is the post:\n\n```markdown\n# Night Owls\n\n{BODY}\n```\n\nI hope this helps!",
        f"Okay, so I wrote this for you.\n```markdown\n# Night Owls\n\n{BODY}\n```",
        f"~~~markdown\n# Night Owls\n\n{BODY}\n~~~",
        # The closing fence is missing: the text ended (cut at the length cap, or still streaming).
        f"```markdown\n# Night Owls\n\n{BODY}",
        f"Here's your blog post:\n\n```markdown\n# Night Owls\n\n{BODY}\n",
    ],
)
def test_a_fence_around_the_whole_post_is_unwrapped(raw: str) -> None:
    cleaned = clean_article(raw)
    assert cleaned.title == "Night Owls" and cleaned.body == BODY
    assert count_words(cleaned.body) == 7


def test_code_blocks_inside_a_wrapped_post_survive() -> None:
    inner = "Intro.\n\n```python\nprint(1)\n```\n\nMore.\n\n```\nplain block\n```\n\nEnd."
    assert clean_article(f"```markdown\n# Owls\n\n{inner}\n```\n\nHappy coding!").body == inner
    unclosed = "Intro.\n\n```python\nprint(1)\n```\n\nMore words"
    assert clean_article(f"```markdown\n# Owls\n\n{unclosed}").body == unclosed
    # Closed, then the model says something about it: that stays (only sign-offs go).
    noted = clean_article(f"```markdown\n# Owls\n\n{inner}\n```\n\nThis version is shorter.")
    assert noted.body == f"{inner}\n\nThis version is shorter."


def test_a_markdown_fence_after_a_few_unrecognised_lines_is_unwrapped() -> None:
    raw = f"Okay.\n\nI wrote this for you.\n\n```markdown\n# Night Owls\n\n{BODY}\n```"
    assert clean_article(raw) == CleanArticle(title="Night Owls", body=BODY)
    # Three lines, or a heading, before it: that is the article, with an example in it.
    for raw in (
        "One.\nTwo.\nThree.\n```markdown\n# Example\n```",
        "# Owls\n\nIntro.\n```markdown\n# Example\n```",
    ):
        assert "```markdown\n# Example\n```" in clean_article(raw).body


@pytest.mark.parametrize(
    "raw",
    [
        "# a" + " " * 100_000 + "b",
        "x" + " " * 100_000 + "y",
        "Sure" + " " * 100_000 + "x",
        "<!--" * 40_000,
        "# " + "[" * 100_000,
        "Sure!\n" * 30_000,
        "a\n===\n" * 30_000,
        "# a   \n" * 30_000,
        "```markdown\n" + "```\n```py\n" * 20_000,
        "x\n" + "Happy coding!\n" * 30_000,
    ],
)
def test_pathological_output_is_handled_in_linear_time(raw: str) -> None:
    start = time.perf_counter()
    make_article(raw, topic="owls", style="casual", tone="friendly", tags=(), model="m", now=NOW, job_id=1)
    count_words(clean_article(raw).body)
    assert time.perf_counter() - start < 2.0


def test_bare_fence_is_unwrapped_only_around_prose() -> None:
    prose = (
        "# Night Owls\n\nOwls are wonderful birds that hunt mostly during the night hours.\n\n"
        "They have excellent eyes and can see in very dim light indeed.\n\n"
        "Their hearing is also remarkable and lets them find prey under deep snow."
    )
    cleaned = clean_article(f"```\n{prose}\n```")
    assert cleaned.title == "Night Owls" and cleaned.body.startswith("Owls are wonderful")
    code = "```\n# compute the total price of every item in the cart\ntotal = sum(prices)\n```"
    assert clean_article(code) == clean_article(code + "\n") and clean_article(code).body == code
    python = "```python\n# Owls\nprint('hoot')\n```"
    assert clean_article(python).body == python


def test_front_matter_the_model_wrote_is_replaced() -> None:
    raw = f'```markdown\n---\ntitle: "Night Owls"\ntags:\n  - birds\ndate: 2024-01-01\n---\n\n{BODY}\n```'
    assert clean_article(raw) == CleanArticle(title="Night Owls", body=BODY)
    result = article(f"---\ntitle: Night Owls\n---\n\n# Night Owls\n\n{BODY}")
    assert result.text.count("---\n") == 2 and result.title == "Night Owls"
    # A rule and a paragraph are not front matter.
    text = "---\n\nOwls are birds. They hunt.\n\n---\n\nMore."
    assert clean_article(text).body == text


def test_reasoning_only_at_the_start_is_removed() -> None:
    cleaned = clean_article("<think>\nplan the post\n</think>\n\n# Owls\n\nUse the <think> tag to reason.")
    assert cleaned.title == "Owls" and cleaned.body == "Use the <think> tag to reason."
    assert clean_article("<think>still planning").body == ""


def test_line_endings_and_control_characters_are_normalised() -> None:
    cleaned = clean_article("# Owls\r\n\r\nHoot\x07 hoot.\r\n")
    assert cleaned.title == "Owls" and cleaned.body == "Hoot hoot."


# -- titles and slugs ----------------------------------------------------------------------------------------


def test_markup_and_html_in_the_topic_stay_out_of_title_and_slug() -> None:
    topic = "<@&123> <b>Owls</b> at <i>night</i> <#456> <@!789> <t:1700000000:R> <script>x</script>"
    result = article("No title here.", topic=topic)
    meta, _ = split_file(result.text)
    assert meta["title"] == "Owls at night x" and result.slug == "owls-at-night-x-7"
    assert meta["topic"] == topic  # the request itself is kept as asked
    assert not re.search(r"[<>]|123|456|789", str(meta["title"]) + result.slug)


def test_markup_in_the_model_title_is_cleaned() -> None:
    result = article(
        "# **Owls** & <em>bats</em>: a `night` [guide](https://x.test) <:owl:42> <@&99>:\n\ntext"
    )
    assert result.title == "Owls & bats: a night guide owl"
    assert result.slug == "owls-bats-a-night-guide-owl-7"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@123> hello <@!45> <@&67> <#89>", "hello"),
        ("<t:1700000000> <t:1700000000:F> time", "time"),
        ("<:party:123> and <a:dance:456>", "party and dance"),
        ("<p>Hi &amp; <b>bye</b></p>", "Hi & bye"),
        ("&lt;script&gt;alert(1)&lt;/script&gt; x", "alert(1) x"),
        ("a < b and c > d", "a < b and c > d"),
        ("**bold** *it* _em_ ~~gone~~ `code` snake_case", "bold it em gone code snake_case"),
        ("![alt](img.png) [link](http://x) [ref][1]", "alt link ref"),
        ("  spaced \t out \n title  ", "spaced out title"),
        ("Ends with colon:", "Ends with colon"),
        ("Ends with dash -", "Ends with dash"),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("@everyone look", "look"),
        ("## Heading ##", "Heading"),
    ],
)
def test_clean_title(text: str, expected: str) -> None:
    assert clean_title(text) == expected


def test_clean_title_is_at_most_200_characters_cut_at_a_word() -> None:
    title = clean_title("owl " * 100)
    assert len(title) <= 200 and title.endswith("owl") and not title.endswith(" ")
    assert clean_title("x" * 300) == "x" * 200


def test_slugify() -> None:
    assert slugify("Héllo, Wörld! 2026") == "hello-world-2026"
    assert len(slugify("word " * 40)) <= 60 and not slugify("word " * 40).endswith("-")
    assert slugify("a" * 100) == "a" * 60
    assert slugify("!!!") == "" and slugify("🦉🌙") == ""
    assert slugify("Как выучить Python") == "kak-vyuchit-python"
    assert slugify("東京の夜") and slugify("東京の夜").isascii()


@pytest.mark.parametrize(
    "title",
    ["東京の夜景を楽しむ方法", "Как выучить Python за месяц", "🦉🌙✨", "Ελληνική κουζίνα", "한국어 블로그"],
)
def test_non_latin_titles_give_distinct_nonempty_slugs(title: str) -> None:
    first = article(f"# {title}\n\n{BODY}", topic="night birds", job_id=1)
    second = article(f"# {title}\n\n{BODY}", topic="night birds", job_id=2)
    assert first.title == title
    assert first.slug != second.slug
    for result in (first, second):
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", result.slug), result.slug
        meta, _ = split_file(result.text)
        assert meta["title"] == title and meta["slug"] == result.slug
    if title.startswith("🦉"):
        # Nothing left of the title: the topic's slug, still unique per job.
        assert (first.slug, second.slug) == ("night-birds-1", "night-birds-2")
    else:
        assert not first.slug.startswith("night-birds")


def test_slug_falls_back_to_post() -> None:
    result = article("# 🦉\n\ntext", topic="🌙🌙🌙", job_id=12)
    assert result.slug == "post-12" and result.title == "🦉"
    assert article("text", topic="<@&1> <@&2> <@&3>", job_id=5).slug == "post-5"


# -- counting words ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", 0),
        ("one two  three\nfour", 4),
        ("# Heading\n\n**Bold** and _em_ and `code`.", 6),
        ("- one\n* two\n+ three\n1. four\n10) five\n> - six", 6),
        ("Pi is 3.14, not 3; 1,000 owls.", 7),
        ("Don't can’t won't.", 3),
        ("A well-known state-of-the-art owl.", 4),
        ('See [the docs](https://example.com/a/b?c=d "Title") now.', 4),
        ("Go to https://example.com/owls?x=1 today.", 4),
        ("[1]: https://example.com/ref\nText.", 1),
        ("```python\nprint(owls)\n```", 2),
        ("~~~\nx\n~~~", 1),
        ('<div class="x">Owls</div> &amp; <br/> bats', 2),
        ("東京の夜景", 5),
        ("フクロウ is an owl", 7),
        ("한국어 블로그", 2),
        ("snake_case and __init__", 3),
        ("| a | b |\n|---|---|\n| 1 | 2 |", 4),
        ("--- *** ___ ...", 0),
    ],
)
def test_count_words(text: str, words: int) -> None:
    assert count_words(text) == words


def test_count_words_is_cheap_on_a_long_article() -> None:
    paragraph = "The quick brown fox doesn't jump over 3.14 lazy owls, it [flies](https://x.test). " * 5
    text = "# Title\n\n" + "\n\n".join(f"## Part {i}\n\n{paragraph}" for i in range(90))
    assert 5000 <= count_words(text) <= 6000
    start = time.perf_counter()
    for _ in range(20):
        count_words(clean_article(text).body)
    # Progress recounts a few times a second; 20 recounts of a 5,000-word text must stay well under that.
    assert time.perf_counter() - start < 1.0


# -- request validation --------------------------------------------------------------------------------------


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
    with pytest.raises(InvalidRequest, match="`topic` must be 3 to 300"):
        validate_topic("x" * 301)
    with pytest.raises(InvalidRequest, match="`target_length` must be between 300 and 5000"):
        validate_target_length(299)
    with pytest.raises(InvalidRequest, match="`style` must be one of"):
        validate_choice("style", "poetry", ("technical",))
    with pytest.raises(InvalidRequest, match="at most 10 tags"):
        normalise_tags(",".join(f"t{i}" for i in range(11)))
    assert validate_topic("  owls   at\nnight ") == "owls at night"


@pytest.mark.parametrize(
    "topic",
    [
        "\u200b\u200b\u200b",
        "\ufeff\u2060\u200b\u200d\u200c",
        "\u3000\u00a0 \u2003\u200b",
        "a\u200b\u200b\u200bb",
        "\u2800\u3164\u115f\u200b",
        "\U000e0041\U000e0042\U000e0043",
        "\x00\x01\x1b",
    ],
)
def test_invisible_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidRequest, match="`topic` must be 3 to 300 characters long"):
        validate_topic(topic)


def test_invisible_characters_are_stripped_from_the_topic() -> None:
    assert validate_topic("\u200bo\u200bw\ufeffl\u2060s\u202e") == "owls"
    assert validate_topic("👩\u200d💻 tips") == "👩\u200d💻 tips"  # joiners hold emoji together
    assert validate_topic("東京夜") == "東京夜"


def test_prompt_and_budget_follow_the_request() -> None:
    system, prompt = build_prompt("owls", "tutorial", "friendly", 800, ("birds",))
    assert "owls" in prompt and "about 800 words" in prompt and "birds" in prompt and "step-by-step" in prompt
    assert system
    assert num_predict_for(800) > 800 * 1.3


# -- any output at all ---------------------------------------------------------------------------------------

NASTY = st.sampled_from(
    [
        "# ",
        "## ",
        "\n",
        "\n\n",
        "Title: ",
        "**",
        "__",
        "```markdown\n",
        "```\n",
        "\n```\n",
        "~~~",
        "<think>",
        "</think>",
        "Sure! Here is the blog post:\n",
        "\nI hope this helps!",
        "<@&123>",
        "<b>",
        "---\n",
        "===\n",
        "\u2028",
        "\u0085",
        "\u200b",
        '"',
        "'",
        ": ",
        "東京",
        "🦉",
    ]
)
TEXTS = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60), NASTY),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(raw=TEXTS, topic=TEXTS, job_id=st.integers(min_value=1, max_value=10**9))
@example(raw="# \u2028\n\n```markdown\n# 🦉", topic="\u200b", job_id=1)
@example(raw="Title: **\n\n**", topic="<@&1>", job_id=2)
def test_make_article_always_gives_a_publishable_file(raw: str, topic: str, job_id: int) -> None:
    result = make_article(
        raw, topic=topic, style="casual", tone="friendly", tags=("a",), model="m", now=NOW, job_id=job_id
    )
    meta, body = split_file(result.text)
    assert meta["title"] == result.title and result.title and len(result.title) <= 200
    assert meta["slug"] == result.slug and result.slug.endswith(f"-{job_id}")
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", result.slug)
    assert meta["date"] == datetime.date(2026, 11, 25) and meta["tags"] == ["a"]
    assert meta["topic"] == topic and meta["word_count"] == result.word_count
    assert result.word_count == count_words(clean_article(raw).body)
    if "`" not in raw and "~" not in raw:
        assert h1_lines(body) == []
