"""Attachments as chat context: pictures for models that can see them, text files as part of the prompt.

Each message of the conversation (the question and the earlier turns read back) may carry files:

* **Images** (PNG, JPEG, WebP, GIF; by content type or file name, then checked by their first bytes) go
  to the model as images when it can see them (:meth:`bot.llm.pool.BackendPool.sees_images`), at most
  ``max_images`` per prompt, newest first. Otherwise a line in the text says an image was left out.
* **Text files** (``text/*``, JSON/XML/YAML/TOML, and common text and code extensions) are decoded as
  UTF-8 and added to the message's text as a fenced block headed by the file name, while the message's
  ``max_attachment_chars`` allow.
* Anything else, or anything over a limit (``max_attachments`` per message, ``max_attachment_bytes`` per
  file), is left out.

For the question itself, every file left out gets a short note naming it and the reason, shown at the
top of the reply (:func:`note_line`); earlier turns are not noted again. Downloads go through the bot's
one :class:`httpx.AsyncClient`, each under ``attachment_timeout`` and stopped at ``max_attachment_bytes``
whatever size Discord declared. Nothing here raises to the caller: a failed download is a note.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import httpx

from bot.chat.prompt import Turn
from bot.chat.text import clean_output
from bot.config import ChatConfig
from bot.llm import Image

if TYPE_CHECKING:
    import discord

log = logging.getLogger(__name__)

#: How the reply's attachment note starts (Discord "-#" subtext); reading the conversation back, a line
#: starting like this is the bot's note, not part of its answer.
NOTE_PREFIX = "-# 📎 "
_NOTE_LINE = re.compile(rf"\A{re.escape(NOTE_PREFIX)}[^\n]*\n+")
# Downloads at once for one prompt: enough to hide latency, few enough to be polite to the CDN.
_PARALLEL_DOWNLOADS = 4

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif")
_IMAGE_EXTENSIONS = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}
#: File extensions read as text, with the fence's language tag where it differs from the extension.
TEXT_EXTENSIONS: dict[str, str] = {
    **{ext: "" for ext in ("txt", "text", "log", "csv", "tsv", "ini", "cfg", "conf", "env", "rst")},
    **{ext: ext for ext in ("md", "py", "js", "ts", "tsx", "jsx", "json", "toml", "xml", "html", "css")},
    **{ext: ext for ext in ("java", "c", "h", "cpp", "hpp", "cs", "go", "rs", "rb", "php", "swift")},
    **{ext: ext for ext in ("kt", "scala", "lua", "sql", "r", "pl", "dart", "vue", "svelte", "scss")},
    **{ext: ext for ext in ("sh", "bash", "zsh", "ps1", "bat", "dockerfile", "makefile", "tex")},
    "yaml": "yaml",
    "yml": "yaml",
    "markdown": "md",
    "cc": "cpp",
    "hs": "haskell",
    "ex": "elixir",
    "exs": "elixir",
    "m": "objc",
    "mjs": "js",
    "cjs": "js",
    "pyi": "py",
    "diff": "diff",
    "patch": "diff",
}
_TEXT_TYPES = (
    "application/json",
    "application/xml",
    "application/toml",
    "application/yaml",
    "application/x-yaml",
    "application/javascript",
    "application/x-sh",
    "application/sql",
)

Kind = Literal["image", "text", "other"]


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """A file on a Discord message, before it is read: what Discord says about it."""

    filename: str
    url: str
    size: int
    content_type: str | None = None

    @property
    def extension(self) -> str:
        name = self.filename.lower()
        return name.rsplit(".", 1)[-1] if "." in name else name  # "Dockerfile", "Makefile"

    @property
    def media_type(self) -> str:
        """The content type without parameters (``text/plain; charset=utf-8`` → ``text/plain``)."""
        return (self.content_type or "").split(";")[0].strip().lower()

    @property
    def kind(self) -> Kind:
        """What the file looks like from its content type and name (images are checked again once read)."""
        if self.media_type in IMAGE_TYPES or (
            not self.media_type.startswith("text/") and self.extension in _IMAGE_EXTENSIONS
        ):
            return "image"
        if (
            self.media_type.startswith("text/")
            or self.media_type in _TEXT_TYPES
            or self.extension in TEXT_EXTENSIONS
        ):
            return "text"
        return "other"


def attachment_infos(message: discord.Message) -> tuple[AttachmentInfo, ...]:
    """The files of a Discord message."""
    return tuple(
        AttachmentInfo(a.filename, a.url, a.size, a.content_type)
        for a in message.attachments
        if not getattr(a, "is_voice_message", lambda: False)()
    )


class _Downloader(Protocol):
    async def __call__(self, url: str, *, limit: int, within: float) -> bytes: ...


class DownloadFailed(Exception):
    """An attachment could not be downloaded; the message says why, for the note."""


class TooLarge(DownloadFailed):
    """The attachment is over the size limit (declared, or found while downloading)."""


async def download(http: httpx.AsyncClient, url: str, *, limit: int, within: float) -> bytes:
    """The bytes at ``url``: at most ``limit`` of them (else :class:`TooLarge`), within ``within`` seconds.

    The size is counted while the bytes arrive: a missing or wrong ``Content-Length`` changes nothing.
    """
    received = bytearray()
    try:
        async with asyncio.timeout(within):
            async with http.stream("GET", url, timeout=httpx.Timeout(within)) as response:
                if response.status_code != 200:
                    raise DownloadFailed(f"Discord answered HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise TooLarge(f"{int(declared)} bytes")
                async for chunk in response.aiter_bytes():
                    received += chunk
                    if len(received) > limit:
                        raise TooLarge(f"over {limit} bytes")
    except TimeoutError:
        raise DownloadFailed(f"the download took over {within:g} s") from None
    except (httpx.HTTPError, httpx.StreamError) as exc:
        raise DownloadFailed(f"the download failed ({type(exc).__name__})") from exc
    return bytes(received)


def sniff_image(data: bytes) -> str | None:
    """The media type of an image from its first bytes, or None when it is none of the four kinds."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_text(data: bytes) -> str | None:
    """The file as text (UTF-8, a byte-order mark dropped), or None when it is not UTF-8 text."""
    if b"\x00" in data:
        return None  # UTF-16 text and binaries: not something to paste into a prompt
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def render_text_file(filename: str, text: str, extension: str = "") -> str:
    """A text file as it goes into the prompt: its name, then its text in a fence that nothing inside
    can close early."""
    longest = max((len(run) for run in re.findall(r"`{3,}", text)), default=0)
    fence = "`" * max(3, longest + 1)
    language = TEXT_EXTENSIONS.get(extension, "")
    name = filename.replace("`", "'")
    return f"File `{name}`:\n{fence}{language}\n{text.rstrip()}\n{fence}"


