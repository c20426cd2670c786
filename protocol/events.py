"""The events the server pushes: the shape of each one's ``data``.

An event frame is ``{"event", "channel"?, "seq"?, "data"}``. Events that
record a change to a conversation are kept in its log and carry the
``seq`` the change was given; the others are ephemeral and carry none.
Names starting with ``_`` are the node's own control events and never
reach a client, so they are not listed here.

Clients should ignore fields they do not know: new optional fields may be
added to an event's data without a new protocol version.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from . import chat
from .base import Result

CONVERSATION_CHANNEL = "conv:{conversation_id}"
PRESENCE_CHANNEL = "presence:{user_id}"


class ConversationSummary(Result):
    """Enough of a conversation to show it before fetching the rest."""

    id: uuid.UUID
    kind: Literal["direct", "group"]
    title: str | None


class MessageEdited(Result):
    message_id: uuid.UUID
    message_seq: int = Field(description="seq of the edited message.")
    text: str = Field(
        description="The new text; empty once the message has been deleted."
    )
    edited_at: datetime


class MessageDeleted(Result):
    message_id: uuid.UUID
    message_seq: int = Field(description="seq of the deleted message.")
    deleted_at: datetime


class MemberAdded(Result):
    user_ids: list[uuid.UUID] = Field(
        description="Who joined. When a conversation is created, all of its "
        "first members, its creator included."
    )
    by: uuid.UUID = Field(description="Who added them.")
    conversation: ConversationSummary


class MemberRemoved(Result):
    user_id: uuid.UUID = Field(description="Who is no longer a member.")
    by: uuid.UUID = Field(
        description="Who removed them; equal to `user_id` when they left."
    )


class ConversationUpdated(ConversationSummary):
    """The conversation as it is after the change (a group's new title)."""


class Receipt(Result):
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    kind: Literal["delivered", "read"]
    seq: int = Field(
        description="The member's new delivered or read mark (a conversation "
        "seq); the event frame itself has no seq."
    )


class Typing(Result):
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    state: Literal["start", "stop"]
    expires_in_ms: int = Field(
        description="After a start, how long until the server sends stop on "
        "its own unless the start is repeated; 0 on stop."
    )


class Presence(Result):
    user_id: uuid.UUID
    online: bool
    last_seen_at: datetime | None = Field(
        default=None, description="When the user went offline; absent when online."
    )


class SessionExpiring(Result):
    expires_at: datetime = Field(
        description="When the socket's access token expires; the socket is "
        "closed with 4003 then unless `auth` is called with a fresh token."
    )


@dataclass(frozen=True)
class EventSpec:
    name: str
    data: type[BaseModel]
    summary: str
    #: True when the event is in a conversation's log and carries its seq.
    seq: bool
    #: The channel the event arrives on, as a template; None for no channel.
    channel: str | None = CONVERSATION_CHANNEL


_SPECS = [
    EventSpec("message.new", chat.MessageOut, "A message was sent", seq=True),
    EventSpec("message.edited", MessageEdited, "A message's text changed", seq=True),
    EventSpec(
        "message.deleted",
        MessageDeleted,
        "A message was deleted; its text is gone from history and sync",
        seq=True,
    ),
    EventSpec(
        "member.added",
        MemberAdded,
        "Users joined a conversation, or it was created with them",
        seq=True,
    ),
    EventSpec(
        "member.removed",
        MemberRemoved,
        "A member left or was removed; the removed user's last event in it",
        seq=True,
    ),
    EventSpec(
        "conversation.updated",
        ConversationUpdated,
        "A group's title changed",
        seq=True,
    ),
    EventSpec(
        "receipt",
        Receipt,
        "A member's delivered or read mark moved forward",
        seq=False,
    ),
    EventSpec(
        "typing",
        Typing,
        "A member started or stopped typing",
        seq=False,
    ),
    EventSpec(
        "presence",
        Presence,
        "A watched user came online or went offline",
        seq=False,
        channel=PRESENCE_CHANNEL,
    ),
    EventSpec(
        "session.expiring",
        SessionExpiring,
        "The socket's access token expires soon; call `auth` with a fresh one",
        seq=False,
        channel=None,
    ),
]

EVENT_SPECS: dict[str, EventSpec] = {spec.name: spec for spec in _SPECS}

#: The data model of every event a client can receive.
EVENTS: dict[str, type[BaseModel]] = {spec.name: spec.data for spec in _SPECS}
