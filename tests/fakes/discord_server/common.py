"""Shared pieces of the emulator: constants, Discord-shaped JSON responses and the ``Refusal`` exception."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

API = "/api/v10"
MAX_CONTENT = 2000
MAX_FILES = 10
MAX_UPLOAD = 25 * 1024 * 1024
MAX_EMBEDS = 10
NONCE_WINDOW = 300.0
EPHEMERAL = 64
LOADING = 128
GUILD_CHANNEL_TYPES = (0, 11)  # text channels and public threads
COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")
OPTION_TYPES = {
    1: "subcommand",
    2: "group",
    3: str,
    4: int,
    5: bool,
    6: "user",
    7: "channel",
    8: "role",
    10: float,
}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly application/json: discord.py only parses JSON when the content type has no charset.
    return web.Response(
        status=status, body=json.dumps(data).encode(), content_type="application/json", headers=headers
    )


def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return _json(body, status)


def _form_error(field_name: str, code: str, message: str) -> web.Response:
    """A 50035 with the error under ``field_name``; a dotted name nests (``embeds.0.description``), as
    Discord nests form errors by path (docs: reference.md, "Error Messages")."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(field_name.split(".")):
        errors = {key: errors}
    return _error(400, 50035, "Invalid Form Body", errors)


def not_found() -> web.Response:
    return _error(404, 0, "404: Not Found")


def not_allowed() -> web.Response:
    return _error(405, 0, "405: Method Not Allowed")


def invalid_json() -> web.Response:
    # docs: topics/opcodes-and-status-codes.md, 50109 "The request body contains invalid JSON."
    return _error(400, 50109, "The request body contains invalid JSON.")


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; malformed JSON is a 400 50109 (a 500 would make clients retry)."""
    try:
        return json.loads(await request.read() or b"null")
    except ValueError as exc:
        raise Refusal(invalid_json()) from exc


def _int_query(query: Any, name: str, default: int, low: int, high: int) -> tuple[int, web.Response | None]:
    """An integer query parameter within ``low..high``, or Discord's 50035 for it."""
    raw = query.get(name)
    if raw is None:
        return default, None
    try:
        value = int(raw)
    except ValueError:
        return default, _form_error(name, "NUMBER_TYPE_COERCE", f'Value "{raw}" is not int.')
    if value < low:
        return default, _form_error(
            name, "NUMBER_TYPE_MIN", f"int value should be greater than or equal to {low}."
        )
    if value > high:
        return default, _form_error(
            name, "NUMBER_TYPE_MAX", f"int value should be less than or equal to {high}."
        )
    return value, None


class Refusal(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response
