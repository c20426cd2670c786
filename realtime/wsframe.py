"""WebSocket framing (RFC 6455 section 5), both directions, without I/O.

Frames a server sends are not masked, and Squall negotiates no extension,
so the bytes of one event's frame are the same for every socket: the hub
builds them once per codec and every socket writes the same object.

Frames a client sends are read by :class:`FrameReader`, which is fed bytes
as they arrive and hands back whole messages. It refuses anything RFC 6455
forbids a client (unmasked frames, reserved bits, unknown opcodes,
fragmented or oversized control frames) and a message over the size limit
as soon as its header says so, before its payload is buffered.
"""

from __future__ import annotations

import struct

_FIN = 0x80
CONTINUATION = 0x0
TEXT = 0x1
BINARY = 0x2
CLOSE = 0x8
PING = 0x9
PONG = 0xA

_DATA = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL = frozenset((CLOSE, PING, PONG))
#: A close frame without a status code reads as this (RFC 6455 7.1.5).
NO_STATUS = 1005


def build_frame(payload: bytes, binary: bool) -> bytes:
    return _frame(BINARY if binary else TEXT, payload)


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    return _frame(opcode, payload[:125])


def close_frame(code: int, reason: str = "") -> bytes:
    # A close frame's payload is at most 125 bytes, of which 2 are the code.
    body = struct.pack("!H", code) + reason.encode()[:123]
    return _frame(CLOSE, body)


def _frame(opcode: int, payload: bytes) -> bytes:
    head = _FIN | opcode
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", head, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", head, 126, size) + payload
    return struct.pack("!BBQ", head, 127, size) + payload


def unmask(mask: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``mask``, as one big-integer
    operation (C speed, no per-byte Python loop)."""
    size = len(data)
    if size == 0:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(data, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(size, "big")


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a received close frame."""
    if not payload:
        return NO_STATUS, ""
    if len(payload) < 2:
        raise FramingError("a close frame's status code is two bytes")
    code = int.from_bytes(payload[:2], "big")
    if (
        code < 1000
        or code in (1004, 1005, 1006, 1015)
        or 1016 <= code < 3000
        or code >= 5000
    ):
        raise FramingError("a close frame carries a reserved status code")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FramingError("a close reason is not UTF-8") from None
    return code, reason


class FramingError(Exception):
    """The peer broke RFC 6455's framing rules."""


class MessageTooBig(Exception):
    """A message is over the reader's size limit."""


class FrameReader:
    """Whole messages out of a byte stream from a client.

    :meth:`feed` adds bytes; :meth:`next_message` returns ``(opcode,
    payload)`` for the next complete data message (fragments joined, opcode
    of the first fragment) or control frame, or None until more bytes come.
    Either raises :class:`FramingError` or :class:`MessageTooBig`; after
    that the stream cannot be read on and the connection must close.
    """

    # One per open socket.
    __slots__ = ("_buf", "_fragments", "_opcode", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._fragments: bytearray | None = None
        self._opcode = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> tuple[int, bytes] | None:
        while True:
            frame = self._next_frame()
            if frame is None:
                return None
            fin, opcode, payload = frame
            if opcode in _CONTROL:
                return opcode, payload
            if opcode != CONTINUATION:
                if fin:
                    return opcode, payload
                self._opcode = opcode
                self._fragments = bytearray(payload)
                continue
            assert self._fragments is not None  # checked with the header
            self._fragments += payload
            if fin:
                whole, self._fragments = bytes(self._fragments), None
                return self._opcode, whole

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        have = len(buf)
        if have < 2:
            return None
        first, second = buf[0], buf[1]
        fin = bool(first & _FIN)
        opcode = first & 0x0F
        if first & 0x70:
            raise FramingError("reserved bits set without an extension")
        if not second & 0x80:
            raise FramingError("client frames must be masked")
        size = second & 0x7F
        start = 2
        if size == 126:
            if have < 4:
                return None
            size = int.from_bytes(buf[2:4], "big")
            start = 4
        elif size == 127:
            if have < 10:
                return None
            size = int.from_bytes(buf[2:10], "big")
            start = 10

        # Everything about the header is judged before its payload is
        # waited for, so an oversized message is refused without buffering.
        if opcode in _CONTROL:
            if not fin or size > 125:
                raise FramingError("control frames are whole and at most 125 bytes")
        elif opcode not in _DATA:
            raise FramingError(f"unknown opcode {opcode:#x}")
        elif opcode == CONTINUATION:
            if self._fragments is None:
                raise FramingError("a continuation frame continues nothing")
            if len(self._fragments) + size > self.max_message:
                raise MessageTooBig
        else:
            if self._fragments is not None:
                raise FramingError("a new message began inside a fragmented one")
            if size > self.max_message:
                raise MessageTooBig

        end = start + 4 + size
        if have < end:
            return None
        mask = bytes(buf[start : start + 4])
        with memoryview(buf) as view:
            payload = unmask(mask, view[start + 4 : end])
        del buf[:end]
        return fin, opcode, payload
