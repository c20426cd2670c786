"""Two users chat over real sockets, on both storage engines."""

from __future__ import annotations

import pytest

from protocol.client import RpcError
from tests.conftest import Running, User
from tests.realtime.conftest import Connect


async def test_two_users_chat_live(
    app: Running, alice: User, bob: User, connect: Connect
) -> None:
    a = await connect(alice)
    b = await connect(bob)
    conv = await a.call(
        "conversation.create", {"kind": "direct", "member_ids": [bob.id]}
    )
    assert {m["user_id"] for m in conv["members"]} == {alice.id, bob.id}

    joined = await b.next_event(match=lambda e: e["event"] == "member.added")
    assert joined["seq"] == 1

    sent = await a.call(
        "message.send",
        {"conversation_id": conv["id"], "client_msg_id": "m1", "text": "hello bob"},
    )
    assert sent["seq"] == 2
    new = await b.next_event(match=lambda e: e["event"] == "message.new")
    assert new["data"]["text"] == "hello bob"
    assert new["seq"] == 2
    assert new["channel"] == f"conv:{conv['id']}"

    # A retry stores nothing new.
    again = await a.call(
        "message.send",
        {"conversation_id": conv["id"], "client_msg_id": "m1", "text": "hello bob"},
    )
    assert again == sent

    # Direct conversations are unique.
    same = await b.call(
        "conversation.create", {"kind": "direct", "member_ids": [alice.id]}
    )
    assert same["id"] == conv["id"]


async def test_bad_requests_keep_the_socket(
    app: Running, alice: User, connect: Connect
) -> None:
    a = await connect(alice)
    with pytest.raises(RpcError) as info:
        await a.call("no.such.method")
    assert info.value.code == "not_found"
    with pytest.raises(RpcError) as info:
        await a.call("message.send", {"conversation_id": "nope"})
    assert info.value.code == "validation_failed"
    assert (await a.call("ping"))["pong"] is True
