"""Messages, receipts and the catch-up a reconnecting client asks for."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.chat import (
    ChangeResult,
    DeleteParams,
    EditParams,
    EventOut,
    HistoryParams,
    HistoryResult,
    MessageOut,
    ReadResult,
    SendParams,
    SendResult,
    SyncParams,
    SyncResult,
)
from protocol.envelope import conversation_channel
from protocol.errors import ApiError, ErrorCode
from realtime.storage.database import Database
from realtime.storage.models import (
    Attachment,
    Conversation,
    ConversationEvent,
    Member,
    Message,
    utcnow,
)
from realtime.timefmt import iso_utc

from .chatlog import (
    MemberCache,
    Publish,
    StoredEvent,
    append_event,
    events_after,
    insert_events,
    take_seqs,
)
from .conversations import MANAGERS, ConversationService
from .groupcommit import GroupCommit

logger = logging.getLogger(__name__)

#: Event data per sync page past its first event, so that one reply stays
#: well inside a socket's outbox.
SYNC_PAGE_BYTES = 512 * 1024


# The statements of a send, built once (see chatlog._TAKE_SEQS).
_INSERT_MESSAGES = insert(Message)
_MARK_SEEN = (
    update(Member)
    .where(
        Member.conversation_id == bindparam("conversation"),
        Member.user_id == bindparam("user"),
        Member.last_read_seq < bindparam("seq"),
    )
    .values(last_read_seq=bindparam("seq"), last_delivered_seq=bindparam("seq"))
)
_FIND_SENT = select(
    Message.id, Message.conversation_id, Message.seq, Message.created_at
).where(
    Message.sender_id == bindparam("user"),
    Message.client_msg_id == bindparam("client_msg_id"),
)

#: Sends to one conversation per transaction at most. Past a few dozen the
#: fixed cost of a transaction is already shared thin.
MAX_SEND_BATCH = 64


class _MessageFields(Protocol):
    @property
    def id(self) -> uuid.UUID: ...
    @property
    def conversation_id(self) -> uuid.UUID: ...
    @property
    def seq(self) -> int: ...
    @property
    def sender_id(self) -> uuid.UUID | None: ...
    @property
    def client_msg_id(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def edited_at(self) -> datetime | None: ...
    @property
    def deleted_at(self) -> datetime | None: ...


def _message_data(
    msg: _MessageFields, attachment_ids: list[uuid.UUID] | list[str]
) -> dict[str, Any]:
    return MessageOut(
        id=msg.id,
        conversation_id=msg.conversation_id,
        seq=msg.seq,
        sender_id=msg.sender_id,
        client_msg_id=msg.client_msg_id,
        text="" if msg.deleted_at else msg.body,
        attachment_ids=[uuid.UUID(str(a)) for a in attachment_ids],
        created_at=msg.created_at,
        edited_at=msg.edited_at,
        deleted=msg.deleted_at is not None,
    ).model_dump(mode="json")


@dataclass(frozen=True, slots=True)
class _Send:
    user_id: uuid.UUID
    params: SendParams


def _has_attachments(send: _Send) -> bool:
    return bool(send.params.attachment_ids)


@dataclass(frozen=True, slots=True)
class _NewMessage:
    """A message about to be inserted, without the cost of an ORM object."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: uuid.UUID
    client_msg_id: str
    body: str
    created_at: datetime
    edited_at: None = None
    deleted_at: None = None

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation_id": self.conversation_id,
            "seq": self.seq,
            "sender_id": self.sender_id,
            "client_msg_id": self.client_msg_id,
            "body": self.body,
            "created_at": self.created_at,
        }


async def _attach(
    conn: AsyncConnection, msg: _NewMessage, attachment_ids: list[uuid.UUID]
) -> None:
    """Attach the sender's own, still unattached uploads to ``msg``, or fail
    the transaction. The conditions sit in the update itself, so that two
    sends cannot both take one upload."""
    attached = await conn.execute(
        update(Attachment)
        .where(
            Attachment.id.in_(attachment_ids),
            Attachment.uploader_id == msg.sender_id,
            Attachment.message_id.is_(None),
        )
        .values(message_id=msg.id)
    )
    if attached.rowcount != len(set(attachment_ids)):
        raise ApiError(
            ErrorCode.VALIDATION_FAILED,
            "Attachments must be your own uploads, not yet attached.",
        )


