"""Strict msgpack codec and field validators for protocol messages.

Every decoder here takes untrusted bytes. It refuses (with MessageError naming the message,
the field, what was expected and what came) anything that is not exactly a well-formed
message: truncated or trailing bytes, unknown or missing keys, wrong types, lengths or ranges.
msgpack's own size limits are set from the input length, ext types are refused, and nothing
is ever unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import msgpack

from ..errors import MessageError

#: Upper bound on any one decoded message, envelope included.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

Validator = Callable[[str, Any], Any]


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MessageError(f"msgpack ext type {code} is not allowed")


def _unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    # msgpack would keep the last of two equal keys; another decoder might keep the first,
    # so one signature could carry two readings. Refuse the ambiguity.
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MessageError("a map repeats a key")
    return out


def unpack(raw: bytes, what: str) -> Any:
    """Decode one msgpack object from untrusted bytes; MessageError on anything odd."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise MessageError(f"{what}: expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(f"{what}: {len(raw)} bytes is over the {MAX_MESSAGE_BYTES} limit")
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext,
            object_pairs_hook=_unique_map,
        )
    except MessageError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, UnicodeDecodeError) as exc:
        raise MessageError(f"{what}: not one valid msgpack object ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # msgpack raises a few more (OutOfData) from its C core
        raise MessageError(f"{what}: not one valid msgpack object ({type(exc).__name__})") from exc


def pack(obj: Any) -> bytes:
    """Encode with msgpack (bin for bytes, str for text, no ext types)."""
    return msgpack.packb(obj, use_bin_type=True)


def check_keys(what: str, obj: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    """obj must be a map with exactly these keys."""
    if not isinstance(obj, dict):
        raise MessageError(f"{what}: expected a map, got {type(obj).__name__}")
    got = set(obj)
    if got != set(keys):
        missing = sorted(set(keys) - got)
        extra = sorted(str(k) for k in got - set(keys))
        raise MessageError(f"{what}: missing keys {missing}, unexpected keys {extra}")
    return obj


# --- validators: each takes (where, value) and returns the checked value --------------------


def ident() -> Validator:
    """An id usable in an MQTT topic level: 1-64 of [A-Za-z0-9_.-], starting alphanumeric."""

    def check(where: str, v: Any) -> str:
        if not isinstance(v, str) or not _ID_RE.fullmatch(v):
            raise MessageError(f"{where}: expected an id of 1-64 [A-Za-z0-9_.-], got {v!r:.80}")
        return v

    return check


def integer(lo: int, hi: int) -> Validator:
    """An int (not a bool) in [lo, hi]."""

    def check(where: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise MessageError(f"{where}: expected an int, got {type(v).__name__}")
        if not lo <= v <= hi:
            raise MessageError(f"{where}: expected {lo} <= value <= {hi}, got {v}")
        return v

    return check


def number(lo: float, hi: float) -> Validator:
    """A finite float (or int, not bool) in [lo, hi], returned as float."""

    def check(where: str, v: Any) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise MessageError(f"{where}: expected a number, got {type(v).__name__}")
        if not math.isfinite(v) or not lo <= v <= hi:
            raise MessageError(f"{where}: expected a finite number in [{lo}, {hi}], got {v}")
        return float(v)

    return check


def blob(exact: int | None = None, max_len: int | None = None, multiple: int = 1) -> Validator:
    """Bytes of an exact length, or at most max_len and a multiple of `multiple`."""

    def check(where: str, v: Any) -> bytes:
        if not isinstance(v, bytes):
            raise MessageError(f"{where}: expected bytes, got {type(v).__name__}")
        if exact is not None and len(v) != exact:
            raise MessageError(f"{where}: expected {exact} bytes, got {len(v)}")
        if max_len is not None and len(v) > max_len:
            raise MessageError(f"{where}: expected at most {max_len} bytes, got {len(v)}")
        if len(v) % multiple:
            raise MessageError(f"{where}: expected a multiple of {multiple} bytes, got {len(v)}")
        return v

    return check


def choice(*options: str) -> Validator:
    """One of a fixed set of strings."""

    def check(where: str, v: Any) -> str:
        if v not in options or not isinstance(v, str):
            raise MessageError(f"{where}: expected one of {list(options)}, got {v!r:.40}")
        return v

    return check


def array_of(item: Validator, min_len: int, max_len: int) -> Validator:
    """A list of min_len..max_len items, each checked by `item`; returned as a tuple."""

    def check(where: str, v: Any) -> tuple:
        if not isinstance(v, list):
            raise MessageError(f"{where}: expected an array, got {type(v).__name__}")
        if not min_len <= len(v) <= max_len:
            raise MessageError(f"{where}: expected {min_len}..{max_len} items, got {len(v)}")
        return tuple(item(f"{where}[{i}]", x) for i, x in enumerate(v))

    return check
