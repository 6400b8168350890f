"""Deterministic reply texts and the fake's tokenizer."""

from __future__ import annotations

import hashlib
import re
from typing import Any

_WORDS = re.compile(r"\s*\S+|\s+")
MAX_TOKEN_CHARS = 8

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


def tokenize(text: str) -> list[str]:
    """Split text the way the fake counts tokens: a word with its leading whitespace is one token, a word
    longer than 8 characters is cut into 8-character pieces, and trailing whitespace is a token of its own.
    ``"".join(tokenize(t)) == t`` always."""
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


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def chat_reply(model: str, messages: list[Any]) -> str:
    """A few sentences chosen by a hash of the request: the same request always gets the same text."""
    seed = _seed(model, messages)
    count = 3 + seed % 3
    return " ".join(_SENTENCES[(seed >> (3 * i)) % len(_SENTENCES)] for i in range(count))


def article(prompt: str, num_predict: int | None) -> str:
    """A Markdown article: ``# Title`` first, then sections, about ``num_predict`` tokens long."""
    match = re.search(r"about:\s*(.+)", prompt)
    subject = (match.group(1) if match else prompt).strip().splitlines()[0][:80] or "Something"
    title = subject[:1].upper() + subject[1:]
    budget = int(num_predict * 0.9) if num_predict and num_predict > 0 else 400
    parts = [f"# {title}", "", f"An introduction to {subject}."]
    section = 1
    while len(tokenize("\n".join(parts))) + 40 < budget:
        parts += ["", f"## Part {section}", "", _PARAGRAPH]
        section += 1
    parts += ["", "## Conclusion", "", "That is the whole story."]
    return "\n".join(parts)
