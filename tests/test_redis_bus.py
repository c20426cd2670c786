"""The Redis bus carries events between nodes, and tells a node to catch up
from storage when its connection to Redis comes back."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from realtime.redis_bus import RedisBus
from tests.services import REDIS_URL, require_redis


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A redis-server of this test's own, on a spare loopback port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    procs = [start()]
    yield port, procs, start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


async def test_reconnects_and_asks_for_catch_up(own_redis) -> None:  # type: ignore[no-untyped-def]
    """After Redis restarts, the bus resubscribes on its own and tells the
    node to catch up from storage."""
    port, procs, start = own_redis
    url = f"redis://127.0.0.1:{port}/0"
    caught_up = asyncio.Event()
    got: list[bytes] = []
    bus = RedisBus(url, lambda c, p: got.append(p), on_reconnected=caught_up.set)
    sender = RedisBus(url, lambda c, p: None)
    bus.subscribe("conv:x")
    # The server may still be starting: the bus retries on its own.
    bus.start()
    await asyncio.wait_for(bus.connected.wait(), 10)
    try:
        procs[0].kill()
        procs[0].wait(timeout=10)
        await _until(lambda: not bus.connected.is_set(), 10)
        procs.append(start())
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
