"""Fixtures for socket tests: connected reference clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from protocol.client import SquallClient
from tests.conftest import Running, User

Connect = Callable[..., Awaitable[SquallClient]]


@pytest.fixture
async def connect(app: Running) -> AsyncIterator[Connect]:
    clients: list[SquallClient] = []
    ws_url = app.base_url.replace("http", "ws", 1) + "/v1/ws"

    async def make(user: User, **kwargs: object) -> SquallClient:
        client = SquallClient(ws_url, user.access, **kwargs)  # type: ignore[arg-type]
        await client.connect()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
