"""Fixtures for socket tests: connected reference clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from protocol.client import SquallClient
from protocol.codecs import JSON_SUBPROTOCOL
from tests.conftest import Running, User
from tests.realtime.rawws import RawSocket

Connect = Callable[..., Awaitable[SquallClient]]


@pytest.fixture
async def connect(app: Running) -> AsyncIterator[Connect]:
    clients: list[SquallClient] = []

    async def make(user: User, **kwargs: object) -> SquallClient:
        client = SquallClient(app.ws_url, user.access, **kwargs)  # type: ignore[arg-type]
        # Kept before connecting, so that a failed connect is closed too.
        clients.append(client)
        await client.connect()
        return client

    yield make
    for client in clients:
        await client.close()


# Raw sockets: for frames the reference client would never send.

RawConnect = Callable[..., Awaitable[WebSocketClientConnection]]


@pytest.fixture
async def raw(app: Running) -> AsyncIterator[RawConnect]:
    """Open plain Tornado WebSocket connections; all closed after the test."""
    conns: list[WebSocketClientConnection] = []

    async def make(
        token: str | None = None,
        *,
        subprotocol: str = JSON_SUBPROTOCOL,
        headers: dict[str, str] | None = None,
    ) -> WebSocketClientConnection:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        request = HTTPRequest(app.ws_url, headers=all_headers)
        conn = await websocket_connect(request, subprotocols=[subprotocol])
        conns.append(conn)
        return conn

    yield make
    for conn in conns:
        conn.close()


async def receive(
    conn: WebSocketClientConnection, timeout: float = 5.0
) -> dict[str, Any]:
    """The next frame of a JSON socket, decoded; fails if the socket closed."""
    frame = await asyncio.wait_for(conn.read_message(), timeout)
    assert frame is not None, f"closed with {conn.close_code}"
    value: dict[str, Any] = orjson.loads(frame)
    return value


async def reply_to(
    conn: WebSocketClientConnection, request_id: object, timeout: float = 5.0
) -> dict[str, Any]:
    """The reply with ``request_id``, skipping events pushed meanwhile."""
    async with asyncio.timeout(timeout):
        while True:
            value = await receive(conn)
            if "event" not in value and value.get("id") == request_id:
                return value


async def close_code(conn: WebSocketClientConnection, timeout: float = 5.0) -> int:
    """Read until the server closes the socket; its close code."""
    async with asyncio.timeout(timeout):
        while await conn.read_message() is not None:
            pass
    assert conn.close_code is not None, "closed without a close frame"
    return conn.close_code


async def login(app: Running, user: User) -> User:
    """A second, independent session of ``user``."""
    async with app.client() as http:
        r = await http.post(
            "/v1/auth/login",
            json={"username": user.username, "password": user.password},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    return replace(
        user,
        access=body["access_token"],
        refresh=body["refresh_token"],
        session_id=body["session_id"],
    )


# Sockets on the wire: any bytes, broken frames included.

WireConnect = Callable[..., Awaitable[RawSocket]]


@pytest.fixture
async def wire(app: Running) -> AsyncIterator[WireConnect]:
    """Open :class:`RawSocket` connections to the node; closed after the test."""
    opened: list[RawSocket] = []

    async def make(**kwargs: Any) -> RawSocket:
        conn = await RawSocket.open(app.base_url, **kwargs)
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        await conn.aclose()