def format_size(size: int) -> str:
    """``8388608`` → ``8 MB``, ``1536`` → ``1.5 KB`` (binary units, as Discord shows them)."""
    value = float(size)
    for unit in ("bytes", "KB", "MB"):
        if value < 1024 or unit == "MB":
            text = f"{value:.1f}".removesuffix(".0") if unit != "bytes" else f"{int(value)}"
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def note_line(notes: Sequence[str]) -> str:
    """The notes as the first line of the reply (Discord subtext), or "" when there are none."""
    return f"{NOTE_PREFIX}{'; '.join(notes)}" if notes else ""


def noted(notes: Sequence[str], transform: Callable[[str], str] = clean_output) -> Callable[[str], str]:
    """A reply's text transform that puts the attachment notes on top (once the model has said something:
    until then the reply shows why it is waiting)."""
    line = note_line(notes)
    if not line:
        return transform

    def with_note(text: str) -> str:
        shown = transform(text)
        return f"{line}\n{shown}" if shown.strip() else shown

    return with_note


def strip_note(content: str) -> str:
    """A reply's text without its attachment note (when reading the conversation back)."""
    return _NOTE_LINE.sub("", content, count=1)


@dataclass(frozen=True, slots=True)
class ReadTurns:
    """The conversation with its attachments read, and the notes about the question's files."""

    history: list[Turn]
    current: Turn
    notes: list[str]

    @property
    def images(self) -> int:
        return sum(len(turn.images) for turn in (*self.history, self.current))


@dataclass
class _Plan:
    """What to do with one turn's files."""

    turn: Turn
    noted: bool  # the question: files left out are noted for the reply
    read: list[AttachmentInfo]
    lines: list[str] = dataclasses.field(default_factory=list)
    images: list[Image] = dataclasses.field(default_factory=list)


