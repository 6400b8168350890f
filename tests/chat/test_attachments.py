"""Reading attachments into the conversation: the pure parts, with downloads stood in for."""

from __future__ import annotations

import base64
import dataclasses

import httpx
import pytest

from bot.chat.attachments import (
    AttachmentInfo,
    AttachmentReader,
    DownloadFailed,
    TooLarge,
    decode_text,
    download,
    format_size,
    note_line,
    noted,
    render_text_file,
    sniff_image,
    strip_note,
)
from bot.chat.prompt import Turn, build_prompt
from bot.config import ChatConfig
from tests.sample_files import gif, jpeg_header, png


def info(name: str, content_type: str | None = None, size: int = 10) -> AttachmentInfo:
    return AttachmentInfo(name, f"https://cdn.test/{name}", size, content_type)


@pytest.mark.parametrize(
    ("name", "content_type", "kind"),
    [
        ("photo.png", "image/png", "image"),
        ("photo.JPG", None, "image"),
        ("anim.gif", "image/gif", "image"),
        ("pic.webp", "image/webp", "image"),
        ("icon.svg", "image/svg+xml", "other"),
        ("notes.md", None, "text"),
        ("main.py", "text/x-python; charset=utf-8", "text"),
        ("data.json", "application/json", "text"),
        ("README", "text/plain", "text"),
        ("Dockerfile", None, "text"),
        ("paper.pdf", "application/pdf", "other"),
        ("mystery", None, "other"),
    ],
)
def test_kind_by_content_type_and_extension(name: str, content_type: str | None, kind: str) -> None:
    assert info(name, content_type).kind == kind


def test_sniffing_and_decoding() -> None:
    assert sniff_image(png()) == "image/png"
    assert sniff_image(jpeg_header()) == "image/jpeg"
    assert sniff_image(gif()) == "image/gif"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_image(b"<svg/>") is None
    assert decode_text("héllo".encode()) == "héllo"
    assert decode_text(b"\xef\xbb\xbfbom") == "bom"
    assert decode_text(b"\xff\xfe\x00h") is None
    assert decode_text("plain".encode("utf-16")) is None


def test_a_text_file_gets_a_fence_nothing_inside_can_close() -> None:
    assert render_text_file("a.py", "x = 1\n", "py") == "File `a.py`:\n```py\nx = 1\n```"
    rendered = render_text_file("weird`name.md", "```\ncode\n```", "md")
    assert rendered.startswith("File `weird'name.md`:\n````md\n") and rendered.endswith("\n````")


def test_sizes_notes_and_their_removal() -> None:
    assert [format_size(n) for n in (512, 1536, 8 * 1024 * 1024)] == ["512 bytes", "1.5 KB", "8 MB"]
    assert note_line([]) == ""
    line = note_line(["a", "b"])
    assert line == "-# 📎 a; b"
    transform = noted(["a"])
    assert transform("") == ""  # nothing to qualify yet: the wait notice shows instead
    assert transform("Hello") == "-# 📎 a\nHello"
    assert strip_note(transform("Hello")) == "Hello"
    assert strip_note("-# other subtext\nHello") == "-# other subtext\nHello"


class FakeCDN:
    """Downloads from a dict, recording what was asked."""

    def __init__(self, files: dict[str, bytes | Exception]) -> None:
        self.files = files
        self.asked: list[str] = []

    async def __call__(self, url: str, *, limit: int, within: float) -> bytes:
        self.asked.append(url.rsplit("/", 1)[-1])
        data = self.files[url.rsplit("/", 1)[-1]]
        if isinstance(data, Exception):
            raise data
        if len(data) > limit:
            raise TooLarge("over")
        return data


def reader(cdn: FakeCDN, sees: bool, **config: object) -> AttachmentReader:
    async def sees_images(model: str) -> bool:
        return sees

    chat = dataclasses.replace(ChatConfig(), **config)  # type: ignore[arg-type]
    return AttachmentReader(httpx.AsyncClient(), chat, sees_images=sees_images, downloader=cdn)


