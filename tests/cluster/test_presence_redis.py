"""Cluster presence on the real Redis, without sockets: every flip of a
user's presence is published exactly once in the whole cluster, whichever
nodes hold the user and however they stop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from realtime.presence_redis import RedisPresence
from tests.services import REDIS_URL, RedisServer, free_port

Event = tuple[str, uuid.UUID, bool]


class Cluster:
    """RedisPresence nodes under one prefix; every event any node publishes
    lands in ``events`` as (node name, user, online)."""

    def __init__(self, prefix: str, url: str = REDIS_URL) -> None:
        self.prefix = prefix
        self.url = url
        self.events: list[Event] = []
        self.nodes: list[RedisPresence] = []

    def node(self, name: str, ttl_s: float = 15.0) -> RedisPresence:
        async def publish(channel: str, envelope: dict[str, Any]) -> None:
            data = envelope["data"]
            self.events.append((name, uuid.UUID(data["user_id"]), data["online"]))

        presence = RedisPresence(
            publish, url=self.url, prefix=self.prefix, node_id=name, ttl_s=ttl_s
        )
        presence.start()
        self.nodes.append(presence)
        return presence

    def of(self, user: uuid.UUID) -> list[bool]:
        return [online for _, u, online in self.events if u == user]

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()


@pytest.fixture
async def cluster(redis_prefix: str) -> AsyncIterator[Cluster]:
    cluster = Cluster(redis_prefix)
    yield cluster
    await cluster.close()


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def fields(prefix: str, user: uuid.UUID, url: str = REDIS_URL) -> set[str]:
    """The fields of the user's hash: the nodes holding them, or ``seen``."""
    client = aioredis.from_url(url)
    try:
        raw = await client.hgetall(f"{prefix}{{presence}}:user:{user}")
    finally:
        await client.aclose()
    return {k.decode() for k in raw}


async def settled(cluster: Cluster, user: uuid.UUID, expected: set[str]) -> None:
    """Until Redis holds ``expected`` for the user."""
    async with asyncio.timeout(10):
        while await fields(cluster.prefix, user) != expected:
            await asyncio.sleep(0.02)


async def test_a_user_on_two_nodes_flips_once_each_way(cluster: Cluster) -> None:
    """Online with the first socket anywhere, offline after the last one
    anywhere, and each flip told by one node only."""
    a, b = cluster.node("a"), cluster.node("b")
    user = uuid.uuid4()

    await a.connected(user)
    await settled(cluster, user, {a.node})
    await until(lambda: cluster.events == [("a", user, True)])
    await b.connected(user)
    await settled(cluster, user, {a.node, b.node})
    assert cluster.events == [("a", user, True)]
    assert [p.online for p in await b.get([user])] == [True]

    await a.disconnected(user)
    await settled(cluster, user, {b.node})
    assert [p.online for p in await a.get([user])] == [True]

    await b.disconnected(user)
    await settled(cluster, user, {"seen"})
    await until(lambda: len(cluster.events) > 1)
    assert cluster.events == [("a", user, True), ("b", user, False)]
    (gone,) = await a.get([user])
    assert gone.online is False
    assert gone.last_seen_at is not None


async def test_racing_connects_and_disconnects_flip_exactly_once(
    cluster: Cluster,
) -> None:
    """Users connecting on both nodes in the same instant, then leaving both
    in the same instant: one online and one offline event per user."""
    a, b = cluster.node("a"), cluster.node("b")
    users = [uuid.uuid4() for _ in range(40)]

    await asyncio.gather(*(n.connected(u) for u in users for n in (a, b)))
    for user in users:
        await settled(cluster, user, {a.node, b.node})
    await until(lambda: all(cluster.of(u) for u in users))
    await asyncio.gather(*(n.disconnected(u) for u in users for n in (a, b)))
    for user in users:
        await settled(cluster, user, {"seen"})
    await until(lambda: all(len(cluster.of(u)) > 1 for u in users))

    for user in users:
        assert cluster.of(user) == [True, False]


