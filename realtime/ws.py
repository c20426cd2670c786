"""The WebSocket endpoint ``/v1/ws``: the HTTP upgrade, in Tornado.

Tornado parses the request and writes the 101; then the raw socket leaves
Tornado for :class:`~realtime.websocket.WebSocket`, which a
:class:`~realtime.session.Session` drives. Only plain TCP is taken over:
TLS ends at the load balancer in front of the nodes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import socket

import tornado.web
from tornado.iostream import IOStream, StreamClosedError

from protocol.close_codes import CloseCode
from protocol.codecs import CODECS, JSON
from realtime.logs import conn_logger
from realtime.node import Node
from realtime.session import Session
from realtime.websocket import WebSocket

log = conn_logger(__name__)

_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    digest = hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()  # noqa: S324
    return base64.b64encode(digest).decode()


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def _take_socket(stream: IOStream) -> tuple[socket.socket, bytes]:
    """The stream's socket, out of Tornado's hands, and the bytes it had
    already read past the upgrade request (a client may send its first
    frame without waiting for the 101)."""
    # Tornado has no public way to hand back read-ahead bytes; the buffer
    # holds unconsumed data from its start. tests/realtime/test_upgrade.py
    # sends a frame in the same packet as the upgrade to keep this honest.
    size: int = getattr(stream, "_read_buffer_size", 0)
    early = bytes(stream._read_buffer[:size]) if size else b""
    sock = stream.socket
    stream.io_loop.remove_handler(sock)
    return sock, early


class SocketHandler(tornado.web.RequestHandler):
    def initialize(self, node: Node) -> None:
        self.node = node

    async def get(self) -> None:
        if self.node.draining:
            # Refused before the upgrade, so the balancer tries another node.
            self._refuse(503, "draining")
            return
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket" or "upgrade" not in [
            part.strip().lower() for part in headers.get("Connection", "").split(",")
        ]:
            self._refuse(400, "Expected a WebSocket upgrade.")
            return
        if headers.get("Sec-WebSocket-Version") != "13":
            self.set_header("Sec-WebSocket-Version", "13")
            self._refuse(426, "WebSocket version 13 only.")
            return
        key = headers.get("Sec-WebSocket-Key", "")
        if not _valid_key(key):
            self._refuse(400, "Missing or malformed Sec-WebSocket-Key.")
            return
        stream = getattr(self.request.connection, "stream", None)
        if type(stream) is not IOStream:
            self._refuse(400, "Sockets are served over plain TCP only.")
            return

        # Everything the session needs from the request is read now: the
        # request, its headers and the bearer token are not kept.
        offered = [
            part.strip()
            for part in headers.get("Sec-WebSocket-Protocol", "").split(",")
            if part.strip()
        ]
        subprotocol = next((name for name in offered if name in CODECS), None)
        bearer = _bearer(headers.get("Authorization"))
        origin_ok = self._origin_allowed(headers.get("Origin"))
        remote_ip = self.request.remote_ip

        self.set_status(101)
        self.clear_header("Content-Type")
        self.set_header("Upgrade", "websocket")
        self.set_header("Connection", "Upgrade")
        self.set_header("Sec-WebSocket-Accept", accept_value(key))
        if subprotocol is not None:
            self.set_header("Sec-WebSocket-Protocol", subprotocol)
        # detach() must follow finish() at once: it stops the HTTP server
        # from reading a next request off what are now WebSocket frames.
        flushed = self.finish()
        stream = self.detach()
        try:
            await flushed
        except StreamClosedError:
            return
        if stream.closed():
            return
        sock, early = _take_socket(stream)

        conn_id = secrets.token_hex(6)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        max_frame = self.node.settings.ws_max_frame_bytes
        conn = WebSocket(sock, self.node.connections, conn_id, max_frame)
        codec = CODECS.get(subprotocol or "", JSON)
        session = Session(self.node, conn, codec, conn_id)
        log.debug(conn_id, "open from %s codec=%s", remote_ip, codec.name)
        if origin_ok:
            opening = session.start(bearer)
        else:
            log.info(conn_id, "refused origin from %s", remote_ip)
            opening = _refuse_origin(session)
        conn.start(session, opening, early)

    def _refuse(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    def _origin_allowed(self, origin: str | None) -> bool:
        # A refused origin still gets the upgrade and then 4005: a browser
        # cannot read the status of a failed handshake, but it can read a
        # close code.
        if origin is None:
            return True  # only browsers send Origin; native clients pass
        allowed = self.node.settings.allowed_origins
        return "*" in allowed or origin in allowed


async def _refuse_origin(session: Session) -> None:
    session.close(CloseCode.FORBIDDEN)


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; "" for a header
    that is present but not a bearer token, None when there is none."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return ""


ROUTE: tuple[str, type[tornado.web.RequestHandler]] = (r"/v1/ws$", SocketHandler)
