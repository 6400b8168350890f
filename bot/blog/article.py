"""Blog request validation, the generation prompt, and the finished Markdown file. Pure functions.

The file follows the convention of static site generators (Jekyll, Hugo, Astro), whose layouts render
the title from the front matter:

- YAML front matter first, keys in this order: ``title``, ``slug``, ``date`` (``YYYY-MM-DD``, UTC),
  ``tags`` (a list), ``topic``, ``style``, ``tone``, ``model``, ``generated_at`` (ISO 8601 UTC with
  ``Z``), ``word_count``. Strings are double-quoted (JSON syntax, valid YAML), so every value parses
  back as written.
- The title lives only in the front matter; the body has no H1. A title line the model wrote first
  (``# Title``, ``Title: X``, ``**X**``) is taken out of the body, a heading that repeats the title is
  removed, and any other H1 is demoted to ``##``.
- The slug (and file name, ``<slug>.md``) is the title's, else the topic's, else ``post``, transliterated
  to ASCII, with ``-<job id>`` appended: every job's file name is unique and never empty.

Before that, :func:`clean_article` removes what models wrap around a post: leading reasoning, a preamble
("Sure! Here is a blog post…"), a ```` ```markdown ```` fence around the whole post, a sign-off ("I hope
this helps!"). It errs on the side of keeping text: only short lines at the very start or end that talk
about the post are dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import re
import unicodedata

from slugify import slugify as _python_slugify

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
MAX_TITLE_LENGTH = 200
FALLBACK_TITLE = "Untitled"
FALLBACK_SLUG = "post"
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


@dataclasses.dataclass(frozen=True, slots=True)
class CleanArticle:
    """A model's article with the wrapping removed: the title it wrote (None if none) and the body."""

    title: str | None
    body: str


def validate_topic(topic: str) -> str:
    """The topic with whitespace tidied and invisible characters removed; 3 to 300 characters, at least 3
    of them visible (a topic of zero-width spaces says nothing)."""
    cleaned = " ".join(_strip_invisible(clean_output(topic)).split())
    visible = sum(1 for char in cleaned if not char.isspace() and char not in _JOINERS)
    low, high = TOPIC_LENGTH
    if visible < low:
        raise InvalidRequest(
            f"`topic` must be {low} to {high} characters long (it has {visible} visible characters)."
        )
    if len(cleaned) > high:
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
    job_id: int,
) -> Article:
    """The Markdown file for a finished generation: YAML front matter, then the body (see the module
    docstring for the convention)."""
    cleaned = clean_article(raw_text)
    topic_title = clean_title(topic)
    title = cleaned.title or (topic_title[:1].upper() + topic_title[1:]) or FALLBACK_TITLE
    base = (cleaned.title and slugify(cleaned.title)) or slugify(topic_title) or FALLBACK_SLUG
    slug = f"{base}-{job_id}"
    word_count = count_words(cleaned.body)
    utc = now.astimezone(datetime.UTC)
    generated_at = utc.isoformat(timespec="seconds").replace("+00:00", "Z")
    front_matter = "\n".join(
        [
            "---",
            f"title: {_yaml_string(title)}",
            f"slug: {_yaml_string(slug)}",
            f"date: {utc.date().isoformat()}",
            f"tags: [{', '.join(_yaml_string(tag) for tag in tags)}]",
            f"topic: {_yaml_string(topic)}",
            f"style: {_yaml_string(style)}",
            f"tone: {_yaml_string(tone)}",
            f"model: {_yaml_string(model)}",
            f"generated_at: {_yaml_string(generated_at)}",
            f"word_count: {word_count}",
            "---",
        ]
    )
    text = f"{front_matter}\n\n{cleaned.body}\n" if cleaned.body else f"{front_matter}\n"
    return Article(title=title, slug=slug, text=text, word_count=word_count, generated_at=generated_at)


def clean_article(raw_text: str) -> CleanArticle:
    """The article a model wrote, without what it wrapped around it; cheap enough to run on every
    progress update.

    Control characters and line endings are normalised, leading reasoning is removed, preamble lines
    before the post and sign-off lines after it are dropped, a fence around the whole post is unwrapped,
    the title is taken from the first line (``# Title``, ``Title: X``, ``**Title:** X``, ``Title - X``, or
    a line that is all bold), and the body is left without H1s (see the module docstring).
    """
    lines = hide_reasoning(clean_output(raw_text), final=True).split("\n")
    lines = _drop_sign_off(_drop_preamble(lines))
    unwrapped = _unwrap_fence(lines)
    if unwrapped is not None:
        lines = _drop_sign_off(_drop_preamble(unwrapped))
    own_title, lines = _drop_front_matter(lines)
    title, lines = _take_title(lines)
    title = title or own_title
    body = "\n".join(_fix_headings(lines, title)).rstrip()
    return CleanArticle(title=title, body=_LEADING_BLANK_LINES.sub("", body))


