"""A cheap WebSocket client for load: raw asyncio sockets, no per-frame
parsing of events, and receiver processes that hold thousands of them.

The client speaks just enough RFC 6455 for a Squall node: the upgrade with
a bearer header and the JSON subprotocol, masked frames out (with a zero
mask, which servers accept and which costs nothing), unmasked frames in,
pongs to pings. Frames whose first bytes name the counted event (for
example ``message.new``) are only counted; any other frame is decoded as
JSON and matched to a pending call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.connection
import resource
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

SUBPROTOCOL = "squall.v1.json"
#: Any 16 bytes in base64; the accept header it yields is not checked.
_KEY = "YmVuY2htYXJrLWtleS0wMQ=="
_ZERO_MASK = b"\0\0\0\0"


class HandshakeError(Exception):
    pass


class WsClient(asyncio.Protocol):
    def __init__(
        self,
        host: str,
        port: int,
        token: str,
        marker: bytes = b'"message.new"',
        path: str = "/v1/ws",
    ) -> None:
        self.marker = marker
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.tail = b""
        self.is_open = False
        #: Frames that carried the marker, and other events.
        self.marked = 0
        #: When set, the latency of each marked frame whose text starts
        #: with ``t=<time.monotonic_ns() at sending>``, in nanoseconds.
        self.latencies: list[int] | None = None
        self.other_events: dict[str, int] = {}
        self.close_code: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    # asyncio.Protocol.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_open = False
        if not self.upgraded.done():
            self.upgraded.set_exception(HandshakeError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError("socket closed"))
        self._pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
            self.tail = b""
        if not self.is_open:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self.tail = data
                return
            status = data[: data.find(b"\r\n")]
            if b" 101 " not in status:
                self.upgraded.set_exception(HandshakeError(status.decode()))
                self.abort()
                return
            self.is_open = True
            self.upgraded.set_result(None)
            data = data[end + 4 :]
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        marker = self.marker
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode in (1, 2):
                if data.find(marker, start, min(end, start + 64)) >= 0:
                    self.marked += 1
                    if self.latencies is not None:
                        self._stamp(data, start, end)
                else:
                    self._on_value(data[start:end])
            elif opcode == 9:
                self._send(0xA, data[start:end])
            elif opcode == 8:
                if length >= 2:
                    self.close_code = int.from_bytes(data[start : start + 2], "big")
                self.abort()
                return
            pos = end
        if pos < size:
            self.tail = data[pos:]

    def _stamp(self, data: bytes, start: int, end: int) -> None:
        at = data.find(b'"text":"t=', start, end)
        if at < 0:
            return
        at += 10
        stop = at
        while stop < end and 48 <= data[stop] <= 57:
            stop += 1
        if stop > at:
            assert self.latencies is not None
            self.latencies.append(time.monotonic_ns() - int(data[at:stop]))

    def _on_value(self, payload: bytes) -> None:
        value = orjson.loads(payload)
        future = self._pending.pop(value.get("id"), None)  # type: ignore[arg-type]
        if future is not None:
            if not future.done():
                future.set_result(value)
            return
        kind = str(value.get("event"))
        self.other_events[kind] = self.other_events.get(kind, 0) + 1

    # Sending.

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        self.transport.write(head + _ZERO_MASK + payload)

    def call_nowait(
        self, method: str, params: dict[str, Any] | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a request; the future gets the whole reply frame."""
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[request_id] = future
        frame = {"id": request_id, "method": method, "params": params or {}}
        self._send(0x1, orjson.dumps(frame))
        return future

    async def call(
        self, method: str, params: dict[str, Any] | None = None, limit_s: float = 30
    ) -> Any:
        """The result, or RuntimeError with the error body."""
        reply = await asyncio.wait_for(self.call_nowait(method, params), limit_s)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result")

    def close(self) -> None:
        """A close frame, then the socket; the server need not answer."""
        self._send(0x8, struct.pack("!H", 1000))
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    host: str, port: int, token: str, limit_s: float = 30, **kwargs: Any
) -> WsClient:
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(
            lambda: WsClient(host, port, token, **kwargs), host, port
        ),
        limit_s,
    )
    try:
        await asyncio.wait_for(client.upgraded, limit_s)
    except BaseException:
        client.abort()
        raise
    return client


@dataclass
class Opened:
    clients: list[WsClient] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Seconds from connect to the ready call's reply, per socket.
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0


async def open_many(
    host: str,
    port: int,
    tokens: Sequence[str],
    concurrency: int,
    ready: tuple[str, dict[str, Any]] = ("ping", {}),
    limit_s: float = 600,
    marker: bytes = b'"message.new"',
) -> Opened:
    """Open one socket per token, ``concurrency`` at a time; each counts as
    open when the ``ready`` call (sent right after the upgrade) is answered,
    which a Squall node does only after authenticating the socket and
    subscribing it to its conversations."""
    opened = Opened()
    queue = iter(tokens)
    method, params = ready

    async def worker() -> None:
        for token in queue:
            started = time.perf_counter()
            try:
                client = await connect(host, port, token, marker=marker)
                await client.call(method, params)
            except (OSError, TimeoutError, HandshakeError, RuntimeError) as exc:
                opened.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            opened.latencies.append(time.perf_counter() - started)
            opened.clients.append(client)

    started = time.perf_counter()
    async with asyncio.timeout(limit_s):
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    opened.seconds = time.perf_counter() - started
    return opened


def close_all(clients: Sequence[WsClient]) -> None:
    for client in clients:
        client.close()


