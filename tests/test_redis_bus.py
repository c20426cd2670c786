"""The Redis bus carries events between nodes, and tells a node to catch up
from storage when its connection to Redis comes back."""

from __future__ import annotations

import asyncio
import uuid

from realtime.redis_bus import RedisBus
from tests.services import REDIS_URL, RedisServer, require_redis


async def _until(condition: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_events_cross_nodes_only_where_subscribed() -> None:
    """A node receives a channel's events only while it subscribes to it, and
    never the echo of its own."""
    await require_redis()
    prefix = f"squall-test-{uuid.uuid4().hex[:8]}:"
    got_a: list[tuple[str, bytes]] = []
    got_b: list[tuple[str, bytes]] = []
    confirmed: list[str] = []
    a = RedisBus(REDIS_URL, lambda c, p: got_a.append((c, p)), prefix=prefix)
    b = RedisBus(
        REDIS_URL,
        lambda c, p: got_b.append((c, p)),
        prefix=prefix,
        on_subscribed=confirmed.append,
    )
    a.start()
    b.start()
    try:
        await asyncio.wait_for(a.connected.wait(), 5)
        await asyncio.wait_for(b.connected.wait(), 5)
        a.subscribe("conv:1")
        b.subscribe("conv:1")
        await _until(lambda: "conv:1" in confirmed)
        await asyncio.sleep(0.1)
        await a.publish("conv:1", b"one")
        await a.publish("conv:2", b"two")
        await _until(lambda: got_b)
        await asyncio.sleep(0.1)
        assert got_b == [("conv:1", b"one")]
        assert got_a == []  # its own publish comes back, and is skipped
        b.unsubscribe("conv:1")
        await asyncio.sleep(0.2)
        await a.publish("conv:1", b"three")
        await asyncio.sleep(0.2)
        assert got_b == [("conv:1", b"one")]
    finally:
        await a.close()
        await b.close()


async def test_nothing_is_published_once_closed() -> None:
    """What a closing node still publishes is dropped, rather than opening a
    Redis connection that nobody would close."""
    await require_redis()
    bus = RedisBus(REDIS_URL, lambda c, p: None, prefix="squall-test-closed:")
    bus.start()
    await asyncio.wait_for(bus.connected.wait(), 5)
    await bus.publish("conv:1", b"before")
    await bus.close()
    await bus.publish("conv:1", b"after")
    assert bus.published == 1
    pool = bus._publisher.connection_pool
    assert not pool._in_use_connections  # type: ignore[attr-defined]
    assert all(
        not c.is_connected
        for c in pool._available_connections  # type: ignore[attr-defined]
    )


async def test_reconnects_and_asks_for_catch_up(own_redis: RedisServer) -> None:
    """After Redis restarts, the bus resubscribes on its own and tells the
    node to catch up from storage."""
    url = own_redis.url
    caught_up = asyncio.Event()
    got: list[bytes] = []
    bus = RedisBus(url, lambda c, p: got.append(p), on_reconnected=caught_up.set)
    sender = RedisBus(url, lambda c, p: None)
    bus.subscribe("conv:x")
    # The server may still be starting: the bus retries on its own.
    bus.start()
    await asyncio.wait_for(bus.connected.wait(), 10)
    try:
        own_redis.kill()
        await _until(lambda: not bus.connected.is_set(), 10)
        own_redis.start()
        await asyncio.wait_for(caught_up.wait(), 15)
        assert bus.reconnects == 1
        await sender.publish("conv:x", b"after")
        await _until(lambda: got == [b"after"], 5)
    finally:
        await bus.close()
        await sender.close()


async def test_close_returns_even_if_a_call_swallows_its_cancellation() -> None:
    """Stopping a node does not hang on the bus when a library call under it
    eats the cancellation (asyncio.wait_for on Python 3.11 can, when what it
    waits for finishes at the moment it is cancelled)."""
    await require_redis()
    bus = RedisBus(REDIS_URL, lambda c, p: None, prefix=f"squall-test-{uuid.uuid4()}:")
    entered = asyncio.Event()

    async def swallowing_sync() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            return  # as if the call had finished at that very moment

    bus._sync = swallowing_sync  # type: ignore[method-assign]
    bus.start()
    await asyncio.wait_for(bus.connected.wait(), 5)
    bus.subscribe("conv:1")
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(bus.close(), 10)
    assert all(task.done() for task in bus._tasks)
