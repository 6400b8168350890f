"""Files on messages: the attachment objects Discord gives them, and members' uploads.

``POST /_emulator/messages`` takes ``"attachments": [{"filename", "content_type"?, "data_base64"}]``.
Discord's limits for a member's upload apply: at most 10 files a message (400, 50035
``BASE_TYPE_MAX_LENGTH`` on ``files``) and 10 MiB a file, the limit for members without Nitro in a
server without boosts since 2024 (413, 40005 "Request entity too large", as the bot's own uploads over
its 25 MiB get). Each file gets an attachment object like Discord's (``id, filename, size, url,
proxy_url, content_type``, and ``width``/``height`` for PNG, GIF, JPEG and WebP images) in
MESSAGE_CREATE and the REST message, and its bytes are served back at ``url`` (the emulator's
``/attachments/...`` route, standing in for the CDN).
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import struct
from typing import Any

from tests.fakes.discord_server.common import MAX_FILES, Refusal, _error, _json

#: A member's upload limit (no Nitro, no server boosts).
MEMBER_MAX_UPLOAD = 10 * 1024 * 1024


def parse_member_uploads(raw: Any) -> tuple[list[tuple[str, bytes]], list[str | None]]:
    """The files and content types of a control-API message; a :class:`Refusal` when malformed or over
    Discord's limits."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        raise Refusal(_json({"error": "attachments must be a list"}, 400))
    files: list[tuple[str, bytes]] = []
    content_types: list[str | None] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise Refusal(_json({"error": f"attachments[{index}] must be an object"}, 400))
        filename, content_type = item.get("filename"), item.get("content_type")
        encoded = item.get("data_base64")
        if not isinstance(filename, str) or not filename or "/" in filename:
            raise Refusal(_json({"error": f"attachments[{index}].filename must be a file name"}, 400))
        if content_type is not None and not isinstance(content_type, str):
            raise Refusal(_json({"error": f"attachments[{index}].content_type must be a string"}, 400))
        try:
            blob = base64.b64decode(encoded if isinstance(encoded, str) else "", validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(_json({"error": f"attachments[{index}].data_base64 is not base64"}, 400)) from None
        if len(blob) > MEMBER_MAX_UPLOAD:
            raise Refusal(_error(413, 40005, "Request entity too large"))
        files.append((filename, blob))
        content_types.append(content_type)
    if len(files) > MAX_FILES:
        # The same answer validate_message gives a bot that sends too many files.
        raise Refusal(
            _error(
                400,
                50035,
                "Invalid Form Body",
                {
                    "files": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": f"Must be {MAX_FILES} or fewer in length.",
                            }
                        ]
                    }
                },
            )
        )
    return files, content_types


def attachment_object(
    attachment_id: str, filename: str, blob: bytes, url: str, content_type: str | None = None
) -> dict[str, Any]:
    """The attachment object Discord gives a file: the uploader's content type, else one guessed from
    the name (text as ``; charset=utf-8``, as Discord labels it); image sizes when the header tells."""
    if content_type is None:
        if filename.endswith(".md"):
            content_type = "text/markdown; charset=utf-8"
        else:
            guessed = mimetypes.guess_type(filename)[0] or "application/octet-stream"
            content_type = f"{guessed}; charset=utf-8" if guessed.startswith("text/") else guessed
    attachment: dict[str, Any] = {
        "id": attachment_id,
        "filename": filename,
        "size": len(blob),
        "url": url,
        "proxy_url": url,
        "content_type": content_type,
    }
    size = image_size(blob)
    if size is not None:
        attachment["width"], attachment["height"] = size
    return attachment


def image_size(blob: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, GIF, JPEG or WebP image from its header; None for anything else."""
    if blob.startswith(b"\x89PNG\r\n\x1a\n") and len(blob) >= 24:
        width, height = struct.unpack(">II", blob[16:24])
        return int(width), int(height)
    if blob.startswith((b"GIF87a", b"GIF89a")) and len(blob) >= 10:
        width, height = struct.unpack("<HH", blob[6:10])
        return int(width), int(height)
    if blob.startswith(b"\xff\xd8"):
        return _jpeg_size(blob)
    if blob[:4] == b"RIFF" and blob[8:12] == b"WEBP" and len(blob) >= 30:
        chunk = blob[12:16]
        if chunk == b"VP8X":
            width = int.from_bytes(blob[24:27], "little") + 1
            height = int.from_bytes(blob[27:30], "little") + 1
            return width, height
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", blob[26:30])
            return int(width) & 0x3FFF, int(height) & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(blob[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _jpeg_size(blob: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first start-of-frame marker, which holds the size."""
    index = 2
    while index + 9 < len(blob):
        if blob[index] != 0xFF:
            return None
        marker = blob[index + 1]
        length = int.from_bytes(blob[index + 2 : index + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", blob[index + 5 : index + 9])
            return int(width), int(height)
        index += 2 + length
    return None
