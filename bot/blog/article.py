"""Blog request validation, the generation prompt, and the finished Markdown file. Pure functions."""

from __future__ import annotations

import datetime
import json
import re
import unicodedata

from bot.blog.store import Article
from bot.chat.text import clean_output, hide_reasoning

STYLES = ("technical", "casual", "tutorial", "opinion", "listicle", "storytelling")
TONES = ("professional", "friendly", "humorous", "academic", "enthusiastic", "neutral")
TOPIC_LENGTH = (3, 300)
TARGET_LENGTH = (300, 5000)
DEFAULT_TARGET_LENGTH = 1500
MAX_TAGS = 10
MAX_TAG_LENGTH = 30
MAX_SLUG_LENGTH = 60
# Models use ~1.3 tokens per English word; the margin lets the article end where the model wants it to.
TOKENS_PER_WORD = 1.5
EXTRA_TOKENS = 200

_STYLE_GUIDANCE = {
    "technical": "precise and detailed, with concrete examples and code or configuration where it helps",
    "casual": "relaxed and conversational, like a post on a personal blog",
    "tutorial": "a step-by-step guide with numbered steps, prerequisites and a short recap",
    "opinion": "a clear thesis argued with evidence, acknowledging the strongest counter-arguments",
    "listicle": "a numbered list of well-developed points, each with its own heading",
    "storytelling": "a narrative that carries the reader from a concrete situation to the lesson",
}


class InvalidRequest(ValueError):
    """A ``/blog`` option is not acceptable; the message says which and why."""


def validate_topic(topic: str) -> str:
    """The topic with whitespace tidied; between 3 and 300 characters."""
    cleaned = " ".join(clean_output(topic).split())
    low, high = TOPIC_LENGTH
    if not low <= len(cleaned) <= high:
        raise InvalidRequest(f"`topic` must be {low} to {high} characters long (it has {len(cleaned)}).")
    return cleaned


def validate_target_length(words: int) -> int:
    low, high = TARGET_LENGTH
    if not low <= words <= high:
        raise InvalidRequest(f"`target_length` must be between {low} and {high} words (got {words}).")
    return words


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(choices)} (got {value!r}).")
    return value


def normalise_tags(raw: str | None) -> tuple[str, ...]:
    """``"Python, async IO,#python"`` → ``("python", "async-io")``: lower case, hyphens, no duplicates."""
    if not raw:
        return ()
    tags: list[str] = []
    for part in raw.split(","):
        tag = re.sub(r"[^\w\-+.]+", "-", clean_output(part).strip().lstrip("#").lower()).strip("-")
        if not tag:
            continue
        if len(tag) > MAX_TAG_LENGTH:
            raise InvalidRequest(
                f"each tag must be at most {MAX_TAG_LENGTH} characters (`{tag[:40]}…` is longer)."
            )
        if tag not in tags:
            tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} tags, please (got {len(tags)}).")
    return tuple(tags)


def num_predict_for(target_length: int) -> int:
    """The token budget for an article of about ``target_length`` words."""
    return int(target_length * TOKENS_PER_WORD) + EXTRA_TOKENS


def build_prompt(
    topic: str, style: str, tone: str, target_length: int, tags: tuple[str, ...]
) -> tuple[str, str]:
    """The system prompt and the prompt for one article."""
    system = (
        "You are an experienced writer who produces complete, well-structured blog posts in Markdown. "
        "You never explain what you are about to do; you write the post itself."
    )
    keywords = f"Work these keywords in naturally: {', '.join(tags)}.\n" if tags else ""
    prompt = (
        f"Write a blog post about: {topic}\n\n"
        f"Style: {style} — {_STYLE_GUIDANCE.get(style, style)}.\n"
        f"Tone: {tone}.\n"
        f"Length: about {target_length} words.\n"
        f"{keywords}\n"
        "Structure:\n"
        "- Start with the title on the first line as a level-1 heading (`# Title`).\n"
        "- An introduction that says why the topic matters.\n"
        "- Several sections with `##` headings; use lists, tables or code blocks where they help.\n"
        "- A conclusion with the key takeaways.\n"
        "Write only the post, in Markdown."
    )
    return system, prompt


def make_article(
    raw_text: str,
    *,
    topic: str,
    style: str,
    tone: str,
    tags: tuple[str, ...],
    model: str,
    now: datetime.datetime,
) -> Article:
    """The Markdown file for a finished generation: YAML front matter, then the article."""
    body = hide_reasoning(clean_output(raw_text), final=True).strip()
    title, body = _split_title(body, fallback=topic)
    word_count = len(re.findall(r"\w+", body))
    slug = slugify(title) or slugify(topic) or "blog-post"
    generated_at = now.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    front_matter = "\n".join(
        [
            "---",
            f"title: {_yaml_string(title)}",
            f"slug: {_yaml_string(slug)}",
            f"topic: {_yaml_string(topic)}",
            f"tags: [{', '.join(_yaml_string(tag) for tag in tags)}]",
            f"style: {_yaml_string(style)}",
            f"tone: {_yaml_string(tone)}",
            f"model: {_yaml_string(model)}",
            f"generated_at: {_yaml_string(generated_at)}",
            f"word_count: {word_count}",
            "---",
        ]
    )
    text = f"{front_matter}\n\n# {title}\n\n{body}\n" if body else f"{front_matter}\n\n# {title}\n"
    return Article(title=title, slug=slug, text=text, word_count=word_count, generated_at=generated_at)


def slugify(text: str) -> str:
    """ASCII, lower case, hyphen-separated, at most 60 characters, cut at a word."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > MAX_SLUG_LENGTH:
        slug = slug[:MAX_SLUG_LENGTH].rsplit("-", 1)[0]
    return slug


def _split_title(body: str, *, fallback: str) -> tuple[str, str]:
    """The ``# Title`` line (if the model wrote one) and the rest of the article."""
    first, _, rest = body.partition("\n")
    match = re.fullmatch(r"#\s+(.+?)\s*#*\s*", first)
    if match:
        return match.group(1).strip()[:200], rest.strip()
    return fallback[:1].upper() + fallback[1:], body


def _yaml_string(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML).

    YAML also treats NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR as line breaks, which JSON leaves raw.
    """
    encoded = json.dumps(value, ensure_ascii=False)
    return encoded.replace("\u0085", "\\x85").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
