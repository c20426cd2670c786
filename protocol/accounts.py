"""Accounts and sessions: register, log in, refresh, log out, who am I."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import Params, Result

Username = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    ),
    Field(
        description="3 to 32 letters, digits, `_`, `.` or `-`, starting with a "
        "letter or digit; case-insensitive.",
        examples=["alice"],
    ),
]
Password = Annotated[
    str,
    StringConstraints(min_length=8, max_length=256),
    Field(description="8 to 256 characters.", examples=["correct horse battery"]),
]
DisplayName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, strip_whitespace=True),
    Field(description="Shown to other users; defaults to the username."),
]
TokenString = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


class RegisterParams(Params):
    username: Username
    password: Password
    display_name: DisplayName | None = None


class LoginParams(Params):
    username: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RefreshParams(Params):
    refresh_token: TokenString


class LogoutParams(Params):
    refresh_token: TokenString | None = Field(
        default=None,
        description="The session to end; without it, the session of the "
        "access token used for the call.",
    )


class UserOut(Result):
    id: uuid.UUID
    username: str
    display_name: str
    created_at: datetime


class TokenPair(Result):
    token_type: Literal["Bearer"] = "Bearer"
    access_token: str
    access_expires_at: datetime
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str
    refresh_expires_at: datetime
    session_id: uuid.UUID = Field(
        description="This login; logout and refresh reuse end it everywhere."
    )
    user: UserOut


class LogoutResult(Result):
    ok: Literal[True] = True
