"""Messages, receipts and the catch-up a reconnecting client asks for."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

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
    log_event,
    next_seq,
)
from .conversations import MANAGERS, ConversationService

logger = logging.getLogger(__name__)

#: Event data per sync page past its first event, so that one reply stays
#: well inside a socket's outbox.
SYNC_PAGE_BYTES = 512 * 1024


def _message_data(
    msg: Message, attachment_ids: list[uuid.UUID] | list[str]
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

    async def _publish(self, event: StoredEvent) -> None:
        envelope = event.envelope()
        await self.publish(envelope["channel"], envelope)

    # Sending and changing.

    async def send(self, user_id: uuid.UUID, params: SendParams) -> SendResult:
        conv_id = params.conversation_id
        await self.members.role_of(conv_id, user_id)
        try:
            async with self.db.transaction() as session:
                attachments: list[Attachment] = []
                if params.attachment_ids:
                    attachments = list(
                        await session.scalars(
                            select(Attachment).where(
                                Attachment.id.in_(params.attachment_ids),
                                Attachment.uploader_id == user_id,
                                Attachment.message_id.is_(None),
                            )
                        )
                    )
                    if len(attachments) != len(set(params.attachment_ids)):
                        raise ApiError(
                            ErrorCode.VALIDATION_FAILED,
                            "Attachments must be your own uploads, not yet attached.",
                        )
                seq = await next_seq(session, conv_id)
                msg = Message(
                    id=uuid.uuid4(),
                    conversation_id=conv_id,
                    seq=seq,
                    sender_id=user_id,
                    client_msg_id=params.client_msg_id,
                    body=params.text,
                    created_at=utcnow(),
                )
                session.add(msg)
                for att in attachments:
                    att.message_id = msg.id
                event = log_event(
                    session,
                    conv_id,
                    seq,
                    "message.new",
                    _message_data(msg, params.attachment_ids),
                )
                # The sender has seen what they sent. (This statement also
                # flushes the inserts above.)
                await session.execute(
                    update(Member)
                    .where(
                        Member.conversation_id == conv_id,
                        Member.user_id == user_id,
                        Member.last_read_seq < seq,
                    )
                    .values(last_read_seq=seq, last_delivered_seq=seq)
                )
        except IntegrityError:
            # A retry: (sender, client_msg_id) is stored already. The failed
            # transaction gave back its seq; answer with the original.
            stored = await self._find_sent(user_id, params.client_msg_id)
            if stored is None:
                raise
            return stored
        await self._publish(event)
        return SendResult(message_id=msg.id, seq=seq, created_at=msg.created_at)

    async def _find_sent(
        self, user_id: uuid.UUID, client_msg_id: str
    ) -> SendResult | None:
        async with self.db.sessions() as session:
            row = (
                await session.execute(
                    select(Message.id, Message.seq, Message.created_at).where(
                        Message.sender_id == user_id,
                        Message.client_msg_id == client_msg_id,
                    )
                )
            ).first()
        if row is None:
            return None
        return SendResult(message_id=row.id, seq=row.seq, created_at=row.created_at)

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
