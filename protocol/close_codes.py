"""WebSocket close codes Squall uses, and what a client should do on each.

Codes 4000-4099 are Squall's own. ``reconnect`` answers "should the client
reconnect?"; ``advice`` says how.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str
    reconnect: bool
    advice: str


class CloseCode(enum.Enum):
    NORMAL = _Close(1000, "normal", False, "Closed on request.")
    MESSAGE_TOO_BIG = _Close(
        1009,
        "message_too_big",
        True,
        "A frame was over the size limit. Reconnect with backoff and send "
        "smaller frames.",
    )
    INVALID_PAYLOAD = _Close(
        1007,
        "invalid_payload",
        True,
        "A text frame was not UTF-8. Fix the client; reconnect with backoff.",
    )
    INTERNAL_ERROR = _Close(
        1011, "internal_error", True, "Reconnect with backoff, then sync."
    )
    SERVER_RESTARTING = _Close(
        1012,
        "server_restarting",
        True,
        "The node is draining. Reconnect after a random delay of up to a few "
        "seconds (the load balancer picks another node), then sync.",
    )
    PROTOCOL_VIOLATION = _Close(
        4000,
        "protocol_violation",
        True,
        "The client broke the framing rules (e.g. a binary frame on the JSON "
        "subprotocol). Fix the client; reconnect with backoff.",
    )
    AUTH_TIMEOUT = _Close(
        4001,
        "auth_timeout",
        True,
        "No `auth` request arrived in time. Reconnect and authenticate first.",
    )
    INVALID_TOKEN = _Close(
        4002,
        "invalid_token",
        False,
        "The token was refused. Log in again before reconnecting.",
    )
    TOKEN_EXPIRED = _Close(
        4003,
        "token_expired",
        True,
        "The access token expired. Refresh it, then reconnect and sync.",
    )
    SESSION_REVOKED = _Close(
        4004,
        "session_revoked",
        False,
        "The session was logged out or its refresh token reused. Log in again.",
    )
    FORBIDDEN = _Close(
        4005,
        "forbidden",
        False,
        "The origin or account may not connect. Do not retry.",
    )
    RATE_LIMITED = _Close(
        4006,
        "rate_limited",
        True,
        "Sustained abuse of rate limits. Reconnect after at least a minute.",
    )
    SLOW_CONSUMER = _Close(
        4007,
        "slow_consumer",
        True,
        "The client read too slowly and its outbox overflowed. Reconnect at "
        "once and sync; nothing stored is lost.",
    )

    RESYNC = _Close(
        4008,
        "resync",
        True,
        "The node lost track of this socket's conversations (it was cut off "
        "from the cluster for a while). Reconnect at once and sync.",
    )

    @property
    def code(self) -> int:
        return self.value.code

    @property
    def reason(self) -> str:
        return self.value.reason

    @property
    def reconnect(self) -> bool:
        return self.value.reconnect

    @property
    def advice(self) -> str:
        return self.value.advice

    @classmethod
    def from_code(cls, code: int | None) -> CloseCode | None:
        for member in cls:
            if member.code == code:
                return member
        return None
