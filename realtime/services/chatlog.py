"""What the chat services share: the conversation event log, the
membership cache, and how events leave a service after commit."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from protocol.envelope import conversation_channel
from protocol.errors import ApiError, ErrorCode
from realtime.storage.database import Database
from realtime.storage.models import Conversation, ConversationEvent, Member

#: Publishes one envelope on one channel, after the commit that made it.
Publish = Callable[[str, dict[str, Any]], Awaitable[None]]

#: Internal control events on a user's channel; sessions act on them and
#: never forward them to clients.
SUBSCRIBE = "_subscribe"
UNSUBSCRIBE = "_unsubscribe"
REVOKED = "_revoked"


async def publish_nowhere(channel: str, envelope: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    conversation_id: uuid.UUID
    seq: int
    type: str
    data: dict[str, Any]
    #: Length of the stored JSON, to size pages without re-encoding.
    size: int = 0

    def envelope(self) -> dict[str, Any]:
        return {
            "event": self.type,
            "channel": conversation_channel(self.conversation_id),
            "seq": self.seq,
            "data": self.data,
        }


async def next_seq(session: AsyncSession, conversation_id: uuid.UUID) -> int:
    """Take the conversation's next seq, in the caller's transaction. The row
    lock this update takes orders concurrent writers, so seqs commit in
    order."""
    return (
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(last_seq=Conversation.last_seq + 1)
            .returning(Conversation.last_seq)
        )
    ).scalar_one()


# The hot path's statements are built once: building one costs more CPU
# than executing it from SQLAlchemy's compiled cache.
_TAKE_SEQS = (
    update(Conversation)
    .where(Conversation.id == bindparam("conversation"))
    .values(last_seq=Conversation.last_seq + bindparam("count"))
    .returning(Conversation.last_seq)
)
_INSERT_EVENTS = insert(ConversationEvent)


async def take_seqs(
    conn: AsyncConnection, conversation_id: uuid.UUID, count: int
) -> int:
    """Take the next ``count`` seqs in one statement, in the caller's
    transaction; the last of them. The block ends at the returned seq and
    has no hole, since the row lock (as in :func:`next_seq`) keeps every
    other writer out until commit."""
    params = {"conversation": conversation_id, "count": count}
    return (await conn.execute(_TAKE_SEQS, params)).scalar_one()


def log_event(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    seq: int,
    event_type: str,
    data: dict[str, Any],
) -> StoredEvent:
    """Add the event under a seq from :func:`next_seq` to the log."""
    session.add(
        ConversationEvent(
            conversation_id=conversation_id,
            seq=seq,
            type=event_type,
            data=orjson.dumps(data).decode(),
        )
    )
    return StoredEvent(conversation_id, seq, event_type, data)


async def insert_events(
    conn: AsyncConnection, events: Sequence[StoredEvent], created_at: datetime
) -> None:
    """Write events with seqs from :func:`take_seqs` to the log, in one
    statement."""
    await conn.execute(
        _INSERT_EVENTS,
        [
            {
                "conversation_id": event.conversation_id,
                "seq": event.seq,
                "type": event.type,
                "data": orjson.dumps(event.data).decode(),
                "created_at": created_at,
            }
            for event in events
        ],
    )


async def append_event(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
) -> StoredEvent:
    """:func:`next_seq` and :func:`log_event` in one."""
    seq = await next_seq(session, conversation_id)
    return log_event(session, conversation_id, seq, event_type, data)


async def events_after(
    db: Database, conversation_id: uuid.UUID, after: int, limit: int
) -> list[StoredEvent]:
    """Stored events with seq > ``after``, oldest first."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(
                ConversationEvent.seq, ConversationEvent.type, ConversationEvent.data
            )
            .where(
                ConversationEvent.conversation_id == conversation_id,
                ConversationEvent.seq > after,
            )
            .order_by(ConversationEvent.seq)
            .limit(limit)
        )
        return [
            StoredEvent(conversation_id, seq, kind, orjson.loads(data), len(data))
            for seq, kind, data in rows
        ]


class MemberCache:
    """Members of recently used conversations, so that a send does not read
    the member list each time. Bounded; every membership change drops its
    conversation's entry."""

    def __init__(self, db: Database, max_conversations: int = 10_000) -> None:
        self.db = db
        self.max = max_conversations
        self._entries: OrderedDict[uuid.UUID, dict[uuid.UUID, str]] = OrderedDict()

    async def members(self, conversation_id: uuid.UUID) -> dict[uuid.UUID, str]:
        cached = self._entries.get(conversation_id)
        if cached is not None:
            self._entries.move_to_end(conversation_id)
            return cached
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(Member.user_id, Member.role).where(
                    Member.conversation_id == conversation_id
                )
            )
            members = {user_id: role for user_id, role in rows}
        self._entries[conversation_id] = members
        if len(self._entries) > self.max:
            self._entries.popitem(last=False)
        return members

    async def role_of(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> str:
        """The member's role; ``not_found`` for non-members, so that a
        conversation one is not in looks like one that does not exist."""
        role = (await self.members(conversation_id)).get(user_id)
        if role is None:
            raise ApiError(ErrorCode.NOT_FOUND, "No such conversation.")
        return role

    def invalidate(self, conversation_id: uuid.UUID) -> None:
        self._entries.pop(conversation_id, None)
