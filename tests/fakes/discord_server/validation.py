"""Message bodies as Discord validates them; a refusal is a 400 50035 whose ``errors`` nest by path.

docs: resources/message.md ("Create Message": content ≤ 2000, ≤ 10 embeds, ≤ 10 files; "Embed Limits";
"Allowed Mentions Object": parse ∈ {roles, users, everyone}, ≤ 100 ids, parse and a list of the same kind
are exclusive), components/reference.md (≤ 5 action rows of ≤ 5 buttons; custom_id ≤ 100, label ≤ 80;
link buttons have a url and no custom_id, the others the reverse), reference.md ("Error Messages").
"""

from __future__ import annotations

from typing import Any

from tests.fakes.discord_server.common import MAX_CONTENT, MAX_EMBEDS, MAX_FILES, Refusal, _error, _form_error

EMBED_LIMITS = {"title": 256, "description": 4096}
FIELD_LIMITS = {"name": 256, "value": 1024}
MAX_FIELDS = 25
EMBED_TOTAL = 6000
MENTION_TYPES = ("roles", "users", "everyone")


def _too_long(path: str, limit: int) -> Refusal:
    return Refusal(_form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."))


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def validate_embeds(embeds: Any) -> None:
    if not isinstance(embeds, list):
        raise Refusal(_form_error("embeds", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"))
    if len(embeds) > MAX_EMBEDS:
        raise _too_long("embeds", MAX_EMBEDS)
    total = 0
    for index, embed in enumerate(embeds):
        path = f"embeds.{index}"
        if not isinstance(embed, dict):
            raise Refusal(
                _form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            )
        for key, limit in EMBED_LIMITS.items():
            text = _text(embed.get(key))
            if len(text) > limit:
                raise _too_long(f"{path}.{key}", limit)
            total += len(text)
        fields = embed.get("fields") or []
        if len(fields) > MAX_FIELDS:
            raise _too_long(f"{path}.fields", MAX_FIELDS)
        for number, item in enumerate(fields):
            for key, limit in FIELD_LIMITS.items():
                text = _text(item.get(key))
                if not text:
                    raise Refusal(
                        _form_error(
                            f"{path}.fields.{number}.{key}", "BASE_TYPE_REQUIRED", "This field is required"
                        )
                    )
                if len(text) > limit:
                    raise _too_long(f"{path}.fields.{number}.{key}", limit)
                total += len(text)
        for key, inner, limit in (("footer", "text", 2048), ("author", "name", 256)):
            text = _text((embed.get(key) or {}).get(inner))
            if len(text) > limit:
                raise _too_long(f"{path}.{key}.{inner}", limit)
            total += len(text)
    if total > EMBED_TOTAL:
        raise Refusal(
            _form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Embed size exceeds maximum size of {EMBED_TOTAL}")
        )


def validate_allowed_mentions(allowed: Any) -> None:
    if allowed is None:
        return
    if not isinstance(allowed, dict):
        raise Refusal(
            _form_error(
                "allowed_mentions", "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType"
            )
        )
    parse = allowed.get("parse") or []
    for index, kind in enumerate(parse):
        if kind not in MENTION_TYPES:
            raise Refusal(
                _form_error(
                    f"allowed_mentions.parse.{index}",
                    "BASE_TYPE_CHOICES",
                    "Value must be one of ('roles', 'users', 'everyone').",
                )
            )
    for kind in ("users", "roles"):
        ids = allowed.get(kind) or []
        if len(ids) > 100:
            raise _too_long(f"allowed_mentions.{kind}", 100)
        if ids and kind in parse:
            raise Refusal(
                _form_error(
                    "allowed_mentions",
                    "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                    f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                )
            )


def validate_components(components: Any) -> None:
    if not isinstance(components, list):
        raise Refusal(
            _form_error("components", "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
        )
    if len(components) > 5:
        raise _too_long("components", 5)
    custom_ids: set[str] = set()
    for row_index, row in enumerate(components):
        path = f"components.{row_index}"
        if not isinstance(row, dict) or row.get("type") != 1:
            # Components V2 (flag 1<<15) top-level types are not modelled; only action rows.
            raise Refusal(
                _form_error(
                    f"{path}.type", "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).'
                )
            )
        children = row.get("components") or []
        if not 1 <= len(children) <= 5:
            raise Refusal(
                _form_error(
                    f"{path}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length."
                )
            )
        for index, button in enumerate(children):
            at = f"{path}.components.{index}"
            if not isinstance(button, dict) or button.get("type") not in (2, 3, 5, 6, 7, 8):
                raise Refusal(
                    _form_error(f"{at}.type", "BASE_TYPE_CHOICES", "Value must be a component type.")
                )
            if button["type"] != 2:
                if len(children) != 1:
                    raise Refusal(
                        _form_error(f"{path}.components", "BASE_TYPE_BAD_LENGTH", "Must be 1 in length.")
                    )
            elif button.get("style") not in (1, 2, 3, 4, 5, 6):
                raise Refusal(
                    _form_error(
                        f"{at}.style", "BASE_TYPE_CHOICES", "Value must be one of (1, 2, 3, 4, 5, 6)."
                    )
                )
            elif len(str(button.get("label") or "")) > 80:
                raise _too_long(f"{at}.label", 80)
            elif button["style"] == 5:
                if not button.get("url") or button.get("custom_id"):
                    raise Refusal(
                        _form_error(f"{at}.url", "BUTTON_COMPONENT_URL_REQUIRED", "A url is required")
                    )
                continue
            elif button["style"] == 6:
                continue  # premium buttons carry a sku_id
            custom_id = button.get("custom_id")
            if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
                raise Refusal(
                    _form_error(
                        f"{at}.custom_id", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
                    )
                )
            if custom_id in custom_ids:
                raise Refusal(
                    _form_error(
                        f"{at}.custom_id",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                )
            custom_ids.add(custom_id)


def validate_message(payload: dict[str, Any], files: list[tuple[str, bytes]], *, require_body: bool) -> None:
    """Raise a :class:`Refusal` carrying Discord's answer if Discord would refuse this message body."""
    content = payload.get("content")
    if content is not None and not isinstance(content, str):
        raise Refusal(_form_error("content", "BASE_TYPE_STRING", "Must be a string."))
    if content is not None and len(content) > MAX_CONTENT:
        raise _too_long("content", MAX_CONTENT)
    embeds = payload.get("embeds") or []
    validate_embeds(embeds)
    validate_allowed_mentions(payload.get("allowed_mentions"))
    components = payload.get("components") or []
    validate_components(components)
    if len(files) > MAX_FILES:
        raise _too_long("files", MAX_FILES)
    if (
        require_body
        and not (content or "").strip()
        and not embeds
        and not files
        and not components
        and not payload.get("sticker_ids")
        and not payload.get("poll")
    ):
        raise Refusal(_error(400, 50006, "Cannot send an empty message"))
