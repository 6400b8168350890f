"""Erlang's External Term Format, the subset Discord's gateway speaks with ``encoding=etf``.

Docs: events/gateway.md, "Using ETF Encoding" (and erts' ``erl_ext_dist``): Discord sends map keys as atoms,
strings as binaries, ``null``/``true``/``false`` as the atoms ``nil``/``true``/``false``; a client must send
string (binary) keys, atom keys being a decode error (close 4002).
"""

from __future__ import annotations

import struct
from typing import Any

VERSION = 131
NEW_FLOAT = 70
SMALL_INTEGER = 97
INTEGER = 98
ATOM = 100
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
LARGE_BIG = 111
SMALL_ATOM = 115
MAP = 116
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119
ATOMS = {"nil": None, "null": None, "true": True, "false": False}


class DecodeError(ValueError):
    pass


def encode(term: Any) -> bytes:
    """``term`` (JSON-like: dict, list, str, int, float, bool, None) as ETF."""
    out = bytearray([VERSION])
    _encode(term, out, key=False)
    return bytes(out)


def _atom(name: str, out: bytearray) -> None:
    raw = name.encode()
    out += bytes([SMALL_ATOM_UTF8, len(raw)]) + raw


def _encode(term: Any, out: bytearray, *, key: bool) -> None:
    if term is None:
        _atom("nil", out)
    elif term is True or term is False:
        _atom("true" if term else "false", out)
    elif isinstance(term, int):
        if 0 <= term < 256:
            out += bytes([SMALL_INTEGER, term])
        elif -(2**31) <= term < 2**31:
            out += bytes([INTEGER]) + struct.pack(">i", term)
        else:
            magnitude = abs(term).to_bytes((abs(term).bit_length() + 7) // 8, "little")
            out += bytes([SMALL_BIG, len(magnitude), 1 if term < 0 else 0]) + magnitude
    elif isinstance(term, float):
        out += bytes([NEW_FLOAT]) + struct.pack(">d", term)
    elif isinstance(term, str):
        if key:
            _atom(term, out)
        else:
            raw = term.encode()
            out += bytes([BINARY]) + struct.pack(">I", len(raw)) + raw
    elif isinstance(term, dict):
        out += bytes([MAP]) + struct.pack(">I", len(term))
        for name, value in term.items():
            _encode(str(name), out, key=True)
            _encode(value, out, key=False)
    elif isinstance(term, list | tuple):
        if not term:
            out.append(NIL)
            return
        out += bytes([LIST]) + struct.pack(">I", len(term))
        for item in term:
            _encode(item, out, key=False)
        out.append(NIL)
    else:
        raise TypeError(f"cannot encode {type(term).__name__} as ETF")


def decode(data: bytes) -> Any:
    """A client's payload; atom keys in maps are refused, as Discord refuses them."""
    if not data or data[0] != VERSION:
        raise DecodeError("not ETF (no version byte 131)")
    try:
        term, end = _decode(data, 1)
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise DecodeError(str(exc)) from exc
    if end != len(data):
        raise DecodeError("trailing bytes")
    return term


def _decode(data: bytes, at: int) -> tuple[Any, int]:
    tag = data[at]
    at += 1
    if tag == SMALL_INTEGER:
        return data[at], at + 1
    if tag == INTEGER:
        return struct.unpack_from(">i", data, at)[0], at + 4
    if tag in (SMALL_BIG, LARGE_BIG):
        if tag == SMALL_BIG:
            size, at = data[at], at + 1
        else:
            size, at = struct.unpack_from(">I", data, at)[0], at + 4
        sign = data[at]
        value = int.from_bytes(data[at + 1 : at + 1 + size], "little")
        return (-value if sign else value), at + 1 + size
    if tag == NEW_FLOAT:
        return struct.unpack_from(">d", data, at)[0], at + 8
    if tag in (ATOM, SMALL_ATOM, ATOM_UTF8, SMALL_ATOM_UTF8):
        if tag in (SMALL_ATOM, SMALL_ATOM_UTF8):
            size, at = data[at], at + 1
        else:
            size, at = struct.unpack_from(">H", data, at)[0], at + 2
        name = data[at : at + size].decode()
        return ATOMS.get(name, name), at + size
    if tag == BINARY:
        size = struct.unpack_from(">I", data, at)[0]
        at += 4
        return data[at : at + size].decode(), at + size
    if tag == STRING:  # a list of small integers, as erlpack packs short byte lists
        size = struct.unpack_from(">H", data, at)[0]
        at += 2
        return list(data[at : at + size]), at + size
    if tag == NIL:
        return [], at
    if tag == LIST:
        size = struct.unpack_from(">I", data, at)[0]
        at += 4
        items = []
        for _ in range(size):
            item, at = _decode(data, at)
            items.append(item)
        if data[at] != NIL:
            raise DecodeError("improper list")
        return items, at + 1
    if tag == MAP:
        size = struct.unpack_from(">I", data, at)[0]
        at += 4
        result: dict[str, Any] = {}
        for _ in range(size):
            if data[at] != BINARY:
                raise DecodeError("map keys must be strings (binaries), not atoms")
            key, at = _decode(data, at)
            result[key], at = _decode(data, at)
        return result, at
    raise DecodeError(f"unsupported ETF tag {tag}")