class MessageService:
    def __init__(
        self,
        db: Database,
        members: MemberCache,
        conversations: ConversationService,
        publish: Publish,
    ) -> None:
        self.db = db
        self.members = members
        self.conversations = conversations
        self.publish = publish
        #: Sends per conversation, a transaction per batch; its counters
        #: show how many sends shared one.
        self.sends: GroupCommit[uuid.UUID, _Send, SendResult] = GroupCommit(
            self._write_sends, max_batch=MAX_SEND_BATCH, alone=_has_attachments
        )

    async def _publish(self, event: StoredEvent) -> None:
        envelope = event.envelope()
        await self.publish(envelope["channel"], envelope)

    # Sending and changing.

    async def send(self, user_id: uuid.UUID, params: SendParams) -> SendResult:
        await self.members.role_of(params.conversation_id, user_id)
        return await self.sends.submit(params.conversation_id, _Send(user_id, params))

    async def _write_sends(
        self, conv_id: uuid.UUID, sends: Sequence[_Send]
    ) -> list[SendResult | Exception]:
        """One batch of :class:`GroupCommit`: stored, then published in seq
        order; one outcome per send."""
        # A client that retries before its first attempt was answered puts
        # the same message twice into one batch: it is written once and
        # both callers get it.
        unique: list[_Send] = []
        where: dict[tuple[uuid.UUID, str], int] = {}
        index: list[int] = []
        for send in sends:
            key = (send.user_id, send.params.client_msg_id)
            if key not in where:
                where[key] = len(unique)
                unique.append(send)
            index.append(where[key])

        stored: list[tuple[SendResult, StoredEvent | None] | Exception]
        if len(unique) == 1:
            stored = [await self._store_alone(conv_id, unique[0])]
        else:
            try:
                stored = [*await self._store(conv_id, unique)]
            except IntegrityError:
                # Some send of the batch is a retry of one stored earlier.
                # One by one, each caller gets the message stored for it.
                stored = [await self._store_alone(conv_id, s) for s in unique]

        outcomes: list[SendResult | Exception] = []
        for outcome in stored:
            if isinstance(outcome, Exception):
                outcomes.append(outcome)
                continue
            result, event = outcome
            if event is not None:
                try:
                    await self._publish(event)
                except Exception as exc:
                    # Stored but not announced: as without batching, only
                    # this sender hears of it (and may retry).
                    outcomes.append(exc)
                    continue
            outcomes.append(result)
        return [outcomes[i] for i in index]

    async def _store_alone(
        self, conv_id: uuid.UUID, send: _Send
    ) -> tuple[SendResult, StoredEvent | None] | Exception:
        try:
            return (await self._store(conv_id, [send]))[0]
        except IntegrityError as exc:
            # A retry: (sender, client_msg_id) is stored already. The failed
            # transaction gave back its seq; answer with the original, and
            # announce it again: the node that stored it may have died
            # between its commit and its publish, and then nothing else
            # would tell the other nodes (they drop what they already have).
            try:
                found = await self._find_sent(send.user_id, send.params.client_msg_id)
                if found is None:
                    return exc
                stored, stored_in = found
                event = None
                if stored_in == conv_id:
                    event = await self._stored_event(conv_id, stored.seq)
            except Exception as lookup_exc:
                return lookup_exc
            return stored, event
        except Exception as exc:
            return exc

    async def _stored_event(self, conv_id: uuid.UUID, seq: int) -> StoredEvent | None:
        page = await events_after(self.db, conv_id, seq - 1, 1)
        return page[0] if page and page[0].seq == seq else None

    async def _store(
        self, conv_id: uuid.UUID, sends: Sequence[_Send]
    ) -> list[tuple[SendResult, StoredEvent]]:
        """Store ``sends`` in one transaction: one seq block, one insert
        each for the messages and their events, one mark per sender."""
        try:
            return await self._store_once(conv_id, sends)
        except DBAPIError as exc:
            # The pool has no pre-ping (see storage/database.py): after a
            # database restart the first use of an old connection fails like
            # this, and SQLAlchemy drops the whole pool. A send is safe to
            # repeat: if the lost commit did go through, the repeat ends in
            # IntegrityError and the caller gets the stored message.
            if not exc.connection_invalidated:
                raise
            logger.warning(
                "storage connection lost while sending to %s; retrying once",
                conv_id,
            )
        return await self._store_once(conv_id, sends)

    async def _store_once(
        self, conv_id: uuid.UUID, sends: Sequence[_Send]
    ) -> list[tuple[SendResult, StoredEvent]]:
        now = utcnow()
        async with self.db.engine.begin() as conn:
            last = await take_seqs(conn, conv_id, len(sends))
            messages = [
                _NewMessage(
                    id=uuid.uuid4(),
                    conversation_id=conv_id,
                    seq=seq,
                    sender_id=send.user_id,
                    client_msg_id=send.params.client_msg_id,
                    body=send.params.text,
                    created_at=now,
                )
                for seq, send in enumerate(sends, start=last - len(sends) + 1)
            ]
            await conn.execute(_INSERT_MESSAGES, [m.row() for m in messages])
            # A send with attachments is always alone in its batch.
            attachment_ids = sends[0].params.attachment_ids
            if attachment_ids:
                await _attach(conn, messages[0], attachment_ids)
            events = [
                StoredEvent(
                    conv_id,
                    msg.seq,
                    "message.new",
                    _message_data(msg, send.params.attachment_ids),
                )
                for msg, send in zip(messages, sends, strict=True)
            ]
            await insert_events(conn, events, now)

            # Each sender has seen what they sent: one update per sender, in
            # one executemany.
            seen = {msg.sender_id: msg.seq for msg in messages}
            await conn.execute(
                _MARK_SEEN,
                [
                    {"conversation": conv_id, "user": user, "seq": seq}
                    for user, seq in seen.items()
                ],
            )
        return [
            (SendResult(message_id=m.id, seq=m.seq, created_at=now), event)
            for m, event in zip(messages, events, strict=True)
        ]

    async def _find_sent(
        self, user_id: uuid.UUID, client_msg_id: str
    ) -> tuple[SendResult, uuid.UUID] | None:
        """The message a sender stored under ``client_msg_id``, and its
        conversation."""
        async with self.db.engine.connect() as conn:
            params = {"user": user_id, "client_msg_id": client_msg_id}
            row = (await conn.execute(_FIND_SENT, params)).first()
        if row is None:
            return None
        result = SendResult(message_id=row.id, seq=row.seq, created_at=row.created_at)
        return result, row.conversation_id

    async def edit(self, user_id: uuid.UUID, params: EditParams) -> ChangeResult:
        await self.members.role_of(params.conversation_id, user_id)
        now = utcnow()
        async with self.db.transaction() as session:
            msg = await self._message(
                session, params.conversation_id, params.message_id
            )
            if msg.sender_id != user_id:
                raise ApiError(ErrorCode.FORBIDDEN, "Only the sender edits a message.")
            if msg.deleted_at is not None:
                raise ApiError(ErrorCode.CONFLICT, "The message was deleted.")
            msg.body = params.text
            msg.edited_at = now
            event = await append_event(
                session,
                params.conversation_id,
                "message.edited",
                {
                    "message_id": str(msg.id),
                    "message_seq": msg.seq,
                    "text": params.text,
                    "edited_at": iso_utc(now),
                },
            )
        await self._publish(event)
        return ChangeResult(seq=event.seq)

    async def delete(self, user_id: uuid.UUID, params: DeleteParams) -> ChangeResult:
        role = await self.members.role_of(params.conversation_id, user_id)
        now = utcnow()
        async with self.db.transaction() as session:
            msg = await self._message(
                session, params.conversation_id, params.message_id
            )
            if msg.sender_id != user_id and role not in MANAGERS:
                raise ApiError(ErrorCode.FORBIDDEN, "You may not delete this message.")
            if msg.deleted_at is not None:
                raise ApiError(ErrorCode.CONFLICT, "The message was already deleted.")
            msg.deleted_at = now
            msg.body = ""
            # Scrub the text from the logged events too: a deleted message
            # must not come back through sync.
            for kind in ("message.new", "message.edited"):
                await self._scrub(session, msg, kind)
            event = await append_event(
                session,
                params.conversation_id,
                "message.deleted",
                {
                    "message_id": str(msg.id),
                    "message_seq": msg.seq,
                    "deleted_at": iso_utc(now),
                },
            )
        await self._publish(event)
        return ChangeResult(seq=event.seq)

    async def _scrub(self, session: Any, msg: Message, kind: str) -> None:
        rows = await session.execute(
            select(ConversationEvent).where(
                ConversationEvent.conversation_id == msg.conversation_id,
                ConversationEvent.seq >= msg.seq,
                ConversationEvent.type == kind,
            )
        )
        for (row,) in rows:
            data = orjson.loads(row.data)
            if data.get("id", data.get("message_id")) != str(msg.id):
                continue
            data["text"] = ""
            if kind == "message.new":
                data["deleted"] = True
            row.data = orjson.dumps(data).decode()

    async def _message(
        self, session: Any, conversation_id: uuid.UUID, message_id: uuid.UUID
    ) -> Message:
        msg: Message | None = await session.get(Message, message_id)
        if msg is None or msg.conversation_id != conversation_id:
            raise ApiError(ErrorCode.NOT_FOUND, "No such message.")
        return msg

    # Reading.

    async def history(self, user_id: uuid.UUID, params: HistoryParams) -> HistoryResult:
        conv_id = params.conversation_id
        await self.members.role_of(conv_id, user_id)
        query = select(Message).where(Message.conversation_id == conv_id)
        if params.after_seq is not None:
            query = query.where(Message.seq > params.after_seq).order_by(Message.seq)
        else:
            if params.before_seq is not None:
                query = query.where(Message.seq < params.before_seq)
            query = query.order_by(Message.seq.desc())
        async with self.db.sessions() as session:
            rows = list(await session.scalars(query.limit(params.limit + 1)))
            has_more = len(rows) > params.limit
            rows = rows[: params.limit]
            if params.after_seq is None:
                rows.reverse()
            attached: dict[uuid.UUID, list[uuid.UUID]] = {}
            if rows:
                for att_id, msg_id in await session.execute(
                    select(Attachment.id, Attachment.message_id).where(
                        Attachment.message_id.in_([m.id for m in rows])
                    )
                ):
                    if msg_id is not None:
                        attached.setdefault(msg_id, []).append(att_id)
        return HistoryResult(
            messages=[
                MessageOut.model_validate(_message_data(m, attached.get(m.id, [])))
                for m in rows
            ],
            has_more=has_more,
        )

    async def sync(self, user_id: uuid.UUID, params: SyncParams) -> SyncResult:
        """Everything missed since ``positions``, conversation by conversation,
        at most ``limit`` events in all."""
        result, _ = await self.sync_page(user_id, params)
        return result

    async def sync_page(
        self,
        user_id: uuid.UUID,
        params: SyncParams,
        *,
        max_bytes: int = SYNC_PAGE_BYTES,
    ) -> tuple[SyncResult, set[uuid.UUID]]:
        """:meth:`sync`, and which conversations the page brought up to date
        (a socket resumes live delivery for those even when more is left).

        A page holds at most ``params.limit`` events and, past its first
        event, about ``max_bytes`` of event data."""
        heads = await self.conversations.memberships(user_id)
        budget = params.limit
        room = max_bytes
        events: list[EventOut] = []
        positions: dict[uuid.UUID, int] = {}
        for conv_id in sorted(heads, key=str):
            position = min(params.positions.get(conv_id, 0), heads[conv_id])
            positions[conv_id] = position
            if heads[conv_id] <= position or budget == 0 or room <= 0:
                continue
            page = await events_after(self.db, conv_id, position, budget)
            for event in page:
                if room <= 0 and events:
                    break
                events.append(EventOut.model_validate(event.envelope()))
                positions[conv_id] = event.seq
                budget -= 1
                room -= event.size
        caught_up = {c for c in heads if positions[c] >= heads[c]}
        removed = [c for c in params.positions if c not in heads]
        result = SyncResult(
            events=events,
            positions=positions,
            complete=len(caught_up) == len(heads),
            removed=removed,
        )
        return result, caught_up

    # Receipts.

    async def ack(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, seq: int
    ) -> None:
        await self._receipt(user_id, conversation_id, seq, "delivered")

    async def read(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, seq: int
    ) -> ReadResult:
        last_read = await self._receipt(user_id, conversation_id, seq, "read")
        async with self.db.sessions() as session:
            unread = await session.scalar(
                select(func.count()).where(
                    Message.conversation_id == conversation_id,
                    Message.seq > last_read,
                    Message.deleted_at.is_(None),
                    or_(Message.sender_id.is_(None), Message.sender_id != user_id),
                )
            )
        return ReadResult(last_read_seq=last_read, unread_count=unread or 0)

    async def _receipt(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, seq: int, kind: str
    ) -> int:
        """Move the member's delivered (or read) mark forward, never back."""
        await self.members.role_of(conversation_id, user_id)
        column = Member.last_read_seq if kind == "read" else Member.last_delivered_seq
        async with self.db.transaction() as session:
            head = await session.scalar(
                select(Conversation.last_seq).where(Conversation.id == conversation_id)
            )
            seq = min(seq, head or 0)
            values: dict[str, Any] = {column.key: seq}
            if kind == "read":
                # Read implies delivered.
                greatest = func.max if self.db.is_sqlite else func.greatest
                values["last_delivered_seq"] = greatest(Member.last_delivered_seq, seq)
            moved = await session.execute(
                update(Member)
                .where(
                    Member.conversation_id == conversation_id,
                    Member.user_id == user_id,
                    column < seq,
                )
                .values(values)
            )
            current = await session.scalar(
                select(column).where(
                    Member.conversation_id == conversation_id, Member.user_id == user_id
                )
            )
        if moved.rowcount:  # type: ignore[attr-defined]
            await self.publish(
                conversation_channel(conversation_id),
                {
                    "event": "receipt",
                    "channel": conversation_channel(conversation_id),
                    "data": {
                        "conversation_id": str(conversation_id),
                        "user_id": str(user_id),
                        "kind": kind,
                        "seq": seq,
                    },
                },
            )
        return int(current or 0)