# Receiver processes.


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _receiver_main(
    conn: multiprocessing.connection.Connection,
    port: int,
    tokens: list[str],
    concurrency: int,
    marker: bytes,
    samplers: int = 0,
) -> None:
    _raise_nofile()
    asyncio.run(_receiver(conn, port, tokens, concurrency, marker, samplers))


async def _receiver(
    conn: multiprocessing.connection.Connection,
    port: int,
    tokens: list[str],
    concurrency: int,
    marker: bytes,
    samplers: int = 0,
) -> None:
    """Hold sockets and answer the parent's commands: ``expect`` (wait until
    every socket has counted n marked frames), ``counts``, ``stop``."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def readable() -> None:
        try:
            commands.put_nowait(conn.recv())
        except EOFError:
            loop.remove_reader(conn.fileno())
            commands.put_nowait(("stop",))

    loop.add_reader(conn.fileno(), readable)
    opened = await open_many("127.0.0.1", port, tokens, concurrency, marker=marker)
    clients = opened.clients
    for client in clients[:samplers]:
        client.latencies = []
    conn.send(
        (
            "ready",
            {
                "ok": len(clients),
                "failed": len(opened.failures),
                "first_failures": opened.failures[:3],
                "seconds": opened.seconds,
            },
        )
    )

    def counts() -> dict[str, Any]:
        marked = [c.marked for c in clients]
        other: dict[str, int] = {}
        for client in clients:
            for kind, n in client.other_events.items():
                other[kind] = other.get(kind, 0) + n
        return {
            "sockets": len(clients),
            "open": sum(c.is_open for c in clients),
            "marked_total": sum(marked),
            "marked_min": min(marked, default=0),
            "other_events": other,
            "close_codes": sorted({c.close_code for c in clients if c.close_code}),
            "cpu": time.process_time(),
            "latencies_ns": [n for c in clients for n in c.latencies or ()],
        }

    while True:
        command = await commands.get()
        if command[0] == "expect":
            _, count, timeout = command
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if all(c.marked >= count for c in clients):
                    break
                if not any(c.is_open for c in clients):
                    break
                await asyncio.sleep(0.02)
            conn.send(("counts", counts()))
        elif command[0] == "counts":
            conn.send(("counts", counts()))
        elif command[0] == "reset":
            for client in clients:
                if client.latencies is not None:
                    client.latencies.clear()
            conn.send(("reset", {}))
        else:
            close_all(clients)
            await asyncio.sleep(0.2)
            conn.send(("stopped", counts()))
            return


class Receivers:
    """Receiving sockets spread over a few processes of their own, so that
    counting deliveries never shares a CPU-second with the node's
    accounting."""

    def __init__(
        self,
        port: int,
        tokens: Sequence[str],
        processes: int,
        concurrency: int = 50,
        marker: bytes = b'"message.new"',
        samplers: int = 0,
    ) -> None:
        """``samplers`` sockets (spread over the processes) also measure the
        latency of each marked frame; see :meth:`WsClient._stamp`."""
        context = multiprocessing.get_context("spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        processes = max(1, min(processes, len(tokens)))
        for i in range(processes):
            mine, theirs = context.Pipe()
            proc = context.Process(
                target=_receiver_main,
                args=(
                    theirs,
                    port,
                    list(tokens[i::processes]),
                    concurrency,
                    marker,
                    samplers // processes + (i < samplers % processes),
                ),
                daemon=True,
            )
            proc.start()
            theirs.close()
            self._conns.append(mine)
            self._procs.append(proc)

    async def _ask(
        self, message: tuple[Any, ...] | None, limit_s: float
    ) -> list[dict[str, Any]]:
        if message is not None:
            for conn in self._conns:
                conn.send(message)
        loop = asyncio.get_running_loop()
        answers = []
        deadline = time.monotonic() + limit_s
        for conn in self._conns:
            left = max(0.1, deadline - time.monotonic())
            if not await loop.run_in_executor(None, conn.poll, left):
                raise TimeoutError("a receiver process did not answer")
            answers.append(conn.recv()[1])
        return answers

    async def ready(self, limit_s: float = 900) -> dict[str, Any]:
        answers = await self._ask(None, limit_s)
        return {
            "ok": sum(a["ok"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "first_failures": [f for a in answers for f in a["first_failures"]][:3],
            "seconds": max(a["seconds"] for a in answers),
        }

    async def counts(self, limit_s: float = 30) -> dict[str, Any]:
        return _merge(await self._ask(("counts",), limit_s))

    async def reset_latencies(self, limit_s: float = 30) -> None:
        """Forget the latencies measured so far (after a warm-up)."""
        await self._ask(("reset",), limit_s)

    async def expect(self, count: int, limit_s: float) -> dict[str, Any]:
        """Wait until every socket has counted ``count`` marked frames (or
        the timeout passes); the merged counts."""
        return _merge(await self._ask(("expect", count, limit_s), limit_s + 30))

    async def stop(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError):
            await self._ask(("stop",), 30)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)


def _merge(answers: list[dict[str, Any]]) -> dict[str, Any]:
    other: dict[str, int] = {}
    for answer in answers:
        for kind, n in answer["other_events"].items():
            other[kind] = other.get(kind, 0) + n
    return {
        "sockets": sum(a["sockets"] for a in answers),
        "open": sum(a["open"] for a in answers),
        "marked_total": sum(a["marked_total"] for a in answers),
        "marked_min": min(a["marked_min"] for a in answers),
        "other_events": other,
        "close_codes": sorted({c for a in answers for c in a["close_codes"]}),
        "cpu": sum(a["cpu"] for a in answers),
        "latencies_ns": [n for a in answers for n in a.get("latencies_ns", ())],
    }
