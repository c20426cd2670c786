"""Conversations, messages, receipts, typing, presence and sync: the
parameters and results of each RPC method, and the data of each event."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from .base import Params, Result

Seq = Annotated[int, Field(ge=0, le=2**62)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=8000)]
Title = Annotated[
    str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)
]
ClientMsgId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$"),
]
PAGE_MAX = 100
SYNC_PAGE_MAX = 1000

# Results and event data.


class MemberOut(Result):
    user_id: uuid.UUID
    role: Literal["owner", "admin", "member"]
    last_read_seq: int
    last_delivered_seq: int


class ConversationOut(Result):
    id: uuid.UUID
    kind: Literal["direct", "group"]
    title: str | None
    created_at: datetime
    last_seq: int = Field(description="seq of the newest event.")
    members: list[MemberOut]
    unread_count: int = Field(description="Messages after the caller's read seq.")
    muted: bool


class MessageOut(Result):
    id: uuid.UUID
    conversation_id: uuid.UUID
    seq: int
    sender_id: uuid.UUID | None
    client_msg_id: str
    text: str
    attachment_ids: list[uuid.UUID]
    created_at: datetime
    edited_at: datetime | None
    deleted: bool


class EventOut(Result):
    """One stored conversation event, as ``sync`` returns it and as it is
    pushed live (the same fields as an event frame)."""

    event: str
    channel: str
    seq: int
    data: dict[str, Any]


# Params and results, method by method.


class AuthParams(Params):
    token: Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class AuthResult(Result):
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


class PingParams(Params):
    pass


class PingResult(Result):
    pong: Literal[True] = True
    server_time: datetime


class ConversationCreateParams(Params):
    kind: Literal["direct", "group"]
    member_ids: list[uuid.UUID] = Field(
        max_length=256,
        description="Others to add. A direct conversation has exactly one.",
    )
    title: Title | None = None


class ConversationListParams(Params):
    pass


class ConversationList(Result):
    conversations: list[ConversationOut]


class ConversationRef(Params):
    conversation_id: uuid.UUID


class ConversationUpdateParams(Params):
    conversation_id: uuid.UUID
    title: Title | None = Field(
        default=None, description="New group title (owners and admins)."
    )
    muted: bool | None = Field(
        default=None, description="Mute the conversation for the caller only."
    )


class UsersLookupParams(Params):
    usernames: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = (
        Field(min_length=1, max_length=100)
    )


class PublicUser(Result):
    id: uuid.UUID
    username: str
    display_name: str


class UsersLookupResult(Result):
    users: list[PublicUser] = Field(
        description="Those found; unknown names are left out."
    )


class AddMembersParams(Params):
    conversation_id: uuid.UUID
    user_ids: list[uuid.UUID] = Field(min_length=1, max_length=256)


class RemoveMemberParams(Params):
    conversation_id: uuid.UUID
    user_id: uuid.UUID


class Ok(Result):
    ok: Literal[True] = True


class SendParams(Params):
    conversation_id: uuid.UUID
    client_msg_id: ClientMsgId = Field(
        description="Unique per sender; a retry with the same id returns the "
        "stored message and stores nothing new."
    )
    text: Text
    attachment_ids: list[uuid.UUID] = Field(default_factory=list, max_length=10)


class SendResult(Result):
    message_id: uuid.UUID
    seq: int
    created_at: datetime


class EditParams(Params):
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    text: Text


class DeleteParams(Params):
    conversation_id: uuid.UUID
    message_id: uuid.UUID


class ChangeResult(Result):
    seq: int = Field(description="seq of the event that records the change.")


class HistoryParams(Params):
    conversation_id: uuid.UUID
    before_seq: Seq | None = None
    after_seq: Seq | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


class HistoryResult(Result):
    messages: list[MessageOut] = Field(description="Oldest first.")
    has_more: bool


class SeqParams(Params):
    conversation_id: uuid.UUID
    seq: Seq


class ReadResult(Result):
    last_read_seq: int
    unread_count: int


class TypingParams(Params):
    conversation_id: uuid.UUID
    state: Literal["start", "stop"]


class PresenceParams(Params):
    user_ids: list[uuid.UUID] = Field(min_length=1, max_length=200)


class PresenceOut(Result):
    user_id: uuid.UUID
    online: bool
    last_seen_at: datetime | None


class PresenceResult(Result):
    presence: list[PresenceOut]


class SyncParams(Params):
    positions: dict[uuid.UUID, Seq] = Field(
        default_factory=dict,
        max_length=10_000,
        description="Last seq the client has per conversation. Conversations "
        "of the caller not named here are sent from the start.",
    )
    limit: Annotated[int, Field(ge=1, le=SYNC_PAGE_MAX)] = 500


class SyncResult(Result):
    events: list[EventOut] = Field(description="In seq order per conversation.")
    positions: dict[uuid.UUID, int] = Field(
        description="The last seq now given per conversation."
    )
    complete: bool = Field(
        description="True when nothing more is missing; otherwise call sync "
        "again with `positions`."
    )
    removed: list[uuid.UUID] = Field(
        default_factory=list,
        description="Conversations in `positions` the caller no longer belongs to.",
    )
