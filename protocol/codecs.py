"""Frame codecs: JSON on text frames, MessagePack on binary frames.

Both carry the same JSON-compatible values (ids and times as strings), so
an event is turned into a plain value once and then encoded once per codec.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgpack
import orjson

JSON_SUBPROTOCOL = "squall.v1.json"
MSGPACK_SUBPROTOCOL = "squall.v1.msgpack"


class DecodeError(ValueError):
    """A frame that is not a value of its codec."""


class Codec(Protocol):
    name: str
    subprotocol: str
    binary: bool

    def encode(self, value: Any) -> bytes: ...

    def decode(self, frame: bytes | str) -> Any: ...


class JsonCodec:
    name = "json"
    subprotocol = JSON_SUBPROTOCOL
    binary = False

    def encode(self, value: Any) -> bytes:
        return orjson.dumps(value)

    def decode(self, frame: bytes | str) -> Any:
        try:
            return orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise DecodeError("invalid JSON") from exc


class MsgpackCodec:
    name = "msgpack"
    subprotocol = MSGPACK_SUBPROTOCOL
    binary = True

    def encode(self, value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]

    def decode(self, frame: bytes | str) -> Any:
        if isinstance(frame, str):
            raise DecodeError("MessagePack frames are binary")
        try:
            # Strings only as map keys, and no extension types: the same
            # values JSON can carry.
            return msgpack.unpackb(
                frame, raw=False, strict_map_key=True, ext_hook=_no_ext
            )
        except (
            ValueError,
            msgpack.ExtraData,
            msgpack.FormatError,
            msgpack.StackError,
        ) as exc:
            raise DecodeError("invalid MessagePack") from exc


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("extension types are not accepted")


JSON = JsonCodec()
MSGPACK = MsgpackCodec()
CODECS: dict[str, Codec] = {JSON.subprotocol: JSON, MSGPACK.subprotocol: MSGPACK}
