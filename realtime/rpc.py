"""Every RPC method in one table, served alike over the socket and over
``POST /v1/rpc/{method}``.

A method names its params and result models (the same ones the AsyncAPI
and OpenAPI documents are built from), its rate class, and whether it only
makes sense on a socket.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from protocol import chat
from protocol.errors import ApiError, ErrorCode
from protocol.methods import METHODS, MethodSpec
from realtime.node import Node
from realtime.services.accounts import Principal

if TYPE_CHECKING:
    from realtime.session import Session


@dataclass
class Call:
    node: Node
    principal: Principal
    #: The socket the call came on; None over REST.
    session: Session | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.principal.user_id


Handler = Callable[[Call, Any], Awaitable[BaseModel]]


@dataclass(frozen=True)
class Method:
    spec: MethodSpec
    handler: Handler

    @property
    def name(self) -> str:
        return self.spec.name


HANDLERS: dict[str, Handler] = {}


def method(name: str) -> Callable[[Handler], Handler]:
    """Bind the handler of a method named in :data:`protocol.methods.METHODS`."""
    if name not in METHODS:
        raise KeyError(f"{name} is not in the protocol's method table")

    def register(handler: Handler) -> Handler:
        HANDLERS[name] = handler
        return handler

    return register


def lookup(name: str) -> Method:
    spec = METHODS.get(name)
    if spec is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"Unknown method {name[:64]!r}.")
    return Method(spec, HANDLERS[name])


# The methods.


@method("ping")
async def _ping(call: Call, params: chat.PingParams) -> chat.PingResult:
    return chat.PingResult(server_time=datetime.now(UTC))


@method("conversation.create")
async def _create(call: Call, p: chat.ConversationCreateParams) -> chat.ConversationOut:
    return await call.node.conversations.create(call.user_id, p)


@method("conversation.list")
async def _list(call: Call, p: chat.ConversationListParams) -> chat.ConversationList:
    return chat.ConversationList(
        conversations=await call.node.conversations.list_for(call.user_id)
    )


@method("conversation.get")
async def _get(call: Call, p: chat.ConversationRef) -> chat.ConversationOut:
    return await call.node.conversations.get(call.user_id, p.conversation_id)


@method("conversation.update")
async def _update(call: Call, p: chat.ConversationUpdateParams) -> chat.ConversationOut:
    return await call.node.conversations.update(call.user_id, p)


@method("users.lookup")
async def _lookup(call: Call, p: chat.UsersLookupParams) -> chat.UsersLookupResult:
    return chat.UsersLookupResult(users=await call.node.accounts.lookup(p.usernames))


@method("conversation.add_members")
async def _add(call: Call, p: chat.AddMembersParams) -> chat.ConversationOut:
    return await call.node.conversations.add_members(call.user_id, p)


@method("conversation.remove_member")
async def _remove(call: Call, p: chat.RemoveMemberParams) -> chat.Ok:
    await call.node.conversations.remove_member(
        call.user_id, p.conversation_id, p.user_id
    )
    return chat.Ok()


@method("conversation.leave")
async def _leave(call: Call, p: chat.ConversationRef) -> chat.Ok:
    await call.node.conversations.leave(call.user_id, p.conversation_id)
    return chat.Ok()


@method("message.send")
async def _send(call: Call, p: chat.SendParams) -> chat.SendResult:
    return await call.node.messages.send(call.user_id, p)


@method("message.edit")
async def _edit(call: Call, p: chat.EditParams) -> chat.ChangeResult:
    return await call.node.messages.edit(call.user_id, p)


@method("message.delete")
async def _delete(call: Call, p: chat.DeleteParams) -> chat.ChangeResult:
    return await call.node.messages.delete(call.user_id, p)


@method("message.history")
async def _history(call: Call, p: chat.HistoryParams) -> chat.HistoryResult:
    return await call.node.messages.history(call.user_id, p)


@method("message.ack")
async def _ack(call: Call, p: chat.SeqParams) -> chat.Ok:
    await call.node.messages.ack(call.user_id, p.conversation_id, p.seq)
    return chat.Ok()


@method("message.read")
async def _read(call: Call, p: chat.SeqParams) -> chat.ReadResult:
    return await call.node.messages.read(call.user_id, p.conversation_id, p.seq)


@method("typing")
async def _typing(call: Call, p: chat.TypingParams) -> chat.Ok:
    await call.node.conversations.members.role_of(p.conversation_id, call.user_id)
    await call.node.typing.set(p.conversation_id, call.user_id, p.state)
    return chat.Ok()


@method("presence.get")
async def _presence(call: Call, p: chat.PresenceParams) -> chat.PresenceResult:
    if call.session is not None:
        await call.session.watch_presence(p.user_ids)
    return chat.PresenceResult(presence=await call.node.presence.get(p.user_ids))


@method("sync")
async def _sync(call: Call, p: chat.SyncParams) -> chat.SyncResult:
    if call.session is not None:
        return await call.session.sync(p)
    return await call.node.messages.sync(call.user_id, p)


@method("auth")
async def _auth(call: Call, p: chat.AuthParams) -> chat.AuthResult:
    if call.session is None:
        raise ApiError(ErrorCode.BAD_REQUEST, "auth is a socket method.")
    return await call.session.authenticate(p.token)
