"""A raw HTTP/1.1 client that reads the response while it is still sending,
to prove that a server refuses a body before it has all of it.

A server that answers early and closes may reset the connection while we
still send; the bytes of its answer that arrived first are kept regardless,
which asyncio's stream reader would not do.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    bytes_sent: int

    def json(self) -> object:
        return orjson.loads(self.body)


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.got_response = asyncio.Event()
        self.closed = asyncio.Event()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        head, sep, body = bytes(self.data).partition(b"\r\n\r\n")
        if sep:
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            if len(body) >= length:
                self.got_response.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.got_response.set()


def _parse(data: bytes, sent: int) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return RawResponse(status, headers, body, sent)


async def stream_post(
    base_url: str,
    path: str,
    headers: dict[str, str],
    *,
    chunk: bytes,
    count: int,
    timeout: float = 10.0,
) -> RawResponse:
    """POST ``count`` chunks with chunked encoding; stop once answered."""
    url = urlsplit(base_url)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Collect, url.hostname, url.port)
    head = f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    transport.write(head.encode())
    sent = 0
    try:
        async with asyncio.timeout(timeout):
            for _ in range(count):
                if proto.got_response.is_set():
                    break
                transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                # Let the kernel buffer drain before writing more.
                while transport.get_write_buffer_size() > 256 * 1024:
                    if proto.got_response.is_set():
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)
            else:
                transport.write(b"0\r\n\r\n")
            await proto.got_response.wait()
    finally:
        transport.close()
    return _parse(bytes(proto.data), sent)
