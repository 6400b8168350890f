"""Deterministic reply texts and the fake's tokenizers.

Two tokenizers, both with ``"".join(tokens) == text``:

* :func:`tokenize` (the default, kind): a word with its leading whitespace is one token, words over 8
  characters are cut into 8-character pieces.
* :func:`tokenize_subword` (``subword_tokens=True``, harsh, like real BPE/SentencePiece vocabularies): a
  word of 6 letters or more is cut into deterministic pieces of 2-5 characters (so a chunk can start
  mid-word), every digit is a token of its own, every punctuation character is a token of its own (so a
  URL or a path splits at ``/ . : - _ ? = &``), and a single leading space sticks to the token after it.

A prompt's token count (:func:`count_prompt_tokens`) is the tokens of every message's content plus
:data:`TEMPLATE_TOKENS_PER_MESSAGE` for the chat template around it (ChatML's ``<|im_start|>role\\n`` …
``<|im_end|>\\n`` is 4-5 tokens a message in real vocabularies).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any

Tokenizer = Callable[[str], list[str]]

_WORDS = re.compile(r"\s*\S+|\s+")
MAX_TOKEN_CHARS = 8
#: Template tokens counted around every message of a prompt (role markers, separators).
TEMPLATE_TOKENS_PER_MESSAGE = 4
# Letters (any script) as a run; one digit; one punctuation character; the underscore; whitespace runs (the
# last space before a word is left for the word, as GPT-2's pre-tokenizer does).
_SUBWORD_PIECES = re.compile(r" ?[^\W\d_]+| ?\d| ?[^\w\s]| ?_|\s+(?!\S)|\s+")
SUBWORD_WHOLE_WORD_LETTERS = 5  # words up to this many letters stay one token

_SENTENCES = (
    "That is a good question.",
    "Here is what I know about it.",
    "In short, it depends on the details.",
    "Let me explain step by step.",
    "Most people find the simplest approach works best.",
    "There are a few trade-offs to keep in mind.",
    "I hope this helps.",
    "Feel free to ask a follow-up question.",
)
_PARAGRAPH = (
    "This section explains the idea in plain words, gives an example from practice, and notes the "
    "pitfalls that catch people out the first time they try it."
)
_BLOG_REQUEST = re.compile(r"\bblog[\s-]*posts?\b", re.IGNORECASE)
_SUBJECT = re.compile(r"\babout:?\s*(.+)", re.IGNORECASE)

# What small instruct models (SmolLM2, Qwen2.5-0.5B, Llama-3.2-1B) put around an article when asked for one.
_PREAMBLES = (
    "Sure! Here is a blog post about {subject}:",
    "Certainly! Below is a blog post about {subject}.",
    "Here's a blog post on {subject}:",
    'Of course! Here is your blog post about "{subject}":',
)
_TITLE_STYLES = ("# {title}", "Title: {title}", "**{title}**", None)
_SIGN_OFFS = (None, "I hope this helps!", "Let me know if you'd like any changes.")
#: How many distinct chatty shapes :func:`chatty_article` has (``variant`` is taken modulo this).
CHATTY_VARIANTS = len(_TITLE_STYLES) * 2 * len(_SIGN_OFFS) * len(_PREAMBLES)


def tokenize(text: str, subword: bool = False) -> list[str]:
    """Split text the way the fake counts tokens (``subword=True``: :func:`tokenize_subword`).

    The default rule: a word with its leading whitespace is one token, a word longer than 8 characters is
    cut into 8-character pieces, and trailing whitespace is a token of its own.
    ``"".join(tokenize(t)) == t`` always."""
    if subword:
        return tokenize_subword(text)
    tokens: list[str] = []
    for piece in _WORDS.findall(text):
        stripped = piece.lstrip()
        if len(stripped) <= MAX_TOKEN_CHARS:
            tokens.append(piece)
            continue
        lead = piece[: len(piece) - len(stripped)]
        parts = [stripped[i : i + MAX_TOKEN_CHARS] for i in range(0, len(stripped), MAX_TOKEN_CHARS)]
        tokens.append(lead + parts[0])
        tokens.extend(parts[1:])
    return tokens


def tokenize_subword(text: str) -> list[str]:
    """Sub-word tokens, as real vocabularies give them (see the module docstring).

    ``"".join(tokenize_subword(t)) == t`` always; the same word always splits the same way."""
    tokens: list[str] = []
    for piece in _SUBWORD_PIECES.findall(text):
        letters = piece[1:] if piece.startswith(" ") else piece
        if len(letters) <= SUBWORD_WHOLE_WORD_LETTERS or not letters[0].isalpha():
            tokens.append(piece)
            continue
        parts = _split_word(letters)
        tokens.append(piece[: len(piece) - len(letters)] + parts[0])
        tokens.extend(parts[1:])
    return tokens


@functools.lru_cache(maxsize=65536)
def _split_word(word: str) -> tuple[str, ...]:
    """Pieces of 2-5 characters, their sizes picked by a hash of the word."""
    digest = hashlib.blake2b(word.encode(), digest_size=16).digest()
    pieces: list[str] = []
    start, rest, index = 0, len(word), 0
    while rest > SUBWORD_WHOLE_WORD_LETTERS:
        size = 2 + digest[index % len(digest)] % 4
        index += 1
        if rest - size < 2:
            size = rest - 2
        pieces.append(word[start : start + size])
        start, rest = start + size, rest - size
    pieces.append(word[start:])
    return tuple(pieces)


def tokenizer_for(subword: bool) -> Tokenizer:
    return tokenize_subword if subword else tokenize


def count_prompt_tokens(messages: Sequence[Any], subword: bool = False) -> int:
    """The prompt's token count: each message's content tokens plus :data:`TEMPLATE_TOKENS_PER_MESSAGE`."""
    return sum(message_tokens(message, subword) for message in messages)


#: What one image costs in a prompt: Ollama's estimate for a CLIP image (``server/prompt.go``).
IMAGE_TOKENS = 768


def message_tokens(message: Any, subword: bool = False) -> int:
    """One message's tokens: its text (an OpenAI-style list of parts counts its text parts), the template,
    and :data:`IMAGE_TOKENS` for each image (Ollama ``images``, OpenAI ``image_url`` parts)."""
    content = message.get("content") if isinstance(message, dict) else message
    images = message.get("images") if isinstance(message, dict) else None
    count = len(images) if isinstance(images, list) else 0
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, dict)]
        text = "".join(str(part.get("text") or "") for part in parts if part.get("type") == "text")
        count += sum(1 for part in parts if part.get("type") == "image_url")
    else:
        text = content if isinstance(content, str) else ""
    return len(tokenize(text, subword)) + TEMPLATE_TOKENS_PER_MESSAGE + IMAGE_TOKENS * count


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def chat_reply(model: str, messages: list[Any]) -> str:
    """A few sentences chosen by a hash of the request: the same request always gets the same text."""
    seed = _seed(model, messages)
    count = 3 + seed % 3
    return " ".join(_SENTENCES[(seed >> (3 * i)) % len(_SENTENCES)] for i in range(count))


def asks_for_blog_post(text: str) -> bool:
    """Whether a prompt (or the last user message) asks for a blog post."""
    return bool(_BLOG_REQUEST.search(text))


def subject_of(prompt: str) -> str:
    """What an article is about: the line after ``about:`` (or ``about``), else the prompt's first line."""
    match = _SUBJECT.search(prompt)
    lines = (match.group(1) if match else prompt).strip().splitlines()
    return (lines[0] if lines else "").strip()[:80] or "Something"


