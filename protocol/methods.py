"""The RPC methods of protocol v1: name, params, result, rate class.

This table is the contract; the node binds a handler to each name, and the
AsyncAPI and OpenAPI documents are generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from . import chat


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[BaseModel]
    result: type[BaseModel]
    summary: str
    #: Which per-socket token bucket a call takes from.
    rate_class: str = "default"
    #: Meaningless without a socket (not offered over REST).
    socket_only: bool = False


_SPECS = [
    MethodSpec(
        "auth",
        chat.AuthParams,
        chat.AuthResult,
        "Authenticate the socket, or swap its token for a fresh one",
        socket_only=True,
    ),
    MethodSpec(
        "ping", chat.PingParams, chat.PingResult, "Round trip; the server's clock"
    ),
    MethodSpec(
        "conversation.create",
        chat.ConversationCreateParams,
        chat.ConversationOut,
        "Start a group, or open the direct conversation with one user",
        "write",
    ),
    MethodSpec(
        "conversation.list",
        chat.ConversationListParams,
        chat.ConversationList,
        "The caller's conversations with unread counts",
        "read",
    ),
    MethodSpec(
        "conversation.get",
        chat.ConversationRef,
        chat.ConversationOut,
        "One conversation with its members",
        "read",
    ),
    MethodSpec(
        "conversation.update",
        chat.ConversationUpdateParams,
        chat.ConversationOut,
        "Rename a group (owners and admins), or mute it for oneself",
        "write",
    ),
    MethodSpec(
        "users.lookup",
        chat.UsersLookupParams,
        chat.UsersLookupResult,
        "Find users by username, e.g. to start a conversation",
        "read",
    ),
    MethodSpec(
        "conversation.add_members",
        chat.AddMembersParams,
        chat.ConversationOut,
        "Add users to a group",
        "write",
    ),
    MethodSpec(
        "conversation.remove_member",
        chat.RemoveMemberParams,
        chat.Ok,
        "Remove a member from a group (owners and admins)",
        "write",
    ),
    MethodSpec(
        "conversation.leave", chat.ConversationRef, chat.Ok, "Leave a group", "write"
    ),
    MethodSpec(
        "message.send",
        chat.SendParams,
        chat.SendResult,
        "Send a message; a retry with the same client_msg_id is answered from storage",
        "write",
    ),
    MethodSpec(
        "message.edit",
        chat.EditParams,
        chat.ChangeResult,
        "Edit one's message",
        "write",
    ),
    MethodSpec(
        "message.delete",
        chat.DeleteParams,
        chat.ChangeResult,
        "Delete a message (its sender, or a group's owners and admins)",
        "write",
    ),
    MethodSpec(
        "message.history",
        chat.HistoryParams,
        chat.HistoryResult,
        "A page of messages before or after a seq",
        "read",
    ),
    MethodSpec(
        "message.ack",
        chat.SeqParams,
        chat.Ok,
        "This device has received everything up to seq",
        "receipt",
    ),
    MethodSpec(
        "message.read",
        chat.SeqParams,
        chat.ReadResult,
        "The user has read everything up to seq",
        "receipt",
    ),
    MethodSpec("typing", chat.TypingParams, chat.Ok, "Start or stop typing", "typing"),
    MethodSpec(
        "presence.get",
        chat.PresenceParams,
        chat.PresenceResult,
        "Who is online; on a socket, also watch them for presence events",
        "read",
    ),
    MethodSpec(
        "sync",
        chat.SyncParams,
        chat.SyncResult,
        "Everything missed since the given positions, in order; repeat until complete",
        "read",
    ),
]

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
