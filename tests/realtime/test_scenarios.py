"""Chat as users live it, over real sockets on both storage engines: groups,
receipts, typing, presence, membership changes, catch-up, history, edits
and deletes, and the MessagePack codec."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from protocol.client import RpcError, SquallClient
from tests.conftest import Running, User, register_and_login
from tests.realtime.conftest import Connect

Event = dict[str, Any]


def is_new(event: Event) -> bool:
    return bool(event["event"] == "message.new")


def kind(name: str, **data: object) -> Callable[[Event], bool]:
    """A match for events named ``name`` whose data has these values."""

    def match(event: Event) -> bool:
        return event["event"] == name and all(
            event["data"].get(k) == v for k, v in data.items()
        )

    return match


async def take(
    client: SquallClient,
    count: int,
    match: Callable[[Event], bool] = is_new,
    timeout: float = 5.0,
) -> list[Event]:
    """The next ``count`` events that ``match`` accepts."""
    async with asyncio.timeout(timeout):
        return [await client.next_event(match=match) for _ in range(count)]


async def nothing_more(
    client: SquallClient, match: Callable[[Event], bool], wait: float = 0.5
) -> None:
    """No event that ``match`` accepts arrives within ``wait`` seconds."""
    try:
        event = await client.next_event(timeout=wait, match=match)
    except TimeoutError:
        return
    pytest.fail(f"unexpected event {event}")


async def send(client: SquallClient, conv: str, msg_id: str, text: str) -> Any:
    return await client.call(
        "message.send",
        {"conversation_id": conv, "client_msg_id": msg_id, "text": text},
    )


async def group(owner: SquallClient, *members: User, title: str = "team") -> str:
    conv = await owner.call(
        "conversation.create",
        {"kind": "group", "member_ids": [m.id for m in members], "title": title},
    )
    conv_id: str = conv["id"]
    return conv_id


async def test_group_of_five_everyone_gets_every_message_in_order(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """In a group of five, everyone gets every message once, in order, no gap."""
    others = [await register_and_login(app, n) for n in ("carol", "dave", "erin")]
    users = [alice, bob, *others]
    clients = [await connect(u) for u in users]
    conv = await group(clients[0], *users[1:])
    for client in clients:
        (joined,) = await take(client, 1, kind("member.added"))
        assert joined["seq"] == 1
        assert set(joined["data"]["user_ids"]) == {u.id for u in users}

    async def chatter(index: int) -> list[Any]:
        return [
            await send(clients[index], conv, f"u{index}-m{n}", f"{index}:{n}")
            for n in range(4)
        ]

    acked = [r for rs in await asyncio.gather(*map(chatter, range(5))) for r in rs]
    seqs = sorted(r["seq"] for r in acked)
    assert seqs == list(range(2, 22))
    by_seq = {r["seq"]: r["message_id"] for r in acked}

    for user, client in zip(users, clients, strict=True):
        got = await take(client, 20)
        assert [e["seq"] for e in got] == seqs, user.username
        assert [e["data"]["id"] for e in got] == [by_seq[s] for s in seqs]
        for event in got:
            assert event["channel"] == f"conv:{conv}"
            sender, n = event["data"]["text"].split(":")
            assert event["data"]["sender_id"] == users[int(sender)].id
            assert event["data"]["client_msg_id"] == f"u{sender}-m{n}"
        await nothing_more(client, is_new, wait=0.2)


async def test_receipts_and_unread_counts(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """Acks and reads reach the others as receipts; unread counts fall."""
    carol = await register_and_login(app, "carol")
    a, b, c = await connect(alice), await connect(bob), await connect(carol)
    conv = await group(a, bob, carol)
    sent = [await send(a, conv, f"m{i}", f"hello {i}") for i in range(3)]
    assert [s["seq"] for s in sent] == [2, 3, 4]
    await take(b, 3)

    async def unread(client: SquallClient) -> int:
        listed = await client.call("conversation.list")
        (entry,) = [x for x in listed["conversations"] if x["id"] == conv]
        count: int = entry["unread_count"]
        return count

    assert await unread(b) == 3
    assert await unread(a) == 0  # one's own messages are read

    await b.call("message.ack", {"conversation_id": conv, "seq": 4})
    for client in (a, c):
        (receipt,) = await take(client, 1, kind("receipt", user_id=bob.id))
        assert receipt["data"] == {
            "conversation_id": conv,
            "user_id": bob.id,
            "kind": "delivered",
            "seq": 4,
        }
        assert "seq" not in receipt or receipt["seq"] is None
    assert await unread(b) == 3  # delivered is not read

    read = await b.call("message.read", {"conversation_id": conv, "seq": 3})
    assert read == {"last_read_seq": 3, "unread_count": 1}
    for client in (a, c):
        (receipt,) = await take(client, 1, kind("receipt", user_id=bob.id))
        assert receipt["data"]["kind"] == "read"
        assert receipt["data"]["seq"] == 3
    assert await unread(b) == 1
    assert await unread(c) == 3

    # Backwards is a no-op and tells no one.
    back = await b.call("message.read", {"conversation_id": conv, "seq": 2})
    assert back == {"last_read_seq": 3, "unread_count": 1}
    await nothing_more(a, kind("receipt"), wait=0.3)

    # Past the head is clamped to it.
    done = await b.call("message.read", {"conversation_id": conv, "seq": 999})
    assert done == {"last_read_seq": 4, "unread_count": 0}
    assert await unread(b) == 0
    info = await a.call("conversation.get", {"conversation_id": conv})
    (me,) = [m for m in info["members"] if m["user_id"] == bob.id]
    assert me["last_read_seq"] == 4
    assert me["last_delivered_seq"] == 4


async def test_typing_reaches_others_and_stops_on_its_own(
    app: Running,
    alice: User,
    bob: User,
    connect: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """typing start reaches the others, and a stop follows once it expires."""
    monkeypatch.setattr(app.node.typing, "expiry_s", 0.3)
    a, b = await connect(alice), await connect(bob)
    conv = (
        await a.call("conversation.create", {"kind": "direct", "member_ids": [bob.id]})
    )["id"]
    await take(b, 1, kind("member.added"))

    started = time.monotonic()
    await a.call("typing", {"conversation_id": conv, "state": "start"})
    (start,) = await take(b, 1, kind("typing"))
    assert start["data"] == {
        "conversation_id": conv,
        "user_id": alice.id,
        "state": "start",
        "expires_in_ms": 300,
    }
    assert start.get("seq") is None
    (stop,) = await take(b, 1, kind("typing"), timeout=3)
    assert stop["data"]["state"] == "stop"
    assert stop["data"]["user_id"] == alice.id
    assert time.monotonic() - started >= 0.25

    # An explicit stop is sent once; the expiry adds no second one.
    await a.call("typing", {"conversation_id": conv, "state": "start"})
    await a.call("typing", {"conversation_id": conv, "state": "stop"})
    states = [e["data"]["state"] for e in await take(b, 2, kind("typing"))]
    assert states == ["start", "stop"]
    await nothing_more(b, kind("typing"), wait=0.6)


async def test_presence_follows_connects_and_disconnects(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """A watcher sees a user online with its first socket, offline after its last."""
    a = await connect(alice)
    before = await a.call("presence.get", {"user_ids": [bob.id]})
    assert before["presence"] == [
        {"user_id": bob.id, "online": False, "last_seen_at": None}
    ]

    b1 = await connect(bob)
    (online,) = await take(a, 1, kind("presence", user_id=bob.id))
    assert online["data"]["online"] is True
    assert online["channel"] == f"presence:{bob.id}"

    b2 = await connect(bob)
    # Answered only once the socket is authenticated, so counted as online.
    await b2.call("ping")
    await b1.close()
    await nothing_more(a, kind("presence"), wait=0.3)
    now = await a.call("presence.get", {"user_ids": [bob.id]})
    assert now["presence"][0]["online"] is True

    await b2.close()
    (offline,) = await take(a, 1, kind("presence", user_id=bob.id))
    assert offline["data"]["online"] is False
    assert offline["data"]["last_seen_at"]
    after = await a.call("presence.get", {"user_ids": [bob.id]})
    assert after["presence"][0]["online"] is False
    assert after["presence"][0]["last_seen_at"] is not None


async def test_membership_changes_apply_to_live_sockets(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """Adding or removing a member takes effect on its open socket at once."""
    carol = await register_and_login(app, "carol")
    a, b, c = await connect(alice), await connect(bob), await connect(carol)
    conv = await group(a, bob)
    await send(a, conv, "before", "before carol")
    await take(b, 1)

    added = await a.call(
        "conversation.add_members", {"conversation_id": conv, "user_ids": [carol.id]}
    )
    assert carol.id in {m["user_id"] for m in added["members"]}
    (joined,) = await take(c, 1, kind("member.added"))
    assert joined["seq"] == 3
    assert joined["data"]["user_ids"] == [carol.id]

    sent = await send(a, conv, "welcome", "hi carol")
    (new,) = await take(c, 1)
    assert new["seq"] == sent["seq"] == 4
    reply = await send(c, conv, "thanks", "hi all")
    (heard,) = await take(b, 1, kind("message.new", client_msg_id="thanks"))
    assert heard["seq"] == reply["seq"]

    await a.call(
        "conversation.remove_member", {"conversation_id": conv, "user_id": carol.id}
    )
    (removed,) = await take(c, 1, kind("member.removed"))
    assert removed["data"]["user_id"] == carol.id
    assert removed["seq"] == reply["seq"] + 1

    after = await send(a, conv, "after", "carol is gone")
    (seen,) = await take(b, 1, kind("message.new", client_msg_id="after"))
    assert seen["seq"] == after["seq"]
    await nothing_more(c, lambda e: e.get("channel") == f"conv:{conv}")
    with pytest.raises(RpcError) as info:
        await send(c, conv, "sneak", "still here?")
    assert info.value.code == "not_found"
    listed = await c.call("conversation.list")
    assert conv not in {x["id"] for x in listed["conversations"]}


async def test_offline_catch_up_delivers_exactly_what_was_missed(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """A client resuming from old positions gets exactly what it missed, in order."""
    a = await connect(alice)
    b1 = await connect(bob)
    conv = (
        await a.call("conversation.create", {"kind": "direct", "member_ids": [bob.id]})
    )["id"]
    await take(b1, 1, kind("member.added"))
    await send(a, conv, "seen", "bob saw this")
    await take(b1, 1)
    await b1.close()
    assert b1.positions == {conv: 2}

    missed = [await send(a, conv, f"m{i}", f"while away {i}") for i in range(3)]
    b2 = await connect(bob, positions=b1.positions)
    got = await take(b2, 3)
    assert [e["seq"] for e in got] == [m["seq"] for m in missed] == [3, 4, 5]
    assert [e["data"]["text"] for e in got] == [f"while away {i}" for i in range(3)]
    await nothing_more(b2, is_new, wait=0.3)

    live = await send(a, conv, "live", "welcome back")
    (new,) = await take(b2, 1)
    assert new["seq"] == live["seq"] == 6
    await nothing_more(b2, is_new, wait=0.3)


async def test_history_pages_before_and_after(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """History pages back and forward cover every message once, oldest first."""
    a = await connect(alice)
    conv = (
        await a.call("conversation.create", {"kind": "direct", "member_ids": [bob.id]})
    )["id"]
    seqs = [(await send(a, conv, f"m{i}", f"#{i}"))["seq"] for i in range(25)]
    assert seqs == list(range(2, 27))

    async def page(**params: int) -> tuple[list[int], bool]:
        result = await a.call(
            "message.history", {"conversation_id": conv, "limit": 10, **params}
        )
        return [m["seq"] for m in result["messages"]], result["has_more"]

    backwards: list[int] = []
    got, more = await page()
    assert (got, more) == (list(range(17, 27)), True)
    backwards = got
    while more:
        got, more = await page(before_seq=backwards[0])
        assert got == sorted(got)
        backwards = got + backwards
    assert backwards == seqs

    forwards: list[int] = []
    got, more = await page(after_seq=0)
    assert (got, more) == (list(range(2, 12)), True)
    forwards = got
    while more:
        got, more = await page(after_seq=forwards[-1])
        forwards += got
    assert forwards == seqs
    assert await page(after_seq=21) == ([22, 23, 24, 25, 26], False)
    assert await page(before_seq=2) == ([], False)


async def test_edit_and_delete(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """Edits and deletes reach the others, and a deleted text never comes back."""
    a, b = await connect(alice), await connect(bob)
    conv = (
        await a.call("conversation.create", {"kind": "direct", "member_ids": [bob.id]})
    )["id"]
    sent = await send(a, conv, "m1", "the secret plan")
    ref = {"conversation_id": conv, "message_id": sent["message_id"]}
    await take(b, 1)

    edited = await a.call("message.edit", {**ref, "text": "the revised plan"})
    (event,) = await take(b, 1, kind("message.edited"))
    assert event["seq"] == edited["seq"] == sent["seq"] + 1
    assert event["data"]["message_id"] == sent["message_id"]
    assert event["data"]["message_seq"] == sent["seq"]
    assert event["data"]["text"] == "the revised plan"
    history = await b.call("message.history", {"conversation_id": conv})
    (msg,) = history["messages"]
    assert msg["text"] == "the revised plan"
    assert msg["edited_at"] is not None

    for method, params in (
        ("message.edit", {**ref, "text": "bob was here"}),
        ("message.delete", ref),
    ):
        with pytest.raises(RpcError) as info:
            await b.call(method, params)
        assert info.value.code == "forbidden"

    deleted = await a.call("message.delete", ref)
    (event,) = await take(b, 1, kind("message.deleted"))
    assert event["seq"] == deleted["seq"] == edited["seq"] + 1
    assert event["data"]["message_id"] == sent["message_id"]

    with pytest.raises(RpcError) as info:
        await a.call("message.edit", {**ref, "text": "undo"})
    assert info.value.code == "conflict"
    with pytest.raises(RpcError) as info:
        await a.call("message.delete", ref)
    assert info.value.code == "conflict"

    history = await b.call("message.history", {"conversation_id": conv})
    (msg,) = history["messages"]
    assert msg["deleted"] is True
    assert msg["text"] == ""
    for client in (a, b):
        synced = await client.call("sync", {"positions": {conv: 0}})
        assert synced["complete"] is True
        assert [e["seq"] for e in synced["events"]] == [1, 2, 3, 4]
        dumped = orjson.dumps(synced).decode()
        assert "secret" not in dumped
        assert "revised" not in dumped
        (new,) = [e for e in synced["events"] if e["event"] == "message.new"]
        assert new["data"]["deleted"] is True


async def test_msgpack_clients_chat_with_json_clients(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    """MessagePack and JSON clients chat together, ids and times as strings."""
    a = await connect(alice, codec="msgpack")
    b = await connect(bob)
    conv = await a.call(
        "conversation.create", {"kind": "direct", "member_ids": [bob.id]}
    )
    assert isinstance(conv["id"], str)
    assert isinstance(conv["created_at"], str)
    (joined,) = await take(a, 1, kind("member.added"))
    assert joined["seq"] == 1

    sent = await send(a, conv["id"], "mp1", "packed ✓")
    (got,) = await take(b, 1)
    assert got["data"]["text"] == "packed ✓"
    assert got["seq"] == sent["seq"]

    answer = await send(b, conv["id"], "js1", "plain ☺")
    (got,) = await take(a, 1, kind("message.new", client_msg_id="js1"))
    assert got["data"]["text"] == "plain ☺"
    assert got["seq"] == answer["seq"]
    assert isinstance(got["data"]["created_at"], str)

    with pytest.raises(RpcError) as info:
        await a.call("message.send", {"conversation_id": conv["id"], "text": 1})
    assert info.value.code == "validation_failed"
    history = await a.call("message.history", {"conversation_id": conv["id"]})
    assert [m["text"] for m in history["messages"]] == ["packed ✓", "plain ☺"]
