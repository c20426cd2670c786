"""Two nodes in one process, sharing PostgreSQL and Redis: whatever happens
on one node reaches the sockets on the other, and per conversation every
socket gets each seq once, in order, whichever node its sender used."""

from __future__ import annotations

import asyncio

import pytest

from protocol.client import Closed, RpcError, SquallClient
from protocol.close_codes import CloseCode
from tests.cluster.conftest import Connect
from tests.conftest import Running, User, register_and_login
from tests.scrape import scrape, value

pytestmark = pytest.mark.postgres


async def _group(client: SquallClient, members: list[User]) -> str:
    conv = await client.call(
        "conversation.create",
        {"kind": "group", "title": "g", "member_ids": [m.id for m in members]},
    )
    return str(conv["id"])


async def _send(client: SquallClient, conv: str, tag: str) -> dict[str, object]:
    return await client.call(
        "message.send", {"conversation_id": conv, "client_msg_id": tag, "text": tag}
    )


async def test_a_message_on_one_node_reaches_sockets_on_the_other(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    on_a = await connect(a, alice)
    on_b = await connect(b, bob)
    conv = await _group(on_a, [bob])
    joined = await on_b.next_event(match=lambda e: e["event"] == "member.added")
    assert bob.id in joined["data"]["user_ids"]

    before_a, before_b = await scrape(a), await scrape(b)
    await _send(on_a, conv, "from-a")
    new = await on_b.next_event(match=lambda e: e["event"] == "message.new")
    assert (new["seq"], new["data"]["text"]) == (2, "from-a")
    # Out of a through the bus, into b from it, and onto bob's socket.
    after_a, after_b = await scrape(a), await scrape(b)
    for node_before, node_after, name in (
        (before_a, after_a, "squall_bus_published_total"),
        (before_b, after_b, "squall_bus_received_total"),
        (before_b, after_b, "squall_socket_deliveries_total"),
    ):
        assert value(node_after, name) > value(node_before, name), name

    await _send(on_b, conv, "from-b")
    back = await on_a.next_event(match=lambda e: e.get("seq") == 3)
    assert (back["seq"], back["data"]["text"]) == (3, "from-b")

    await on_a.call("typing", {"conversation_id": conv, "state": "start"})
    typing = await on_b.next_event(match=lambda e: e["event"] == "typing")
    assert typing["data"]["user_id"] == alice.id


async def test_logout_on_one_node_closes_that_sessions_sockets_on_the_other(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    on_b = await connect(b, alice)
    async with a.client(alice.access) as http:
        r = await http.post("/v1/auth/logout", json={})
        assert r.status_code in (200, 204), r.text
    with pytest.raises(Closed) as info:
        await on_b.next_event(timeout=5, match=lambda e: False)
    assert info.value.code == CloseCode.SESSION_REVOKED.code


async def test_a_member_removed_on_one_node_cannot_send_on_the_other(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    """Membership caches are dropped on every node, not only where the
    change was made."""
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    owner = await connect(a, alice)
    member = await connect(b, bob)
    conv = await _group(owner, [bob])
    await _send(member, conv, "warm")  # b now caches the member list

    await owner.call(
        "conversation.remove_member", {"conversation_id": conv, "user_id": bob.id}
    )

    async def refused(n: int) -> str | None:
        try:
            await _send(member, conv, f"after-{n}")
        except RpcError as exc:
            return exc.code
        return None

    async with asyncio.timeout(5):
        n = 0
        while (code := await refused(n)) is None:
            n += 1
            await asyncio.sleep(0.05)
    assert code == "not_found"


async def test_joining_through_one_node_subscribes_live_sockets_on_the_other(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    carol = await register_and_login(a, "carol")
    owner = await connect(a, alice)
    conv = await _group(owner, [bob])
    newcomer = await connect(b, carol)
    await owner.call(
        "conversation.add_members", {"conversation_id": conv, "user_ids": [carol.id]}
    )
    await newcomer.next_event(match=lambda e: e["event"] == "member.added")
    await _send(owner, conv, "welcome")
    new = await newcomer.next_event(match=lambda e: e["event"] == "message.new")
    assert new["data"]["text"] == "welcome"


async def test_concurrent_senders_on_both_nodes_keep_order_without_gaps(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    """Receivers on both nodes get seqs 1..n once each, in order, while
    senders on both nodes write at the same time."""
    a, b = two_nodes
    users = [await register_and_login(a, f"user{i}") for i in range(6)]
    nodes = [a, b]
    clients = [await connect(nodes[i % 2], u) for i, u in enumerate(users)]
    conv = await _group(clients[0], users[1:])
    seen: dict[int, list[int]] = {i: [] for i in range(len(clients))}

    async def receive(i: int, until: int) -> None:
        async with asyncio.timeout(30):
            while not seen[i] or seen[i][-1] < until:
                event = await clients[i].next_event(match=lambda e: "seq" in e)
                seen[i].append(event["seq"])

    async def send_many(i: int, lane: int, count: int) -> None:
        for n in range(count):
            await _send(clients[i], conv, f"c{i}-{lane}-{n}")

    # Four senders, two on each node, each with two sends in flight.
    await asyncio.gather(*(send_many(i, lane, 15) for i in range(4) for lane in (0, 1)))
    head = (await clients[0].call("conversation.get", {"conversation_id": conv}))[
        "last_seq"
    ]
    await asyncio.gather(*(receive(i, head) for i in range(len(clients))))
    assert head == 1 + 4 * 2 * 15
    for i, seqs in seen.items():
        assert seqs == list(range(1, head + 1)), f"socket {i}: {seqs}"


async def test_an_event_stored_but_never_published_reaches_the_other_node(
    two_nodes: tuple[Running, Running], connect: Connect
) -> None:
    """As when a node dies between its commit and its publish: the other
    node's sockets still get the event, found by the head check, without
    waiting for the conversation's next event."""
    a, b = two_nodes
    alice = await register_and_login(a, "alice")
    bob = await register_and_login(a, "bob")
    owner = await connect(a, alice)
    member = await connect(b, bob)
    conv = await _group(owner, [bob])
    await member.next_event(match=lambda e: e["event"] == "member.added")
    b.node.cluster.head_grace_s = 0.1

    bus = a.node.hub.bus
    real_publish = bus.publish

    async def lost(channel: str, payload: bytes) -> None:
        pass

    bus.publish = lost  # type: ignore[method-assign]
    try:
        await _send(owner, conv, "unannounced")
    finally:
        bus.publish = real_publish  # type: ignore[method-assign]
    # What the node's loop does every few seconds.
    await b.node.cluster.check_heads()

    new = await member.next_event(match=lambda e: e["event"] == "message.new")
    assert (new["seq"], new["data"]["text"]) == (2, "unannounced")
    assert b.node.cluster.unannounced >= 1