def article(prompt: str, num_predict: int | None, tokenizer: Tokenizer = tokenize) -> str:
    """A Markdown article: ``# Title`` first, then sections, about ``num_predict`` tokens long."""
    subject = subject_of(prompt)
    title = subject[:1].upper() + subject[1:]
    return "\n".join(_article_lines(subject, [f"# {title}", ""], [], num_predict, tokenizer))


def chatty_article(
    prompt: str, num_predict: int | None, tokenizer: Tokenizer = tokenize, variant: int | None = None
) -> str:
    """An article the way small instruct models write one (``variant``: by a hash of the prompt if None).

    A preamble line ("Sure! Here is a blog post about X:"), then a ``# Title``, ``Title: X``, ``**X**`` or no
    title, sometimes the whole article inside a ```` ```markdown ```` fence, sometimes a sign-off line;
    about ``num_predict`` tokens long in all."""
    number = (_seed("chatty", prompt) if variant is None else variant) % CHATTY_VARIANTS
    title_style = _TITLE_STYLES[number % len(_TITLE_STYLES)]
    fenced = (number // len(_TITLE_STYLES)) % 2 == 1
    sign_off = _SIGN_OFFS[(number // (2 * len(_TITLE_STYLES))) % len(_SIGN_OFFS)]
    preamble = _PREAMBLES[number // (2 * len(_TITLE_STYLES) * len(_SIGN_OFFS))]
    subject = subject_of(prompt)
    title = subject[:1].upper() + subject[1:]
    head = [preamble.format(subject=subject), ""]
    if fenced:
        head.append("```markdown")
    if title_style is not None:
        head += [title_style.format(title=title), ""]
    tail = ["```"] if fenced else []
    if sign_off is not None:
        tail += ["", sign_off]
    return "\n".join(_article_lines(subject, head, tail, num_predict, tokenizer))


def _article_lines(
    subject: str, head: list[str], tail: list[str], num_predict: int | None, tokenizer: Tokenizer
) -> list[str]:
    budget = int(num_predict * 0.9) if num_predict and num_predict > 0 else 400
    body = [f"An introduction to {subject}."]
    ending = ["", "## Conclusion", "", "That is the whole story."]
    section = 1
    while len(tokenizer("\n".join(head + body + ending + tail))) + 40 < budget:
        body += ["", f"## Part {section}", "", _PARAGRAPH]
        section += 1
    return head + body + ending + tail
