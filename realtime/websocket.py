"""An upgraded socket, run by Squall itself once Tornado's handshake is done.

Tornado parses the HTTP upgrade (`realtime/ws.py`); after the 101 the raw
socket is handed here. Reading is one callback on the event loop and a
:class:`~realtime.wsframe.FrameReader`; writing goes straight to the kernel
and only what the kernel does not take is kept, in one buffer that is the
socket's outbox. An idle socket is then a handful of small objects instead
of Tornado's stream, its buffers and a chain of suspended coroutines, which
is what lets one node hold many thousands of idle phones.

Requests on one socket are handled one at a time, in order: while one
runs, further frames wait in the reader, and reading pauses when they pass
about one frame's worth.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from protocol.close_codes import CloseCode
from realtime.logs import conn_logger
from realtime.wsframe import (
    BINARY,
    CLOSE,
    PING,
    PONG,
    TEXT,
    FrameReader,
    FramingError,
    MessageTooBig,
    close_frame,
    control_frame,
    parse_close,
)

if TYPE_CHECKING:
    from realtime.session import Session

log = conn_logger(__name__)

RECV_BYTES = 64 * 1024
#: How long a closing socket waits for the peer's close frame and for its
#: outbox to drain before the TCP connection is dropped.
CLOSE_TIMEOUT_S = 5.0
PING_FRAME = control_frame(PING)


class WebSocket:
    """One client connection after the upgrade; the session's transport."""

    # One per open socket: no __dict__.
    __slots__ = (
        "_close_timer",
        "_discard",
        "_drain",
        "_fd",
        "_finish_on_flush",
        "_loop",
        "_out",
        "_reader",
        "_reading",
        "_registry",
        "_sock",
        "_task",
        "closed",
        "closing",
        "conn_id",
        "last_pong",
        "session",
    )

    def __init__(
        self,
        sock: socket.socket,
        registry: Sockets,
        conn_id: str,
        max_message: int,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._reader = FrameReader(max_message)
        self._out: bytearray | None = None
        self._reading = False
        self._discard = False
        self._drain = False
        self._finish_on_flush = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._registry = registry
        self.conn_id = conn_id
        self.session: Session | None = None
        #: Our close frame is queued; nothing else will be sent.
        self.closing = False
        #: The TCP connection is gone.
        self.closed = False
        self.last_pong = self._loop.time()

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def start(
        self, session: Session, opening: Coroutine[Any, Any, None], early: bytes
    ) -> None:
        """Begin reading. ``opening`` (authentication) runs before any frame
        is handled; ``early`` is what the client sent right behind its
        upgrade request, already read by the HTTP server."""
        self.session = session
        self._registry.add(self)
        if early:
            self._reader.feed(early)
        self._resume_reading()
        self._run(opening)

    # Output.

    def send_frame(self, frame: bytes) -> int:
        """Send one complete frame; the bytes still queued afterwards."""
        if self.closing:
            return 0
        return self._write(frame)

    def _write(self, data: bytes) -> int:
        out = self._out
        if out is not None:
            out += data
            return len(out)
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._finish()
            return 0
        if sent == len(data):
            return 0
        self._out = out = bytearray(memoryview(data)[sent:])
        self._loop.add_writer(self._fd, self._on_writable)
        return len(out)

    def _on_writable(self) -> None:
        out = self._out
        if out is None:
            return
        try:
            sent = self._sock.send(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish()
            return
        del out[:sent]
        if out:
            return
        self._out = None
        self._loop.remove_writer(self._fd)
        if self._finish_on_flush:
            self._finish()

    @property
    def backlog(self) -> int:
        return len(self._out) if self._out is not None else 0

    def ping(self) -> None:
        if not self.closing:
            self._write(PING_FRAME)

    # Closing.

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake: our close frame goes after whatever is
        queued; the connection ends when the peer answers, or after
        :data:`CLOSE_TIMEOUT_S`."""
        if self.closing or self.closed:
            return
        self.closing = True
        sent = self._registry.closes_sent
        sent[code] = sent.get(code, 0) + 1
        self._write(close_frame(code, reason))
        if not self.closed:
            self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self._finish)

    def close_when_idle(self) -> None:
        """Close with "server restarting" once the request running now (if
        any) has been answered; requests queued behind it are not started,
        so the client retries them elsewhere."""
        if self.closing or self.closed:
            return
        if self._task is None:
            self._close_restarting()
        else:
            self._drain = True

    def _close_restarting(self) -> None:
        self._discard = True
        if self.session is not None:
            self.session.close(CloseCode.SERVER_RESTARTING)
        else:
            self.close(
                CloseCode.SERVER_RESTARTING.code, CloseCode.SERVER_RESTARTING.reason
            )

    def _finish_when_flushed(self) -> None:
        if self._out is None:
            self._finish()
        else:
            self._finish_on_flush = True

    def _finish(self) -> None:
        """Drop the TCP connection and release everything."""
        if self.closed:
            return
        self.closed = True
        self.closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._pause_reading()
        if self._out is not None:
            self._loop.remove_writer(self._fd)
            self._out = None
        # Whatever the peer sent last is read away first: closing a socket
        # with unread input makes the kernel answer with a reset, which can
        # destroy our close frame before the peer has read it.
        try:
            while self._sock.recv(RECV_BYTES):
                pass
        except OSError:
            pass
        self._sock.close()
        self._registry.discard(self)
        if self.session is not None:
            self.session.on_closed()

    # Input.

    def _resume_reading(self) -> None:
        if not self._reading and not self.closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish()
            return
        if not data:
            self._finish()
            return
        if self._discard:
            return
        reader = self._reader
        reader.feed(data)
        if self._task is None:
            self._handle_input()
        elif reader.buffered > reader.max_message + RECV_BYTES:
            # A request is running and the client keeps sending: let TCP
            # push back instead of buffering without end.
            self._pause_reading()

    def _handle_input(self) -> None:
        session = self.session
        assert session is not None
        while self._task is None and not self.closed:
            try:
                message = self._reader.next_message()
            except MessageTooBig:
                self._fail(session, CloseCode.MESSAGE_TOO_BIG)
                return
            except FramingError as exc:
                log.debug(self.conn_id, "framing error: %s", exc)
                self._fail(session, CloseCode.PROTOCOL_VIOLATION)
                return
            if message is None:
                break
            opcode, payload = message
            if opcode in (TEXT, BINARY):
                if self.closing:
                    continue  # the peer has not seen our close frame yet
                if opcode == BINARY:
                    self._run(session.on_frame(payload))
                    continue
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(session, CloseCode.INVALID_PAYLOAD)
                    return
                self._run(session.on_frame(text))
            elif opcode == PING:
                self.send_frame(control_frame(PONG, payload))
            elif opcode == PONG:
                self.last_pong = self._loop.time()
            elif opcode == CLOSE:
                self._on_close_frame(session, payload)
                return
        self._resume_reading()

    def _on_close_frame(self, session: Session, payload: bytes) -> None:
        try:
            code, _ = parse_close(payload)
        except FramingError:
            code = CloseCode.PROTOCOL_VIOLATION.code
        if not self.closing:
            # The peer started the handshake: answer with its code.
            log.debug(self.conn_id, "closed by the peer (%d)", code)
            echo = code if code != 1005 else CloseCode.NORMAL.code
            self._write(close_frame(echo))
            self.closing = True
            self._registry.closed_by_peer += 1
        self._discard = True
        self._finish_when_flushed()

    def _fail(self, session: Session, code: CloseCode) -> None:
        """The input can no longer be read: close with ``code`` and stop
        parsing."""
        self._discard = True
        session.close(code)
        self._finish_when_flushed()

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        self._task = asyncio.ensure_future(self._serve(work))

    async def _serve(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception:
            # Requests are answered one by one inside the session; reaching
            # here means the session is in a state nobody foresaw.
            log.exception(self.conn_id, "session failed")
            if self.session is not None:
                self.session.close(CloseCode.INTERNAL_ERROR)
        self._task = None
        if self._drain:
            self._close_restarting()
        elif not self.closed and not self._discard:
            self._handle_input()


class Sockets:
    """Every open socket of a node, and one heartbeat loop for all of them:
    each interval every socket is pinged, and one that has not answered
    since the interval before last is closed."""

    def __init__(self, ping_interval_s: float) -> None:
        self.interval = ping_interval_s
        self._open: set[WebSocket] = set()
        self._task: asyncio.Task[None] | None = None
        #: Sockets opened since the node started.
        self.opened = 0
        #: Close frames this node started, by close code (an echo of the
        #: peer's code is not counted here: clients choose those).
        self.closes_sent: dict[int, int] = {}
        #: Closing handshakes the peer started.
        self.closed_by_peer = 0

    def __len__(self) -> int:
        return len(self._open)

    def open_sockets(self) -> list[WebSocket]:
        return list(self._open)

    def add(self, conn: WebSocket) -> None:
        self._open.add(conn)
        self.opened += 1
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._beat())

    def discard(self, conn: WebSocket) -> None:
        self._open.discard(conn)

    def close_all(self) -> None:
        """Drop every connection at once (the node is stopping)."""
        for conn in list(self._open):
            conn._finish()
        if self._task is not None:
            self._task.cancel()

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while self._open:
            await asyncio.sleep(self.interval)
            deadline = loop.time() - 1.5 * self.interval
            for conn in list(self._open):
                if conn.closing:
                    continue
                if conn.last_pong < deadline and conn.session is not None:
                    log.info(conn.conn_id, "missed a heartbeat")
                    conn.session.close(CloseCode.INTERNAL_ERROR)
                    continue
                conn.ping()
