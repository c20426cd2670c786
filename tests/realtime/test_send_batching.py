"""Sends that overlap in one conversation share transactions, and still
every acknowledged send is stored exactly once under its own seq, the seqs
of the conversation run without a gap, and each event is published once,
in seq order, after its commit."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import NoResultFound

from protocol.chat import ConversationCreateParams, SendParams, SendResult
from protocol.errors import ApiError, ErrorCode
from realtime.services.chatlog import MemberCache
from realtime.services.messages import MessageService
from realtime.storage.database import Database
from realtime.storage.models import (
    Attachment,
    Conversation,
    ConversationEvent,
    Member,
    Message,
    User,
)
from tests.conftest import Running


@dataclass
class Room:
    app: Running
    conversation_id: uuid.UUID
    senders: list[uuid.UUID]
    outsider: uuid.UUID
    published: list[dict[str, Any]]

    def params(self, client_msg_id: str, **kwargs: Any) -> SendParams:
        return SendParams(
            conversation_id=self.conversation_id,
            client_msg_id=client_msg_id,
            text=f"text of {client_msg_id}",
            **kwargs,
        )

    async def send(self, user_id: uuid.UUID, client_msg_id: str) -> SendResult:
        return await self.app.node.messages.send(user_id, self.params(client_msg_id))

    async def stored(self) -> list[tuple[int, uuid.UUID | None, str]]:
        """(seq, sender, client_msg_id) of every stored message."""
        async with self.app.node.db.sessions() as session:
            rows = await session.execute(
                select(Message.seq, Message.sender_id, Message.client_msg_id)
                .where(Message.conversation_id == self.conversation_id)
                .order_by(Message.seq)
            )
            return [(row.seq, row.sender_id, row.client_msg_id) for row in rows]

    async def check_log(self) -> int:
        """The event log and the head agree and have no gap; the head."""
        async with self.app.node.db.sessions() as session:
            head = await session.scalar(
                select(Conversation.last_seq).where(
                    Conversation.id == self.conversation_id
                )
            )
            seqs = list(
                await session.scalars(
                    select(ConversationEvent.seq)
                    .where(ConversationEvent.conversation_id == self.conversation_id)
                    .order_by(ConversationEvent.seq)
                )
            )
        assert head is not None
        assert seqs == list(range(1, head + 1))
        return head

    def published_seqs(self) -> list[int]:
        return [e["seq"] for e in self.published if e["event"] == "message.new"]


@pytest.fixture
async def room(app: Running) -> AsyncIterator[Room]:
    # Rows rather than registrations: nobody here logs in, and password
    # hashing would be most of the test's time.
    users = [uuid.uuid4() for _ in range(4)]
    async with app.node.db.transaction() as session:
        for user_id, name in zip(
            users, ("alice", "bob", "carol", "mallory"), strict=True
        ):
            session.add(
                User(id=user_id, username=name, display_name=name, password_hash="-")
            )
    senders, outsider = users[:3], users[3]
    conv = await app.node.conversations.create(
        senders[0],
        ConversationCreateParams(kind="group", member_ids=senders[1:], title="t"),
    )
    # Membership read once up front, so that a send queues without waiting.
    await app.node.messages.members.members(conv.id)
    # Record what the service publishes, and pass it on.
    messages = app.node.messages
    publish = messages.publish
    published: list[dict[str, Any]] = []

    async def recording(channel: str, envelope: dict[str, Any]) -> None:
        published.append(envelope)
        await publish(channel, envelope)

    messages.publish = recording
    try:
        yield Room(app, conv.id, senders, outsider, published)
    finally:
        messages.publish = publish


async def test_concurrent_senders_get_contiguous_seqs(room: Room) -> None:
    batches = room.app.node.messages.sends.batches
    sends = [(room.senders[i % 3], f"c{i}") for i in range(100)]

    results = await asyncio.gather(*(room.send(u, c) for u, c in sends))

    seqs = [r.seq for r in results]
    assert sorted(seqs) == list(range(2, 102))
    assert len({r.message_id for r in results}) == 100
    # Arrival order is seq order.
    assert seqs == sorted(seqs)
    assert await room.stored() == [
        (r.seq, u, c) for r, (u, c) in zip(results, sends, strict=True)
    ]
    assert await room.check_log() == 101
    assert room.published_seqs() == seqs
    # Shared transactions, each of a bounded size.
    assert 2 <= room.app.node.messages.sends.batches - batches < 10

    async with room.app.node.db.sessions() as session:
        rows = await session.execute(
            select(Member.user_id, Member.last_read_seq).where(
                Member.conversation_id == room.conversation_id
            )
        )
        marks = {user_id: seq for user_id, seq in rows}
    for sender in room.senders:
        assert marks[sender] == max(
            r.seq for r, (u, _) in zip(results, sends, strict=True) if u == sender
        )


async def test_duplicates_in_one_burst_are_stored_once(room: Room) -> None:
    alice, bob = room.senders[:2]
    sends = [(alice, "same")] * 6 + [(bob, "same"), (alice, "other")]

    results = await asyncio.gather(*(room.send(u, c) for u, c in sends))

    alice_same = {(r.message_id, r.seq, r.created_at) for r in results[:6]}
    assert len(alice_same) == 1
    assert len({r.seq for r in results}) == 3
    assert [c for _, _, c in await room.stored()] == ["same", "same", "other"]
    assert await room.check_log() == 4
    assert room.published_seqs() == [2, 3, 4]


async def test_a_retry_returns_the_stored_message(room: Room) -> None:
    alice, bob = room.senders[:2]
    first = await room.send(alice, "r1")

    # Alone, and inside a burst whose batch then hits the constraint.
    again = await room.send(alice, "r1")
    burst = await asyncio.gather(
        room.send(bob, "n1"), room.send(alice, "r1"), room.send(bob, "n2")
    )

    assert again == first
    assert burst[1] == first
    assert [r.seq for r in (burst[0], burst[2])] == [3, 4]
    assert [c for _, _, c in await room.stored()] == ["r1", "n1", "n2"]
    assert await room.check_log() == 4
    # Each retry announces the stored message again, in case the node that
    # stored it died before announcing it; receivers drop the repeats.
    assert room.published_seqs() == [2, 2, 3, 2, 4]


async def test_failed_sends_in_a_burst_leave_the_others_alone(room: Room) -> None:
    alice, bob = room.senders[:2]
    messages = room.app.node.messages
    unowned, own = uuid.uuid4(), uuid.uuid4()
    async with room.app.node.db.transaction() as session:
        for att_id, uploader in ((unowned, bob), (own, alice)):
            session.add(
                Attachment(
                    id=att_id,
                    uploader_id=uploader,
                    sha256="0" * 64,
                    size=1,
                    content_type="text/plain",
                )
            )

    results = await asyncio.gather(
        room.send(alice, "a1"),
        room.send(room.outsider, "x1"),
        messages.send(alice, room.params("a2", attachment_ids=[unowned])),
        room.send(bob, "b1"),
        messages.send(alice, room.params("a3", attachment_ids=[own])),
        room.send(bob, "b2"),
        return_exceptions=True,
    )

    codes = [r.code if isinstance(r, ApiError) else r for r in results]
    assert codes[1] == ErrorCode.NOT_FOUND
    assert codes[2] == ErrorCode.VALIDATION_FAILED
    ok = [r for r in results if isinstance(r, SendResult)]
    assert [r.seq for r in ok] == [2, 3, 4, 5]
    assert [c for _, _, c in await room.stored()] == ["a1", "b1", "a3", "b2"]
    assert await room.check_log() == 5
    async with room.app.node.db.sessions() as session:
        attached = await session.scalar(
            select(Attachment.message_id).where(Attachment.id == own)
        )
    assert attached == ok[2].message_id
    event = next(e for e in room.published if e.get("seq") == 4)
    assert event["data"]["attachment_ids"] == [str(own)]


async def test_a_failed_transaction_fails_every_caller_of_its_batch(
    room: Room,
) -> None:
    # The member cache still lets the sends through; the seq update finds
    # no conversation row.
    async with room.app.node.db.transaction() as session:
        await session.execute(
            delete(Conversation).where(Conversation.id == room.conversation_id)
        )

    results = await asyncio.wait_for(
        asyncio.gather(
            *(room.send(room.senders[i % 3], f"f{i}") for i in range(5)),
            return_exceptions=True,
        ),
        5,
    )

    assert all(isinstance(r, NoResultFound) for r in results)
    room.app.node.messages.members.invalidate(room.conversation_id)


async def test_a_cancelled_caller_does_not_break_the_batch(room: Room) -> None:
    alice, bob = room.senders[:2]
    sends = room.app.node.messages.sends
    before = sends.batches
    in_flight = [
        asyncio.create_task(room.send(alice if i % 2 else bob, f"i{i}"))
        for i in range(3)
    ]
    while sends.batches == before:
        await asyncio.sleep(0)
    queued = [asyncio.create_task(room.send(bob, f"q{i}")) for i in range(3)]
    await asyncio.sleep(0)

    in_flight[1].cancel()
    queued[1].cancel()
    results = await asyncio.gather(*in_flight, *queued, return_exceptions=True)

    assert isinstance(results[1], asyncio.CancelledError)
    assert isinstance(results[4], asyncio.CancelledError)
    # Taken into a transaction, the cancelled send is stored; still queued,
    # it is not.
    stored = [c for _, _, c in await room.stored()]
    assert stored == ["i0", "i1", "i2", "q0", "q2"]
    assert [r.seq for r in results if isinstance(r, SendResult)] == [2, 4, 5, 6]
    assert await room.check_log() == 6


async def test_two_nodes_sending_to_one_conversation_share_its_seqs(
    room: Room,
) -> None:
    """The conversation row's lock orders batches of different nodes."""
    node = room.app.node
    db = Database(node.settings.sqlalchemy_url)
    other = MessageService(db, MemberCache(db), node.conversations, node.hub.publish)
    try:
        results = await asyncio.gather(
            *(
                (node.messages if i % 2 else other).send(
                    room.senders[i % 3], room.params(f"n{i}")
                )
                for i in range(40)
            )
        )
    finally:
        await db.close()

    assert sorted(r.seq for r in results) == list(range(2, 42))
    assert len(await room.stored()) == 40
    assert await room.check_log() == 41


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_send_survives_lost_database_connections(
    room: Room, caplog: pytest.LogCaptureFixture
) -> None:
    """As after a PostgreSQL restart: every pooled connection is gone."""
    await room.send(room.senders[0], "before")
    admin = await asyncpg.connect(room.app.settings.database_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()

    with caplog.at_level(logging.WARNING, "realtime.services.messages"):
        result = await room.send(room.senders[1], "after")

    assert "retrying once" in caplog.text
    assert result.seq == 3
    assert await room.check_log() == 3