async def test_a_crashed_nodes_users_go_offline_on_their_own(
    cluster: Cluster,
) -> None:
    """A node that stops beating is reaped by another: its users who have no
    other node go offline (once), the others stay online."""
    a, b = cluster.node("a", ttl_s=0.6), cluster.node("b", ttl_s=0.6)
    alone, both = uuid.uuid4(), uuid.uuid4()
    await a.connected(alone)
    await a.connected(both)
    await b.connected(both)
    await settled(cluster, alone, {a.node})
    await settled(cluster, both, {a.node, b.node})

    await a.stop()  # no goodbye: as if the process had died
    await until(lambda: cluster.of(alone) == [True, False])
    await settled(cluster, both, {b.node})

    await until(lambda: b.reaped_nodes == 1)
    assert cluster.of(both) == [True]
    assert b.reaped_users == 1
    (still,) = await b.get([both])
    assert still.online is True


async def test_a_clean_stop_takes_the_nodes_users_offline_at_once(
    cluster: Cluster,
) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    user = uuid.uuid4()
    await a.connected(user)
    await settled(cluster, user, {a.node})
    await a.close()
    assert cluster.of(user) == [True, False]
    (gone,) = await b.get([user])
    assert gone.online is False


async def test_get_answers_from_this_nodes_view_without_redis() -> None:
    """Nobody listens where Redis should be: connects do not wait for it,
    and presence.get answers from this node's own counts."""
    events: list[dict[str, Any]] = []

    async def publish(channel: str, envelope: dict[str, Any]) -> None:
        events.append(envelope)

    url = f"redis://127.0.0.1:{free_port()}/0"
    presence = RedisPresence(publish, url=url, prefix="x:", node_id="n", ttl_s=0.6)
    presence.start()
    try:
        here, gone = uuid.uuid4(), uuid.uuid4()
        await presence.connected(here)
        await presence.connected(gone)
        await presence.disconnected(gone)
        answer = await presence.get([here, gone, here])
        assert [(p.user_id, p.online) for p in answer] == [
            (here, True),
            (gone, False),
        ]
        assert answer[1].last_seen_at is not None
        await until(lambda: not presence.healthy)
        assert presence.redis_errors > 0
        assert events == []
    finally:
        await presence.close()


async def test_users_are_registered_again_when_redis_comes_back(
    redis_prefix: str, tmp_path: Path
) -> None:
    """Redis restarts empty: this node's users, those from before and those
    who came meanwhile, are written again without anyone reconnecting."""
    server = RedisServer(tmp_path)
    server.start()
    cluster = Cluster(redis_prefix, server.url)
    try:
        node = cluster.node("a", ttl_s=0.6)
        before, meanwhile = uuid.uuid4(), uuid.uuid4()
        await node.connected(before)
        await _settled_on(server.url, cluster, before, {node.node})

        server.kill()
        await until(lambda: not node.healthy)
        await node.connected(meanwhile)
        # Still answered, from this node's counts.
        assert [p.online for p in await node.get([before, meanwhile])] == [True, True]

        server.start()
        await _settled_on(server.url, cluster, before, {node.node})
        await _settled_on(server.url, cluster, meanwhile, {node.node})
        await until(lambda: node.healthy)
        assert node.resyncs >= 2
        assert [p.online for p in await node.get([before, meanwhile])] == [True, True]
    finally:
        await cluster.close()
        server.stop()


async def _settled_on(
    url: str, cluster: Cluster, user: uuid.UUID, expected: set[str]
) -> None:
    async with asyncio.timeout(15):
        while True:
            try:
                if await fields(cluster.prefix, user, url) == expected:
                    return
            except (OSError, aioredis.RedisError):  # type: ignore[attr-defined]
                pass  # the server is still starting
            await asyncio.sleep(0.05)
