"""The error catalogue shared by every surface of Squall.

Every error a client can see carries a stable snake_case ``code`` from
:class:`ErrorCode`, a human ``message``, and ``temporary``, which tells the
client whether the same request may succeed later without change. REST
answers ``{"error": {...}}`` with the HTTP status of the code; the WebSocket
protocol puts the same object in an error reply.

Codes are never renamed or reused: clients branch on them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True, slots=True)
class _Spec:
    status: int
    message: str
    temporary: bool = False


class ErrorCode(enum.Enum):
    """Every error code, with its HTTP status and default message."""

    # 400: the request itself is wrong; sending it again will not help.
    INVALID_JSON = _Spec(400, "The request body is not valid JSON.")
    VALIDATION_FAILED = _Spec(400, "The request did not pass validation.")
    BAD_REQUEST = _Spec(400, "The request is malformed.")
    INVALID_ID = _Spec(400, "The identifier is malformed.")

    # 401: who is asking is unknown or no longer trusted.
    AUTH_REQUIRED = _Spec(401, "Authentication is required.")
    INVALID_CREDENTIALS = _Spec(401, "The username or password is wrong.")
    INVALID_TOKEN = _Spec(401, "The token is invalid.")
    TOKEN_EXPIRED = _Spec(401, "The token has expired; refresh it.")
    TOKEN_REVOKED = _Spec(401, "The session was ended; log in again.")
    REFRESH_REUSED = _Spec(
        401, "This refresh token was already used; the session was ended."
    )

    # 403, 404, 405, 409
    FORBIDDEN = _Spec(403, "You may not do this.")
    NOT_FOUND = _Spec(404, "Not found.")
    METHOD_NOT_ALLOWED = _Spec(405, "This method is not allowed here.")
    USERNAME_TAKEN = _Spec(409, "This username is taken.")
    CONFLICT = _Spec(409, "The request conflicts with the current state.")

    # 413, 415, 416
    PAYLOAD_TOO_LARGE = _Spec(413, "The request body is too large.")
    UNSUPPORTED_MEDIA_TYPE = _Spec(415, "This content type is not accepted.")
    CONTENT_TYPE_MISMATCH = _Spec(
        415, "The content does not match its declared content type."
    )
    RANGE_NOT_SATISFIABLE = _Spec(416, "The requested range is not satisfiable.")

    # 429, 5xx: try again later.
    RATE_LIMITED = _Spec(429, "Too many requests; slow down.", temporary=True)
    INTERNAL_ERROR = _Spec(500, "Something went wrong on our side.", temporary=True)
    UNAVAILABLE = _Spec(503, "The service is unavailable.", temporary=True)

    @property
    def code(self) -> str:
        return self.name.lower()

    @property
    def status(self) -> int:
        return self.value.status

    @property
    def default_message(self) -> str:
        return self.value.message

    @property
    def temporary(self) -> bool:
        return self.value.temporary


class ErrorBody(BaseModel):
    """What a client is told about an error."""

    code: str = Field(description="Stable snake_case error code.")
    message: str = Field(description="Human-readable explanation; may change.")
    temporary: bool = Field(
        description="True when the same request may succeed later unchanged."
    )
    retry_after_ms: int | None = Field(
        default=None, description="How long to wait before retrying, if known."
    )
    details: dict[str, Any] | None = Field(
        default=None,
        description="Structured context, e.g. field errors under `fields`.",
    )


class ErrorResponse(BaseModel):
    """The body of every REST error response."""

    error: ErrorBody


class ApiError(Exception):
    """An error a client is meant to see.

    Raise it anywhere below a handler; the handler turns it into the wire
    shape. ``message`` overrides the catalogue text when more precise words
    help the client; it must never hold secrets or internals.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.default_message
        self.details = details
        self.retry_after_ms = retry_after_ms
        super().__init__(f"{code.code}: {self.message}")

    @property
    def status(self) -> int:
        return self.code.status

    def body(self) -> ErrorBody:
        return ErrorBody(
            code=self.code.code,
            message=self.message,
            temporary=self.code.temporary,
            retry_after_ms=self.retry_after_ms,
            details=self.details,
        )


def field_errors(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """Turn pydantic's error list into ``details`` a client can map to fields.

    Only locations, codes and messages are kept; pydantic's ``input`` echo is
    dropped so that a password never comes back in an error.
    """
    fields = []
    for err in errors:
        loc = ".".join(str(part) for part in err.get("loc", ()))
        fields.append(
            {"field": loc, "code": str(err.get("type")), "message": err.get("msg")}
        )
    return {"fields": fields}
