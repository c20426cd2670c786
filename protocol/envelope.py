"""The three shapes of a frame: request, reply, event.

- request ``{"id", "method", "params"}`` from client to server;
- reply ``{"id", "result"}`` or ``{"id", "error": {...}}``, one per request;
- event ``{"event", "channel"?, "seq"?, "data"}`` pushed by the server.

Per conversation channel, events that carry a ``seq`` arrive in ``seq``
order with no gap and no duplicate; ``typing``, ``presence`` and
``receipt`` events are ephemeral and carry none.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .errors import ErrorBody

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64)] | int


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: RequestId = Field(description="Chosen by the client; echoed in the reply.")
    method: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any] = Field(default_factory=dict)


class Reply(BaseModel):
    id: RequestId | None
    result: Any = None


class ErrorReply(BaseModel):
    id: RequestId | None
    error: ErrorBody


class Event(BaseModel):
    event: str
    channel: str | None = None
    seq: int | None = None
    data: dict[str, Any]


def conversation_channel(conversation_id: object) -> str:
    # Interned: a node holds this name once per socket following it.
    return sys.intern(f"conv:{conversation_id}")


def user_channel(user_id: object) -> str:
    return f"user:{user_id}"