async def test_images_go_to_a_model_that_sees_newest_first_up_to_the_limit() -> None:
    cdn = FakeCDN({"old.png": png(1, 1), "a.png": png(2, 2), "b.png": png(3, 3), "c.png": png(4, 4)})
    history = [
        Turn("user", "ann", "earlier", (info("old.png", "image/png"),)),
        Turn("assistant", "bot", "ok"),
    ]
    current = Turn("user", "ann", "now", tuple(info(n, "image/png") for n in ("a.png", "b.png", "c.png")))
    read = await reader(cdn, True, max_images=2).read("llava", history, current)
    assert [base64.b64decode(i.data) for i in read.current.images] == [png(2, 2), png(3, 3)]
    assert read.history[0].images == ()
    assert read.history[0].content == "earlier\n\n[Attached image old.png was not included.]"
    assert read.notes == ["I look at 2 images at most; I skipped c.png"]
    assert "c.png" not in cdn.asked and "old.png" not in cdn.asked  # never downloaded


async def test_a_blind_model_gets_placeholders_and_the_question_a_note() -> None:
    cdn = FakeCDN({"a.png": png()})
    read = await reader(cdn, False).read("llama2", [], Turn("user", "ann", "", (info("a.png"),)))
    assert read.current.images == ()
    assert read.current.content == "[Attached image a.png was not included.]"
    assert read.notes == ["llama2 can't see images; I ignored a.png"]
    assert cdn.asked == []


async def test_limits_each_get_a_note_naming_the_file() -> None:
    cdn = FakeCDN(
        {
            "fake.png": b"not an image",
            "gone.txt": DownloadFailed("Discord answered HTTP 404"),
            "latin1.txt": "café".encode("latin-1"),
            "a.txt": b"a" * 60,
            "b.txt": b"b" * 60,
        }
    )
    files = ("fake.png", "gone.txt", "latin1.txt", "a.txt", "b.txt", "huge.txt", "six.txt")
    current = Turn("user", "ann", "q", tuple(info(n, size=10**9 if n == "huge.txt" else 10) for n in files))
    read = await reader(cdn, True, max_attachments=6, max_attachment_chars=100).read("llava", [], current)
    assert read.notes == [
        "I read at most 6 attachments a message; I skipped six.txt",
        "fake.png isn't a PNG, JPEG, WebP or GIF image",
        "I couldn't download gone.txt (Discord answered HTTP 404)",
        "latin1.txt isn't UTF-8 text, so I skipped it",
        "b.txt is 60 characters; I read at most 100 characters of files per message",
        "huge.txt is too large (953.7 MB; my limit is 8 MB)",
    ]
    assert "File `a.txt`" in read.current.content and "b" * 60 not in read.current.content
    assert "huge.txt" not in cdn.asked


async def test_attachments_off_and_history_limits() -> None:
    cdn = FakeCDN({"x.txt": b"x"})
    off = await reader(cdn, True, max_attachments=0).read("m", [], Turn("user", "a", "q", (info("x.txt"),)))
    assert off.notes == ["I don't read attachments here; I ignored x.txt"] and cdn.asked == []
    # Only the turns that can reach the prompt are read.
    history = [Turn("user", "a", f"h{i}", (info("x.txt"),)) for i in range(5)]
    read = await reader(cdn, True, history_messages=2).read("m", history, Turn("user", "a", "q"))
    assert len(cdn.asked) == 2 and read.notes == []
    assert [t.content for t in read.history[:3]] == ["h0", "h1", "h2"]


def test_build_prompt_carries_images() -> None:
    from bot.llm import Image

    image = Image("image/png", "AAAA")
    prompt = build_prompt("sys", [], Turn("user", "a", "q", images=(image,)), max_messages=5, max_chars=100)
    assert prompt.messages[-1].images == (image,)


async def test_download_counts_bytes_whatever_the_declared_size() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/lies":
            return httpx.Response(200, headers={"content-length": "5"}, content=b"x" * 5000)
        if request.url.path == "/missing":
            return httpx.Response(404)
        return httpx.Response(200, content=b"fine")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        assert await download(http, "http://cdn/ok", limit=10, within=5) == b"fine"
        with pytest.raises(TooLarge):
            await download(http, "http://cdn/lies", limit=100, within=5)
        with pytest.raises(DownloadFailed, match="HTTP 404"):
            await download(http, "http://cdn/missing", limit=100, within=5)