def count_words(text: str) -> int:
    """Words of ``text`` as a reader counts them: Markdown syntax (``#``, ``**``, list markers, link
    targets, fence lines, HTML tags) is not counted; ``3.14``, ``don't`` and ``well-known`` are one word
    each, a URL is one word, and each Chinese or Japanese character is one word.

    A handful of regular-expression passes: a 5,000-word text takes a few milliseconds.
    """
    text = _FENCE_LINES.sub(" ", text)
    text = _LINK_DEFINITION.sub(" ", text)
    text = _LINK_TARGET.sub("] ", text)
    text = _URL.sub(" url ", text)
    text = _HTML.sub(" ", text)
    text = _ENTITY.sub(" ", text)
    text = _LIST_MARKER.sub(" ", text)
    characters = len(_CJK.findall(text))
    if characters:
        text = _CJK.sub(" ", text)
    return characters + len(_WORD.findall(text))


def clean_title(text: str) -> str:
    """A title fit for front matter and a slug: Discord markup (mentions, channels, timestamps; a custom
    emoji becomes its name), HTML and Markdown syntax removed, whitespace collapsed, no trailing ``:`` or
    ``-``, at most 200 characters (cut at a word)."""
    text = html.unescape(text[:_MAX_TITLE_INPUT])
    text = _CUSTOM_EMOJI.sub(r" \1 ", text)
    text = _DISCORD_MARKUP.sub(" ", text)
    text = _HTML.sub("", text)
    text = _MARKDOWN_IMAGE_OR_LINK.sub(r"\1", text)
    text = _HEADING_MARKS.sub("", text.strip())
    text = _MARKDOWN_ESCAPE.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    text = " ".join(_strip_invisible(clean_output(text)).split())
    if len(text) > MAX_TITLE_LENGTH:
        cut = text[: MAX_TITLE_LENGTH + 1]
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut[:MAX_TITLE_LENGTH]
    return _TITLE_END.sub("", text)


def slugify(text: str) -> str:
    """ASCII, lower case, hyphen-separated, at most 60 characters cut at a hyphen; other scripts are
    transliterated (Cyrillic, Greek, kana, kanji...), emoji are dropped. Empty if nothing is left."""
    slug = _python_slugify(text)
    if len(slug) > MAX_SLUG_LENGTH:
        cut = slug[: MAX_SLUG_LENGTH + 1]
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut[:MAX_SLUG_LENGTH]
    return slug.strip("-")


# -- cleaning helpers ------------------------------------------------------------------------------------

# Zero-width joiners hold emoji sequences (and Persian words) together: kept, but not counted as visible.
_JOINERS = "\u200c\u200d"
# Characters that show nothing besides format characters: Hangul fillers, the blank Braille pattern.
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")

_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*([^\s`]*)[^`\n]*$")
# An ATX heading's marks; its text is the rest of the line (see _heading: a regex for the optional closing
# marks would be quadratic on a long run of spaces).
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]|$)")
_FRONT_MATTER_KEY = re.compile(r"^[A-Za-z_][\w-]*:(?:[ \t]|$)")
_FRONT_MATTER_LINE = re.compile(r"^(?:[A-Za-z_][\w-]*:(?:[ \t].*)?|[ \t]+\S.*|-[ \t].*|[ \t]*|#.*)$")
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.+)$", re.IGNORECASE)
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_THEMATIC_BREAK = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
# "Title: X", "**Title:** X", "Title - X" (a dash needs spaces around it: "Title-holders" is a word).
_TITLE_LABEL = re.compile(r"^[#*_ \t]*title[*_ \t]*(?::|[ \t][-–—][ \t])[*_ \t]*(.*)$", re.IGNORECASE)
_ALL_BOLD = re.compile(r"^[ \t]*(\*\*|__)(?!\s)((?:(?!\1).)+)(?<!\s)\1[ \t]*:?[ \t]*$")

