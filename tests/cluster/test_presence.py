"""Presence and typing across two nodes: a watcher on any node sees each
flip of a user's presence once, whichever nodes hold the user's sockets
and even if one of them dies; a stop typed on one node ends a start typed
on another."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.client import SquallClient
from tests.cluster.conftest import Connect, cluster_settings
from tests.conftest import Running, User, _wipe, register_and_login, running_node

pytestmark = pytest.mark.postgres

Event = dict[str, Any]


@pytest.fixture
async def quick_nodes(
    cluster_database: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Running, Running]]:
    """Two nodes whose presence TTL is short, so a dead one is soon reaped."""

    def settings(node_id: str) -> Any:
        return cluster_settings(
            cluster_database, redis_prefix, tmp_path, node_id, presence_ttl_s=0.6
        )

    async with running_node(settings("a")) as a, running_node(settings("b")) as b:
        await _wipe(a.node)
        yield a, b


def presence_of(user: User) -> Callable[[Event], bool]:
    return lambda e: e["event"] == "presence" and e["data"]["user_id"] == user.id


async def nothing_more(
    client: SquallClient, match: Callable[[Event], bool], wait: float = 0.5
) -> None:
    try:
        event = await client.next_event(timeout=wait, match=match)
    except TimeoutError:
        return
    pytest.fail(f"unexpected event {event}")


async def online(client: SquallClient, user: User) -> tuple[bool, str | None]:
    answer = await client.call("presence.get", {"user_ids": [user.id]})
    (entry,) = answer["presence"]
    return entry["online"], entry["last_seen_at"]


async def test_watchers_on_both_nodes_see_each_flip_once(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    """Bob is online from his first socket on either node until his last one
    on either node closes; watchers on both nodes get one event per flip."""
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    carol = await register_and_login(a, "carol")
    on_a = await connect(a, alice)
    on_b = await connect(b, carol)
    assert await online(on_a, bob) == (False, None)
    assert await online(on_b, bob) == (False, None)

    bob_b = await connect(b, bob)
    for watcher in (on_a, on_b):
        came = await watcher.next_event(match=presence_of(bob))
        assert came["data"]["online"] is True
    assert (await online(on_a, bob))[0] is True

    bob_a = await connect(a, bob)
    await bob_a.call("ping")  # answered once the socket is counted
    await bob_b.close()
    for watcher in (on_a, on_b):
        await nothing_more(watcher, presence_of(bob))
        assert (await online(watcher, bob))[0] is True

    await bob_a.close()
    for watcher in (on_a, on_b):
        left = await watcher.next_event(match=presence_of(bob))
        assert left["data"]["online"] is False
        assert left["data"]["last_seen_at"]
    for watcher in (on_a, on_b):
        await nothing_more(watcher, presence_of(bob))
        is_online, last_seen = await online(watcher, bob)
        assert is_online is False
        assert last_seen is not None


async def test_the_users_of_a_dead_node_go_offline_for_watchers_elsewhere(
    quick_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, b = quick_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    watcher = await connect(b, alice)
    assert (await online(watcher, bob))[0] is False
    await connect(a, bob)
    came = await watcher.next_event(match=presence_of(bob))
    assert came["data"]["online"] is True

    # Node a stops beating and never says goodbye; its socket stays open.
    await a.node.presence.stop()
    left = await watcher.next_event(timeout=15, match=presence_of(bob))
    assert left["data"]["online"] is False
    assert (await online(watcher, bob))[0] is False


async def test_typing_stop_on_one_node_ends_a_start_on_the_other(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    """Alice starts typing on her phone (node a) and stops on her laptop
    (node b, which never saw the start): Bob, on node a, sees both."""
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    phone = await connect(a, alice)
    laptop = await connect(b, alice)
    watcher = await connect(a, bob)
    conv = await phone.call(
        "conversation.create",
        {"kind": "group", "title": "g", "member_ids": [bob.id]},
    )
    await watcher.next_event(match=lambda e: e["event"] == "member.added")
    await a.node.hub.subscribed(f"conv:{conv['id']}")

    def typing(e: Event) -> bool:
        return e["event"] == "typing"

    await phone.call("typing", {"conversation_id": conv["id"], "state": "start"})
    start = await watcher.next_event(match=typing)
    assert start["data"]["state"] == "start"
    assert start["data"]["expires_in_ms"] > 0

    await laptop.call("typing", {"conversation_id": conv["id"], "state": "stop"})
    stop = await watcher.next_event(match=typing)
    assert (stop["data"]["state"], stop["data"]["user_id"]) == ("stop", alice.id)
