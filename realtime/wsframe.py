"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once.

Frames a server sends are not masked, and Squall negotiates no extension,
so the bytes of one event's frame are the same for every socket: the hub
builds them once per codec and every socket writes the same object.
"""

from __future__ import annotations

import struct

_FIN = 0x80
TEXT = 0x1
BINARY = 0x2


def build_frame(payload: bytes, binary: bool) -> bytes:
    head = _FIN | (BINARY if binary else TEXT)
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", head, size) + payload
    if size <= 0xFFFF:
        return struct.pack("!BBH", head, 126, size) + payload
    return struct.pack("!BBQ", head, 127, size) + payload
