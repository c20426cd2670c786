"""A WebSocket client over plain asyncio streams that sends whatever frames
a test asks for, broken ones included, and reads the server's frames as
they are on the wire."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from dataclasses import dataclass

from realtime.wsframe import CLOSE, CONTINUATION, PING, TEXT, unmask


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


def client_frame(
    payload: bytes,
    opcode: int = TEXT,
    *,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    length: int | None = None,
) -> bytes:
    """One client frame; ``length`` overrides the length the header claims."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size <= 0xFFFF:
        head += bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + unmask(mask, payload)


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}

    @classmethod
    async def open(
        cls,
        base_url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        early: bytes = b"",
    ) -> RawSocket:
        """Connect and send the upgrade request, followed in the same write
        by ``early`` bytes; read the response head."""
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        fields = {
            "Host": f"{host}:{port}",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
            "Sec-WebSocket-Version": "13",
        }
        if token is not None:
            fields["Authorization"] = f"Bearer {token}"
        fields.update(headers or {})
        head = "GET /v1/ws HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items() if v is not None
        )
        writer.write((head + "\r\n").encode() + early)
        await writer.drain()
        conn = cls(reader, writer)
        status_line = await asyncio.wait_for(reader.readline(), 5)
        conn.status = int(status_line.split()[1])
        while (line := await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
            name, _, value = line.decode().partition(":")
            conn.headers[name.strip().lower()] = value.strip()
        return conn

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            head = await self.reader.readexactly(2)
            size = head[1] & 0x7F
            if size == 126:
                size = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif size == 127:
                size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            payload = await self.reader.readexactly(size)
        return Frame(bool(head[0] & 0x80), head[0] & 0x0F, payload)

    async def until_close(self, timeout: float = 5.0) -> Frame:
        """Frames up to and including the server's close frame."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.frame()
                if frame.opcode == CLOSE:
                    return frame

    async def eof(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the TCP connection."""
        async with asyncio.timeout(timeout):
            while await self.reader.read(65536):
                pass
        return True

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the server may have reset it
            await self.writer.wait_closed()


#: Frames RFC 6455 forbids a client, by name.
VIOLATIONS = {
    "unmasked": client_frame(b'{"id":1,"method":"ping"}', masked=False),
    "reserved-bit": client_frame(b'{"id":1,"method":"ping"}', rsv=0x40),
    "unknown-opcode": client_frame(b"x", opcode=0x3),
    "long-ping": client_frame(b"x" * 126, opcode=PING),
    "fragmented-ping": client_frame(b"x", opcode=PING, fin=False),
    "lone-continuation": client_frame(b"x", opcode=CONTINUATION),
    "message-inside-a-fragmented-one": client_frame(b"x", fin=False)
    + client_frame(b"y"),
}