# Preamble: a model talking about the post it is about to give ("Sure! Here is a blog post about…").
_INTERJECTION = (
    r"(?:sure(?:\s+thing)?|certainly|absolutely|of\s+course|okay|ok|alright|all\s+right|great|gladly|"
    r"no\s+problem|with\s+pleasure|happy\s+to\s+help)"
)
_POST_WORD = (
    r"(?:post|article|blog|draft|piece|write-?up|essay|guide|tutorial|story|listicle|markdown|version)s?"
)
_PREAMBLE = re.compile(
    rf"""^(?:
        (?:{_INTERJECTION}\b[\s!,.:;—–-]*)+(?:here\s+(?:you\s+go|it\s+is)\b)?[\s!.:]*
      | here\s+(?:you\s+go|it\s+is)\b[\s!.:]*
      | (?:{_INTERJECTION}\b[\s!,.:;—–-]*)*
        (?:here\s+is|here's|here\s+are|below\s+is|below\s+are|below\s+you(?:'ll|\s+will)\s+find|
           the\s+following\s+is|i(?:'ve|\s+have)\s+(?:written|drafted|put\s+together|created|prepared)|
           i(?:'ll|\s+will)\s+write|let\s+me\s+write|i\s+wrote|
           i(?:'d|\s+would)\s+be\s+(?:happy|glad|delighted)\s+to|i'm\s+(?:happy|glad)\s+to)\b
        .*\b{_POST_WORD}\b.*
    )$""",
    re.IGNORECASE | re.VERBOSE,
)
# Sign-off: a model talking to the person who asked, after the post ("I hope this helps!").
_SIGN_OFF = re.compile(
    r"""^(?:
        i\s+hope\s+(?:this|that|it)\s+(?:helps|is\s+helpful|was\s+helpful|meets|works|fits|gives)
      | hope\s+(?:this|that|it)\s+helps
      | let\s+me\s+know\b
      | please\s+let\s+me\s+know\b
      | feel\s+free\b
      | happy\s+(?:coding|writing|reading|blogging|hacking|learning|building|cooking|gardening|travels)\b
      | (?:if\s+you(?:'d|\s+would)\s+like|if\s+you\s+want|would\s+you\s+like|do\s+you\s+want)\s+me\s+to\b
      | should\s+i\b
      | i\s+can\s+(?:also|easily)\b
      | i(?:'d|\s+would)\s+be\s+(?:happy|glad)\s+to\b
      | (?:note|nb)\b\W*(?:this|the)\s+(?:blog\s+)?(?:post|article)\s+(?:is|has|was|contains|comes)\b.*
      | \(?\s*(?:total\s+)?word\s+count\b.*
      | \(?\s*(?:approximately|about|around|roughly|total:?)\s+[\d,]+\s+words\b.*
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_LINE_DECORATION = re.compile(r"^[\s>*_#~`\W]+|[\s*_~`]+$")
_MAX_WRAPPER_WORDS = 40
_MAX_WRAPPER_CHARS = 400
# Only this much of a line is looked at for a title (markup included): the result has at most 200.
_MAX_TITLE_INPUT = 2000

# count_words
_FENCE_LINES = re.compile(r"^[ \t]*(?:`{3,}|~{3,}).*$", re.MULTILINE)
_LINK_DEFINITION = re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*\S.*$", re.MULTILINE)
_LINK_TARGET = re.compile(r"\]\([^()\s]*(?:\s+(?:\"[^\"\n]*\"|'[^'\n]*'))?\)")
_URL = re.compile(r"\b(?:https?|ftp)://[^\s<>]+|\bwww\.[^\s<>]+", re.IGNORECASE)
_HTML = re.compile(r"<!--.{0,200}?-->|</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>", re.DOTALL)
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]\w*);")
_LIST_MARKER = re.compile(r"^[ \t]*(?:>[ \t]*)*(?:[-*+]|\d{1,9}[.)])[ \t]+", re.MULTILINE)
# Scripts written without spaces between words: each character is a word (kana, CJK ideographs).
_CJK = re.compile(
    "[\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    "\U00020000-\U0003134f]"
)
# Letters and digits, joined by an apostrophe, a hyphen, a dot or comma (3.14, 1,000), or underscores.
_WORD = re.compile(r"[^\W_]+(?:(?:['’.,\-]|_+)[^\W_]+)*")

# clean_title
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_DISCORD_MARKUP = re.compile(
    r"<(?:@[!&]?\d+|#\d+|t:-?\d+(?::[A-Za-z])?|/[^<>:\n]+:\d+|id:\w+)>|@everyone|@here"
)
_MARKDOWN_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\](?:\([^)\n]*\)|\[[^\]\n]*\])")
_HEADING_MARKS = re.compile(r"^#{1,6}\s+|\s+#+$")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|~])")
# Emphasis and code marks; underscores only at a word's edge (snake_case stays).
_EMPHASIS = re.compile(r"[*`]+|~~|(?<![^\W_])_+|_+(?![^\W_])")
# Characters a double-quoted YAML scalar must not hold raw (json.dumps already escapes C0 controls).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")
_TITLE_END = re.compile(r"[\s:|–—-]+$")


def _strip_invisible(text: str) -> str:
    """``text`` without format characters (zero-width spaces, BOM, bidi controls, tag characters), other
    controls and blank fillers; zero-width joiners stay (emoji sequences need them)."""
    return "".join(
        char
        for char in text
        if char in _JOINERS
        or (char not in _BLANKS and (unicodedata.category(char) not in ("Cf", "Cc") or char in "\t\n"))
    )


def _plain(line: str) -> str:
    """A line without Markdown decoration and with straight apostrophes, to match wording against."""
    return _LINE_DECORATION.sub("", line.replace("’", "'"))


def _is_wrapper_talk(line: str, pattern: re.Pattern[str]) -> bool:
    """Whether ``line`` is short and matches ``pattern`` (a preamble or a sign-off)."""
    if len(line) > _MAX_WRAPPER_CHARS or len(line.split()) > _MAX_WRAPPER_WORDS:
        return False
    plain = _plain(line)
    return bool(plain) and pattern.match(plain) is not None


def _heading(line: str) -> tuple[int, str] | None:
    """The level and text of an ATX heading (``## Text ##``), else None."""
    match = _ATX_HEADING.match(line)
    if match is None:
        return None
    text = line[match.end() :].strip(" \t")
    without_marks = text.rstrip("#")
    if not without_marks or without_marks[-1] in " \t":
        text = without_marks.rstrip(" \t")
    return len(match.group(1)), text


def _first_content(lines: list[str], start: int = 0) -> int:
    """The index of the first line from ``start`` on that is not blank (``len(lines)`` if none)."""
    return next((index for index in range(start, len(lines)) if lines[index].strip()), len(lines))


def _drop_preamble(lines: list[str]) -> list[str]:
    """Without the lines before the post that talk about it ("Sure! Here is…"), and a rule after them."""
    start = _first_content(lines)
    dropped = False
    while start < len(lines) and _is_wrapper_talk(lines[start], _PREAMBLE):
        dropped = True
        start = _first_content(lines, start + 1)
    if dropped and start < len(lines) and _THEMATIC_BREAK.match(lines[start]):
        start += 1
    return lines[start:]


def _drop_sign_off(lines: list[str]) -> list[str]:
    """Without the lines after the post that talk to the asker ("I hope this helps!"), and a rule before."""
    end = len(lines)
    dropped = False
    while True:
        while end > 0 and not lines[end - 1].strip():
            end -= 1
        if end == 0 or not _is_wrapper_talk(lines[end - 1], _SIGN_OFF):
            break
        dropped = True
        end -= 1
    if dropped and end > 0 and _THEMATIC_BREAK.match(lines[end - 1]):
        end -= 1
    return lines[:end]


def _unwrap_fence(lines: list[str]) -> list[str] | None:
    """The lines inside a fence that wraps the whole post, or None if there is no such fence.

    The fence is ```` ```markdown ```` or ```` ```md ```` (one or two short lines before it are talk about
    the post), or a bare fence around what is clearly Markdown prose. Its closing fence may be missing (the
    text ended); text after it is kept.
    """
    start = _first_content(lines)
    opener = _FENCE.match(lines[start]) if start < len(lines) else None
    if opener is None and start < len(lines) and not _ATX_HEADING.match(lines[start]):
        # "Okay, so I wrote this for you:" then ```markdown: a labelled wrapper makes the lines before talk.
        candidate = start
        for _ in range(2):
            candidate = _first_content(lines, candidate + 1)
            if candidate >= len(lines) or _ATX_HEADING.match(lines[candidate]):
                break
            match = _FENCE.match(lines[candidate])
            if match is not None:
                words = sum(len(line.split()) for line in lines[start:candidate])
                if match.group(2).lower() in ("markdown", "md") and words <= _MAX_WRAPPER_WORDS:
                    start, opener = candidate, match
                break
    if opener is None:
        return None
    fence, language = opener.group(1), opener.group(2).lower()
    if language not in ("markdown", "md", ""):
        return None
    # Pair the fences inside as code blocks: a fence with an info string opens one, a bare fence closes the
    # open one or opens one. Inner blocks come in pairs, so a bare fence left open at the end is the
    # wrapper's closing fence; with none left open, the text ended inside the wrapper.
    inner: tuple[str, int, bool] | None = None  # the open block's fence, line, and whether it was bare
    for index in range(start + 1, len(lines)):
        match = _FENCE.match(lines[index])
        if match is None:
            continue
        marker, info = match.group(1), match.group(2)
        if inner is None:
            inner = (marker, index, not info)
        elif marker[0] == inner[0][0] and len(marker) >= len(inner[0]) and not info:
            inner = None
    if inner is not None and inner[2] and inner[0][0] == fence[0] and len(inner[0]) >= len(fence):
        content, after = lines[start + 1 : inner[1]], lines[inner[1] + 1 :]
    else:
        content, after = lines[start + 1 :], []
    if not language and not _is_prose(content):
        return None
    after = after[_first_content(after) :]
    return [*content, "", *after] if after else content


def _is_prose(lines: list[str]) -> bool:
    """Whether lines in a bare fence are clearly a Markdown article rather than code."""
    headings = prose = 0
    for line in lines:
        stripped = line.strip()
        if _ATX_HEADING.match(line):
            headings += 1
        elif len(stripped.split()) >= 8 and not stripped.startswith(("//", "--", "/*", "*", "<")):
            letters = sum(char.isalpha() or char.isspace() for char in stripped)
            prose += letters >= 0.85 * len(stripped) and not stripped.endswith((";", "{", "}", ")", ","))
    return prose >= 3 or (headings >= 1 and prose >= 2)


def _drop_front_matter(lines: list[str]) -> tuple[str | None, list[str]]:
    """Without front matter the model wrote itself (ours replaces it), and the title it gave there."""
    start = _first_content(lines)
    if start == len(lines) or lines[start].strip() != "---":
        return None, lines
    end = next(
        (
            index
            for index in range(start + 1, min(len(lines), start + 50))
            if lines[index].strip() in ("---", "...")
        ),
        None,
    )
    inner = lines[start + 1 : end]
    if end is None or not any(_FRONT_MATTER_KEY.match(line) for line in inner):
        return None, lines
    if not all(_FRONT_MATTER_LINE.match(line) for line in inner):
        return None, lines
    title = next((match.group(1) for line in inner if (match := _FRONT_MATTER_TITLE.match(line))), "")
    return clean_title(title.strip().strip("\"'")) or None, lines[end + 1 :]


def _take_title(lines: list[str]) -> tuple[str | None, list[str]]:
    """The title written on the first line (cleaned), and the lines after it."""
    start = _first_content(lines)
    if start == len(lines):
        return None, []
    first = lines[start]
    raw: str | None = None
    rest = start + 1
    if (heading := _heading(first)) and heading[0] == 1:
        raw = heading[1]
        if label := _TITLE_LABEL.match(raw):
            raw = label.group(1)
    elif label := _TITLE_LABEL.match(first):
        raw = label.group(1)
    elif bold := _ALL_BOLD.match(first):
        raw = bold.group(2)
    elif rest < len(lines) and _SETEXT_H1.match(lines[rest]) and not _FENCE.match(first):
        raw, rest = first, rest + 1
    title = clean_title(raw) if raw is not None else ""
    if not title:
        return None, lines[start:]
    return title, lines[rest:]


def _fix_headings(lines: list[str], title: str | None) -> list[str]:
    """The body without H1s: a heading repeating the title (an H1 anywhere, any heading first) removed,
    other H1s demoted to ``##``; code blocks are left alone."""
    wanted = title.casefold() if title else None
    out: list[str] = []
    fence: str | None = None
    seen_content = False
    for line in lines:
        match = _FENCE.match(line)
        if match is not None:
            if fence is None:
                fence = match.group(1)
            elif match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
                fence = None
        elif fence is None:
            heading = _heading(line)
            if heading is not None:
                level, text = heading
                if (
                    wanted is not None
                    and (level == 1 or not seen_content)
                    and clean_title(text).casefold() == wanted
                ):
                    continue
                if level == 1:
                    line = f"## {text}"
            elif _SETEXT_H1.match(line) and out and out[-1].strip() and not _FENCE.match(out[-1]):
                if wanted is not None and clean_title(out[-1]).casefold() == wanted:
                    out.pop()
                    continue
                line = "-" * max(3, len(line.strip()))
        if line.strip():
            seen_content = True
        out.append(line)
    return out


def _yaml_string(value: str) -> str:
    """A double-quoted YAML scalar (JSON string syntax is valid YAML).

    JSON leaves some characters raw that YAML does not accept in a file (DEL, C1 controls, lone
    surrogates, U+FFFE/U+FFFF) or reads as line breaks (NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR): those
    are escaped as ``\\uXXXX``.
    """
    return _YAML_UNSAFE.sub(_escape_for_yaml, json.dumps(value, ensure_ascii=False))


def _escape_for_yaml(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"