class AttachmentReader:
    """Reads the files of a conversation into its turns; see the module docstring."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        config: ChatConfig,
        *,
        sees_images: _SeesImages,
        downloader: _Downloader | None = None,
    ) -> None:
        self._config = config
        self._sees_images = sees_images

        async def fetch(url: str, *, limit: int, within: float) -> bytes:
            return await download(http, url, limit=limit, within=within)

        self._download: _Downloader = downloader or fetch

    async def read(self, model: str, history: Sequence[Turn], current: Turn) -> ReadTurns:
        """``history`` and ``current`` with their files read; notes about the files of ``current``."""
        config = self._config
        notes: list[str] = []
        if not any(turn.attachments for turn in (*history, current)):
            return ReadTurns(list(history), current, notes)
        # Only the turns that can make it into the prompt are worth downloading for.
        recent = len(history) - min(len(history), config.history_messages)
        plans = [_Plan(turn, False, []) for turn in history[recent:]]
        plans.append(_Plan(current, True, []))
        for plan in plans:
            files = list(plan.turn.attachments)
            if config.max_attachments == 0:
                plan.lines.extend(f"[Attached file {f.filename} was not included.]" for f in files)
                if plan.noted and files:
                    notes.append(f"I don't read attachments here; I ignored {_names(files)}")
                continue
            plan.read, skipped = files[: config.max_attachments], files[config.max_attachments :]
            if skipped:
                plan.lines.extend(f"[Attached file {f.filename} was not included.]" for f in skipped)
                if plan.noted:
                    notes.append(
                        f"I read at most {config.max_attachments} attachments a message; "
                        f"I skipped {_names(skipped)}"
                    )
        wants_images = any(f.kind == "image" for plan in plans for f in plan.read)
        sees = wants_images and config.max_images > 0 and await self._sees_images(model)
        gate = asyncio.Semaphore(_PARALLEL_DOWNLOADS)
        # Newest first, so the images that fit are the latest ones.
        images_left = config.max_images
        blind: list[str] = []
        over_images: list[str] = []
        for plan in reversed(plans):
            budget = config.max_attachment_chars
            wanted, chosen = [], 0
            for info in plan.read:
                if info.kind == "image":
                    if not sees or chosen >= images_left:
                        continue
                    chosen += 1
                wanted.append(info)
            contents = await asyncio.gather(*(self._fetch(f, gate) for f in wanted))
            fetched = dict(zip(wanted, contents, strict=True))
            for info in plan.read:
                result = fetched.get(info)
                if info.kind == "image" and result is None:
                    plan.lines.append(f"[Attached image {info.filename} was not included.]")
                    if plan.noted:
                        (blind if not sees else over_images).append(info.filename)
                    continue
                assert result is not None
                if isinstance(result, DownloadFailed):
                    self._leave_out(plan, notes, info, _failure(info, result, config))
                    continue
                if info.kind == "image":
                    media_type = sniff_image(result)
                    if media_type is None:
                        self._leave_out(
                            plan, notes, info, f"{info.filename} isn't a PNG, JPEG, WebP or GIF image"
                        )
                        continue
                    plan.images.append(Image(media_type, base64.b64encode(result).decode("ascii")))
                    images_left -= 1
                    continue
                if info.kind == "other":
                    what = f" ({info.media_type})" if info.media_type else ""
                    self._leave_out(
                        plan, notes, info, f"I can only read images and text files, not {info.filename}{what}"
                    )
                    continue
                text = decode_text(result)
                if text is None:
                    self._leave_out(plan, notes, info, f"{info.filename} isn't UTF-8 text, so I skipped it")
                    continue
                if len(text) > budget:
                    limit = f"{config.max_attachment_chars:,}"
                    self._leave_out(
                        plan,
                        notes,
                        info,
                        f"{info.filename} is {len(text):,} characters; I read at most {limit} characters "
                        "of files per message",
                    )
                    continue
                budget -= len(text)
                plan.lines.append(render_text_file(info.filename, text, info.extension))
        if blind:
            reason = "can't see images" if config.max_images > 0 else "isn't shown images here"
            notes.insert(0, f"{model} {reason}; I ignored {', '.join(blind)}")
        if over_images:
            notes.append(f"I look at {config.max_images} images at most; I skipped {', '.join(over_images)}")
        read = [self._merged(plan) for plan in plans]
        return ReadTurns([*history[:recent], *read[:-1]], read[-1], notes)

    async def _fetch(self, info: AttachmentInfo, gate: asyncio.Semaphore) -> bytes | DownloadFailed:
        limit = self._config.max_attachment_bytes
        if info.size > limit:
            return TooLarge(f"{info.size} bytes")
        async with gate:
            try:
                return await self._download(info.url, limit=limit, within=self._config.attachment_timeout)
            except DownloadFailed as exc:
                if not isinstance(exc, TooLarge):
                    log.info("could not download attachment %s: %s", info.filename, exc)
                return exc

    @staticmethod
    def _leave_out(plan: _Plan, notes: list[str], info: AttachmentInfo, note: str) -> None:
        plan.lines.append(f"[Attached file {info.filename} was not included.]")
        if plan.noted:
            notes.append(note)

    @staticmethod
    def _merged(plan: _Plan) -> Turn:
        turn = plan.turn
        content = "\n\n".join(part for part in (turn.content, *plan.lines) if part)
        return dataclasses.replace(turn, content=content, images=(*turn.images, *plan.images))


class _SeesImages(Protocol):
    async def __call__(self, model: str) -> bool: ...


def _names(files: Iterable[AttachmentInfo]) -> str:
    return ", ".join(f.filename for f in files)


def _failure(info: AttachmentInfo, error: DownloadFailed, config: ChatConfig) -> str:
    if isinstance(error, TooLarge):
        limit = format_size(config.max_attachment_bytes)
        if info.size > config.max_attachment_bytes:
            return f"{info.filename} is too large ({format_size(info.size)}; my limit is {limit})"
        return f"{info.filename} is too large (my limit is {limit})"
    return f"I couldn't download {info.filename} ({error})"


__all__ = [
    "NOTE_PREFIX",
    "AttachmentInfo",
    "AttachmentReader",
    "DownloadFailed",
    "ReadTurns",
    "TooLarge",
    "attachment_infos",
    "decode_text",
    "download",
    "format_size",
    "note_line",
    "noted",
    "render_text_file",
    "sniff_image",
    "strip_note",
]
