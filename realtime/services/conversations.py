"""Conversations and who is in them."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.chat import (
    AddMembersParams,
    ConversationCreateParams,
    ConversationOut,
    ConversationUpdateParams,
    MemberOut,
)
from protocol.envelope import user_channel
from protocol.errors import ApiError, ErrorCode
from realtime.storage.database import Database
from realtime.storage.models import Conversation, Member, Message, User

from .chatlog import (
    SUBSCRIBE,
    UNSUBSCRIBE,
    MemberCache,
    Publish,
    StoredEvent,
    append_event,
)

logger = logging.getLogger(__name__)

MANAGERS = {"owner", "admin"}


def _direct_key(a: uuid.UUID, b: uuid.UUID) -> str:
    low, high = sorted((str(a), str(b)))
    return f"{low}:{high}"


class ConversationService:
    def __init__(self, db: Database, members: MemberCache, publish: Publish) -> None:
        self.db = db
        self.members = members
        self.publish = publish

    # Reading.

    async def memberships(self, user_id: uuid.UUID) -> dict[uuid.UUID, int]:
        """Every conversation of the user, with its newest seq."""
        async with self.db.sessions() as session:
            rows = await session.execute(
                select(Conversation.id, Conversation.last_seq)
                .join(Member, Member.conversation_id == Conversation.id)
                .where(Member.user_id == user_id)
            )
            return {conv_id: last_seq for conv_id, last_seq in rows}

    async def heads(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """The newest seq of each of these conversations, one query per 500."""
        found: dict[uuid.UUID, int] = {}
        async with self.db.sessions() as session:
            for start in range(0, len(ids), 500):
                rows = await session.execute(
                    select(Conversation.id, Conversation.last_seq).where(
                        Conversation.id.in_(ids[start : start + 500])
                    )
                )
                found.update({conv_id: last_seq for conv_id, last_seq in rows})
        return found

    async def conversations_of(
        self, user_ids: set[uuid.UUID]
    ) -> dict[uuid.UUID, set[uuid.UUID]]:
        """The conversation ids of each of these users, in one query per 500."""
        found: dict[uuid.UUID, set[uuid.UUID]] = {u: set() for u in user_ids}
        ids = list(user_ids)
        async with self.db.sessions() as session:
            for start in range(0, len(ids), 500):
                rows = await session.execute(
                    select(Member.user_id, Member.conversation_id).where(
                        Member.user_id.in_(ids[start : start + 500])
                    )
                )
                for user_id, conv_id in rows:
                    found[user_id].add(conv_id)
        return found

    async def list_for(self, user_id: uuid.UUID) -> list[ConversationOut]:
        async with self.db.sessions() as session:
            ids = list(
                await session.scalars(
                    select(Member.conversation_id).where(Member.user_id == user_id)
                )
            )
            return await self._describe(session, user_id, ids)

    async def get(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> ConversationOut:
        await self.members.role_of(conversation_id, user_id)
        async with self.db.sessions() as session:
            found = await self._describe(session, user_id, [conversation_id])
        if not found:
            raise ApiError(ErrorCode.NOT_FOUND, "No such conversation.")
        return found[0]

    async def _describe(
        self, session: AsyncSession, user_id: uuid.UUID, ids: list[uuid.UUID]
    ) -> list[ConversationOut]:
        if not ids:
            return []
        convs = {
            c.id: c
            for c in await session.scalars(
                select(Conversation).where(Conversation.id.in_(ids))
            )
        }
        members: dict[uuid.UUID, list[Member]] = {}
        for m in await session.scalars(
            select(Member)
            .where(Member.conversation_id.in_(ids))
            .order_by(Member.joined_at, Member.user_id)
        ):
            members.setdefault(m.conversation_id, []).append(m)
        mine = Member.__table__.alias("mine")
        unread_rows = await session.execute(
            select(Message.conversation_id, func.count())
            .join(
                mine,
                and_(
                    mine.c.conversation_id == Message.conversation_id,
                    mine.c.user_id == user_id,
                ),
            )
            .where(
                Message.conversation_id.in_(ids),
                Message.seq > mine.c.last_read_seq,
                Message.deleted_at.is_(None),
                or_(Message.sender_id.is_(None), Message.sender_id != user_id),
            )
            .group_by(Message.conversation_id)
        )
        unread = {conv_id: count for conv_id, count in unread_rows}
        out = []
        for conv_id in sorted(convs, key=lambda c: (convs[c].created_at, str(c))):
            conv = convs[conv_id]
            conv_members = members.get(conv_id, [])
            me = next((m for m in conv_members if m.user_id == user_id), None)
            out.append(
                ConversationOut(
                    id=conv.id,
                    kind=conv.kind,
                    title=conv.title,
                    created_at=conv.created_at,
                    last_seq=conv.last_seq,
                    members=[
                        MemberOut(
                            user_id=m.user_id,
                            role=m.role,
                            last_read_seq=m.last_read_seq,
                            last_delivered_seq=m.last_delivered_seq,
                        )
                        for m in conv_members
                    ],
                    unread_count=unread.get(conv_id, 0),
                    muted=bool(me and me.muted),
                )
            )
        return out

    # Changing.

    async def create(
        self, user_id: uuid.UUID, params: ConversationCreateParams
    ) -> ConversationOut:
        others = list(dict.fromkeys(m for m in params.member_ids if m != user_id))
        direct_key = None
        if params.kind == "direct":
            if len(others) != 1 or params.title is not None:
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED,
                    "A direct conversation has exactly one other member and no title.",
                )
            direct_key = _direct_key(user_id, others[0])
            existing = await self._find_direct(direct_key)
            if existing is not None:
                return await self.get(user_id, existing)
        elif params.title is None:
            raise ApiError(ErrorCode.VALIDATION_FAILED, "A group needs a title.")

        try:
            async with self.db.transaction() as session:
                await self._require_users(session, others)
                conv = Conversation(
                    id=uuid.uuid4(),
                    kind=params.kind,
                    title=params.title,
                    direct_key=direct_key,
                    created_by=user_id,
                )
                session.add(conv)
                await session.flush()
                owner_role = "owner" if params.kind == "group" else "member"
                session.add(
                    Member(conversation_id=conv.id, user_id=user_id, role=owner_role)
                )
                for other in others:
                    session.add(Member(conversation_id=conv.id, user_id=other))
                await session.flush()
                event = await append_event(
                    session,
                    conv.id,
                    "member.added",
                    {
                        "user_ids": [str(u) for u in [user_id, *others]],
                        "by": str(user_id),
                        "conversation": _summary(conv),
                    },
                )
        except IntegrityError:
            # Two users opened the same direct conversation at once.
            if direct_key is None:
                raise
            existing = await self._find_direct(direct_key)
            if existing is None:
                raise
            return await self.get(user_id, existing)

        logger.info("conversation created id=%s kind=%s", conv.id, conv.kind)
        await self._announce_joins(event, [user_id, *others])
        return await self.get(user_id, conv.id)

    async def update(
        self, user_id: uuid.UUID, params: ConversationUpdateParams
    ) -> ConversationOut:
        conv_id = params.conversation_id
        role = await self.members.role_of(conv_id, user_id)
        event = None
        async with self.db.transaction() as session:
            if params.muted is not None:
                await session.execute(
                    update(Member)
                    .where(Member.conversation_id == conv_id, Member.user_id == user_id)
                    .values(muted=params.muted)
                )
            if params.title is not None:
                conv = await self._group(session, conv_id)
                if role not in MANAGERS:
                    raise ApiError(
                        ErrorCode.FORBIDDEN, "Only owners and admins rename a group."
                    )
                if params.title != conv.title:
                    conv.title = params.title
                    event = await append_event(
                        session, conv_id, "conversation.updated", _summary(conv)
                    )
        if event is not None:
            await self.publish(event.envelope()["channel"], event.envelope())
        return await self.get(user_id, conv_id)

    async def add_members(
        self, user_id: uuid.UUID, params: AddMembersParams
    ) -> ConversationOut:
        conv_id = params.conversation_id
        await self.members.role_of(conv_id, user_id)
        async with self.db.transaction() as session:
            conv = await self._group(session, conv_id)
            present = set(
                await session.scalars(
                    select(Member.user_id).where(Member.conversation_id == conv_id)
                )
            )
            new = [u for u in dict.fromkeys(params.user_ids) if u not in present]
            event = None
            if new:
                await self._require_users(session, new)
                for other in new:
                    session.add(Member(conversation_id=conv_id, user_id=other))
                await session.flush()
                event = await append_event(
                    session,
                    conv_id,
                    "member.added",
                    {
                        "user_ids": [str(u) for u in new],
                        "by": str(user_id),
                        "conversation": _summary(conv),
                    },
                )
        self.members.invalidate(conv_id)
        if event is not None:
            await self._announce_joins(event, new)
        return await self.get(user_id, conv_id)

    async def remove_member(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, target: uuid.UUID
    ) -> None:
        role = await self.members.role_of(conversation_id, user_id)
        if target != user_id and role not in MANAGERS:
            raise ApiError(ErrorCode.FORBIDDEN, "Only owners and admins remove others.")
        await self._remove(user_id, conversation_id, target)

    async def leave(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        await self.members.role_of(conversation_id, user_id)
        await self._remove(user_id, conversation_id, user_id)

    async def _remove(
        self, by: uuid.UUID, conversation_id: uuid.UUID, target: uuid.UUID
    ) -> None:
        async with self.db.transaction() as session:
            await self._group(session, conversation_id)
            gone = await session.execute(
                delete(Member).where(
                    Member.conversation_id == conversation_id, Member.user_id == target
                )
            )
            if gone.rowcount == 0:  # type: ignore[attr-defined]
                raise ApiError(ErrorCode.NOT_FOUND, "Not a member.")
            event = await append_event(
                session,
                conversation_id,
                "member.removed",
                {"user_id": str(target), "by": str(by)},
            )
        self.members.invalidate(conversation_id)
        await self.publish(event.envelope()["channel"], event.envelope())
        # The removed user's sockets get the event itself, then stop
        # receiving the conversation.
        await self.publish(
            user_channel(target),
            {
                "event": UNSUBSCRIBE,
                "data": {"conversation_id": str(conversation_id), "seq": event.seq},
            },
        )

    # Helpers.

    async def _announce_joins(
        self, event: StoredEvent, joined: list[uuid.UUID]
    ) -> None:
        envelope = event.envelope()
        await self.publish(envelope["channel"], envelope)
        for user in joined:
            await self.publish(
                user_channel(user),
                {
                    "event": SUBSCRIBE,
                    "data": {
                        "conversation_id": str(event.conversation_id),
                        "after": event.seq - 1,
                    },
                },
            )

    async def _find_direct(self, key: str) -> uuid.UUID | None:
        async with self.db.sessions() as session:
            return await session.scalar(
                select(Conversation.id).where(Conversation.direct_key == key)
            )

    async def _group(self, session: AsyncSession, conv_id: uuid.UUID) -> Conversation:
        conv = await session.get(Conversation, conv_id)
        if conv is None:
            raise ApiError(ErrorCode.NOT_FOUND, "No such conversation.")
        if conv.kind != "group":
            raise ApiError(
                ErrorCode.FORBIDDEN, "Members of a direct conversation cannot change."
            )
        return conv

    @staticmethod
    async def _require_users(session: AsyncSession, ids: list[uuid.UUID]) -> None:
        if not ids:
            return
        found = set(await session.scalars(select(User.id).where(User.id.in_(ids))))
        missing = [str(u) for u in ids if u not in found]
        if missing:
            raise ApiError(
                ErrorCode.NOT_FOUND, "No such user.", details={"user_ids": missing}
            )


def _summary(conv: Conversation) -> dict[str, Any]:
    return {"id": str(conv.id), "kind": conv.kind, "title": conv.title}
