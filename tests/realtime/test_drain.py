"""Draining a node: every socket is closed with 1012, spread over the drain
window, after the request it is running has been answered; readiness and
new sockets are refused meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from protocol.client import Closed, SquallClient
from protocol.close_codes import CloseCode
from realtime.drain import drain
from realtime.settings import Settings
from tests.conftest import TEST_SECRET, Running, register_and_login, running_node
from tests.realtime.rawws import RawSocket


@pytest.fixture
async def draining_node(database_url: str, tmp_path: Path) -> AsyncIterator[Running]:
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path,
        jwt_secret=TEST_SECRET,
        drain_s=1.0,
    )
    async with running_node(settings) as node:
        yield node


async def test_drain_closes_sockets_over_the_window_after_running_requests(
    draining_node: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = draining_node
    user = await register_and_login(node, "drained")
    url = node.ws_url
    clients = [SquallClient(url, user.access, reconnect=False) for _ in range(12)]
    for client in clients:
        await client.connect()
    closed_at: dict[int, float] = {}
    loop = asyncio.get_running_loop()

    async def watch(i: int) -> int | None:
        with pytest.raises(Closed) as info:
            await clients[i].next_event(timeout=10, match=lambda e: False)
        closed_at[i] = loop.time()
        return info.value.code

    # One socket is in the middle of a slow request when the drain begins.
    real = node.node.conversations.list_for
    release = asyncio.Event()

    async def slow(user_id: Any) -> Any:
        await release.wait()
        return await real(user_id)

    monkeypatch.setattr(node.node.conversations, "list_for", slow)
    slow_call = asyncio.ensure_future(clients[0].call("conversation.list"))
    await asyncio.sleep(0.1)

    watchers = [asyncio.ensure_future(watch(i)) for i in range(len(clients))]
    draining = asyncio.ensure_future(drain(node.node))
    await asyncio.sleep(0.05)

    # Not ready, and no new sockets, while draining.
    async with node.client() as http:
        r = await http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["draining"] == "yes"
    refused = await RawSocket.open(node.base_url, token=user.access)
    assert refused.status == 503
    await refused.aclose()

    await asyncio.sleep(1.2)
    assert not slow_call.done()  # its socket waits for the answer
    release.set()
    assert (await slow_call)["conversations"] == []
    codes = await asyncio.gather(*watchers)
    await asyncio.wait_for(draining, 15)

    assert codes == [CloseCode.SERVER_RESTARTING.code] * len(clients)
    others = sorted(t for i, t in closed_at.items() if i != 0)
    assert others[-1] - others[0] >= 0.5, "closes were not spread over the window"
    assert len(node.node.connections) == 0
    for client in clients:
        await client.close()
