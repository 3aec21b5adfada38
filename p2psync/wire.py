"""CBOR framing for every RPC connection, with strict decoding.

``cbor2.loads`` accepts trailing bytes, decodes tagged values into datetimes, sets and
bignums, and returns ``Any``. Nothing from a socket reaches protocol logic that way: every
frame goes through :func:`decode_cbor` (size cap, no trailing data, no tags, no duplicate
keys, bounded nesting, only the CBOR types our schemas use) and then through a typed
reader (:class:`Fields`) into a frozen dataclass. Anything else raises :class:`DecodeError`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import cbor2

from .errors import DecodeError

#: Largest frame a server or client accepts: 76 800 bytes of message data plus headroom.
MAX_FRAME_BYTES = 128 * 1024
#: Deepest nesting any schema of ours needs.
MAX_DEPTH = 12
UINT64_MAX = 2**64 - 1
INT64_MIN = -(2**63)
#: The largest integer any field of ours may carry unless it says otherwise: every count,
#: time and id we decode can end up in SQLite, whose integers are signed 64-bit, so a
#: larger value must be refused here as ``bad_request`` rather than overflow there.
INT64_MAX = 2**63 - 1


def _refuse_tag(decoder: object, tag: Any) -> NoReturn:
    raise DecodeError(f"CBOR tag {tag.tag} is not allowed")


class _RefuseEveryTag(Mapping[int, Callable[[Any, bool], NoReturn]]):
    """cbor2 decodes the tags it knows (bignums, dates, sets, self-describe...) without
    asking ``tag_hook``; as its ``semantic_decoders`` this sends every tag to a refusal."""

    def __getitem__(self, tag: int) -> Callable[[Any, bool], NoReturn]:
        def refuse(value: Any, immutable: bool) -> NoReturn:
            raise DecodeError(f"CBOR tag {tag} is not allowed")

        return refuse

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0


_NO_TAGS = _RefuseEveryTag()


def _check_types(value: object, depth: int = 0) -> None:
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise DecodeError("map keys must be text")
        items: Iterable[object] = value.values()
    elif isinstance(value, list):
        items = value
    else:
        _check_scalar(value)
        return
    if value and depth >= MAX_DEPTH:  # its items would sit deeper than allowed
        raise DecodeError("CBOR nested too deeply")
    for item in items:
        # Scalars are checked here rather than by a call each: every request goes
        # through this, and most of its values are scalars.
        kind = type(item)
        if kind is str or kind is bytes or kind is bool or item is None:
            continue
        if kind is int and INT64_MIN <= item <= UINT64_MAX:  # type: ignore[operator]
            continue
        _check_types(item, depth + 1)


def _check_scalar(value: object) -> None:
    if value is None or isinstance(value, bool | str | bytes):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= UINT64_MAX:
            raise DecodeError("integer out of 64-bit range")
        return
    raise DecodeError(f"CBOR value of type {type(value).__name__} is not allowed")


def decode_cbor(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> object:
    """Decode exactly one CBOR item of the allowed types, or raise :class:`DecodeError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("frame must be binary")
    if len(data) > max_bytes:
        raise DecodeError(f"frame of {len(data)} bytes exceeds {max_bytes}")
    if not data:
        raise DecodeError("empty frame")
    stream = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            stream,
            tag_hook=_refuse_tag,
            semantic_decoders=_NO_TAGS,
            allow_duplicate_keys=False,
            # Map keys other than strings are refused while decoding, before they are
            # hashed: tuple keys with colliding hashes cost seconds of CPU per frame.
            strict_hashable_types=True,
            max_depth=MAX_DEPTH + 4,
        ).decode()
    except DecodeError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        if isinstance(exc.__cause__, DecodeError):
            raise exc.__cause__ from None
        raise DecodeError(f"malformed CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise DecodeError(f"{len(data) - stream.tell()} bytes of trailing data")
    _check_types(value)
    return value


def encode_cbor(value: object) -> bytes:
    """Canonical CBOR, so that what is signed is reproducible byte for byte."""
    return cbor2.dumps(value, canonical=True)


class Fields:
    """Typed, bounded reads from a decoded CBOR map, raising :class:`DecodeError`.

    ``where`` names the map in error messages (``"params"``, ``"envelope"``) so a client
    learns exactly which field was wrong.
    """

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise DecodeError(f"{where} must be a map")
        self._map: Mapping[str, object] = value
        self._where = where

    def _get(self, name: str) -> object:
        if name not in self._map:
            raise DecodeError(f"{self._where}.{name} is missing")
        return self._map[name]

    def has(self, name: str) -> bool:
        return self._map.get(name) is not None

    def only(self, *names: str) -> Fields:
        """Refuse fields outside ``names``: a strict schema, not a loose one."""
        unknown = set(self._map) - set(names)
        if unknown:
            raise DecodeError(f"{self._where} has unknown fields {sorted(unknown)}")
        return self

    def uint(self, name: str, *, maximum: int = INT64_MAX) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
            raise DecodeError(f"{self._where}.{name} must be an integer in [0, {maximum}]")
        return value

    def integer(self, name: str, *, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
        value = self._get(name)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise DecodeError(f"{self._where}.{name} must be an integer in [{minimum}, {maximum}]")
        return value

    def text(self, name: str, *, max_len: int = 256) -> str:
        value = self._get(name)
        if not isinstance(value, str) or len(value) > max_len:
            raise DecodeError(f"{self._where}.{name} must be text of at most {max_len} chars")
        return value

    def blob(self, name: str, *, size: int | None = None, max_len: int = MAX_FRAME_BYTES) -> bytes:
        value = self._get(name)
        if not isinstance(value, bytes):
            raise DecodeError(f"{self._where}.{name} must be bytes")
        if size is not None and len(value) != size:
            raise DecodeError(f"{self._where}.{name} must be {size} bytes")
        if len(value) > max_len:
            raise DecodeError(f"{self._where}.{name} exceeds {max_len} bytes")
        return value

    def optional_blob(self, name: str, *, size: int) -> bytes | None:
        return self.blob(name, size=size) if self.has(name) else None

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise DecodeError(f"{self._where}.{name} must be a boolean")
        return value

    def map(self, name: str) -> Fields:
        return Fields(self._get(name), f"{self._where}.{name}")

    def items(self, name: str, *, max_len: int) -> list[object]:
        value = self._get(name)
        if not isinstance(value, list) or len(value) > max_len:
            raise DecodeError(f"{self._where}.{name} must be a list of at most {max_len} items")
        return value

    def blob_list(self, name: str, *, size: int, max_len: int) -> list[bytes]:
        values = self.items(name, max_len=max_len)
        result = [v for v in values if isinstance(v, bytes) and len(v) == size]
        if len(result) != len(values):
            raise DecodeError(f"{self._where}.{name} must hold {size}-byte strings")
        return result

    def rest(self, *exclude: str) -> dict[str, Any]:
        """The fields other than ``exclude`` (error replies carry extra data that way)."""
        return {k: v for k, v in self._map.items() if k not in exclude}

    def raw(self, name: str) -> object:
        return self._get(name)


# --- RPC frames (DESIGN.md §4) ------------------------------------------------------------

MAX_METHOD_LEN = 32


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reply:
    id: int
    result: Any


@dataclass(frozen=True, slots=True)
class ErrorReply:
    id: int | None
    code: str
    message: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notify:
    method: str
    params: dict[str, Any]


Frame = Request | Reply | ErrorReply | Notify


def error_body(code: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
    """A refusal's ``error`` map: its extra ``data`` fields, never over its code or message."""
    return {**data, "code": code, "message": message}


def read_error(fields: Fields) -> tuple[str, str, dict[str, Any]]:
    """The code, message and extra data of the map holding an ``error`` (a reply's, or
    one store's of a batch)."""
    error = fields.map("error")
    return (
        error.text("code", max_len=32),
        error.text("message", max_len=1024),
        error.rest("code", "message"),
    )


def decode_frame(data: bytes, *, max_bytes: int = MAX_FRAME_BYTES) -> Frame:
    """One frame of either direction: request, reply, error reply or push."""
    fields = Fields(decode_cbor(data, max_bytes=max_bytes), "frame")
    if fields.has("method"):
        method = fields.text("method", max_len=MAX_METHOD_LEN)
        params = fields.raw("params") if fields.has("params") else {}
        if not isinstance(params, dict):
            raise DecodeError("frame.params must be a map")
        if fields.has("id"):
            fields.only("id", "method", "params")
            return Request(fields.uint("id"), method, params)
        fields.only("method", "params")
        return Notify(method, params)
    if fields.has("error"):
        fields.only("id", "error")
        return ErrorReply(fields.uint("id") if fields.has("id") else None, *read_error(fields))
    fields.only("id", "result")
    return Reply(fields.uint("id"), fields.raw("result"))


def encode_frame(frame: Frame) -> bytes:
    """A frame's bytes. Not canonical: nothing signs a frame as sent (a signature covers
    the canonical encoding of what it signs, which the receiver computes again), and
    sorting every map's keys made encoding a store's reply take three times as long."""
    match frame:
        case Request(id=rid, method=method, params=params):
            return cbor2.dumps({"id": rid, "method": method, "params": params})
        case Reply(id=rid, result=result):
            return cbor2.dumps({"id": rid, "result": result})
        case ErrorReply(id=rid, code=code, message=message, data=data):
            body = error_body(code, message, data)
            return cbor2.dumps({"error": body} if rid is None else {"id": rid, "error": body})
        case Notify(method=method, params=params):
            return cbor2.dumps({"method": method, "params": params})
    raise TypeError(f"not a frame: {frame!r}")
