"""The WebSocket endpoint ``/v1/ws``: Tornado on the outside, a
:class:`~realtime.session.Session` inside."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

import tornado.web
import tornado.websocket
from tornado.httputil import HTTPHeaders
from tornado.iostream import IOStream, StreamClosedError

from protocol.close_codes import CloseCode
from protocol.codecs import CODECS, JSON
from realtime.node import Node
from realtime.session import Session

logger = logging.getLogger(__name__)

#: Shared by every open socket in place of its upgrade request's headers;
#: nothing writes to a request's headers after the handshake.
_NO_HEADERS = HTTPHeaders()


class SocketHandler(tornado.websocket.WebSocketHandler):
    node: Node
    session: Session | None = None

    def initialize(self, node: Node, heartbeat: Heartbeat) -> None:
        self.node = node
        self.heartbeat = heartbeat
        self.last_pong = 0.0

    def on_pong(self, data: bytes) -> None:
        self.last_pong = asyncio.get_running_loop().time()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if self.node.draining:
            # Refused before the upgrade, so the balancer tries another node.
            self.set_status(503)
            self.finish("draining")
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        # Refused after the upgrade instead (4005): a browser cannot read an
        # HTTP status of a failed handshake, but it can read a close code.
        return True

    def _origin_allowed(self) -> bool:
        origin = self.request.headers.get("Origin")
        if origin is None:
            return True  # only browsers send Origin; native clients pass
        allowed = self.node.settings.allowed_origins
        return "*" in allowed or origin in allowed

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        for name in subprotocols:
            if name in CODECS:
                return name
        return None

    def get_compression_options(self) -> dict[str, Any] | None:
        # No per-message deflate: every socket must get the same bytes.
        return None

    async def open(self, *args: str, **kwargs: str) -> None:
        if not self._origin_allowed():
            logger.info("refused origin from %s", self.request.remote_ip)
            self.close(CloseCode.FORBIDDEN.code, CloseCode.FORBIDDEN.reason)
            return
        # A reply and the event it caused go out back to back; without this
        # the second waits for a delayed ACK (tens of milliseconds).
        self.set_nodelay(True)
        codec = CODECS.get(self.selected_subprotocol or "", JSON)
        conn_id = secrets.token_hex(6)
        self.session = Session(self.node, self, codec, conn_id)
        logger.debug(
            "conn=%s open from %s codec=%s", conn_id, self.request.remote_ip, codec.name
        )
        bearer = None
        header = self.request.headers.get("Authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
            else:
                bearer = ""
        # The upgrade's headers (the token among them) and the template
        # helpers of an HTTP handler are not needed again: drop them rather
        # than keep them for the socket's life.
        self.request.headers = _NO_HEADERS
        self._break_cycles()
        self.last_pong = asyncio.get_running_loop().time()
        self.heartbeat.ensure_running()
        await self.session.start(bearer)

    async def on_message(self, message: str | bytes) -> None:
        if self.session is None:
            return
        try:
            await self.session.on_frame(message)
        except Exception:
            # Requests are answered one by one inside; reaching here means
            # the session itself is in a state we did not foresee.
            logger.exception("conn=%s session failed", self.session.conn_id)
            self.session.close(CloseCode.INTERNAL_ERROR)

    def on_close(self) -> None:
        if self.session is not None:
            self.session.on_closed()

    # Transport, for the session.

    def send_frame(self, frame: bytes) -> int:
        # The frame is complete and shared by every socket of an event. When
        # nothing is queued it goes straight to the kernel: no copy into the
        # stream's buffer, no future, no callback per delivery.
        conn = self.ws_connection
        if conn is None or conn.is_closing() or conn.stream is None:
            return 0
        stream = conn.stream
        if stream.closed():
            return 0
        data: bytes | memoryview = frame
        try:
            if not stream.writing() and type(stream) is IOStream:
                try:
                    sent = stream.socket.send(frame)
                except BlockingIOError:
                    sent = 0
                if sent == len(frame):
                    return 0
                data = memoryview(frame)[sent:]
            stream.write(data)
        except (StreamClosedError, OSError):
            return 0
        return len(stream._write_buffer)

    def close(self, code: int | None = None, reason: str | None = None) -> None:
        super().close(code, reason)


def websocket_settings(node: Node) -> dict[str, Any]:
    # No websocket_ping_interval: Tornado would run a task per socket for
    # it; one node-wide loop (Heartbeat) does the same for all of them.
    return {"websocket_max_message_size": node.settings.ws_max_frame_bytes}


class Heartbeat:
    """Pings every authenticated socket of the node each interval and closes
    those that did not answer the previous ping: one loop for the node
    instead of a task and a timer per socket."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.interval = node.settings.ws_ping_interval_s
        self._task: asyncio.Task[None] | None = None

    def ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())
            self.node.background.append(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            deadline = now - 1.5 * self.interval
            for session in list(self.node.sockets):
                handler = session.transport
                if not isinstance(handler, SocketHandler):
                    continue
                if handler.last_pong < deadline:
                    logger.info("conn=%s missed a heartbeat", session.conn_id)
                    session.close(CloseCode.INTERNAL_ERROR)
                    continue
                try:
                    handler.ping()
                except tornado.websocket.WebSocketClosedError:
                    continue


ROUTE: tuple[str, type[tornado.web.RequestHandler]] = (r"/v1/ws$", SocketHandler)
