"""Signed JWTs for access and refresh.

Rules that hold for every token Squall accepts:

- the algorithm is the one configured, never what the token's header asks
  for (so ``alg: none`` and HS/RS confusion fail);
- ``sub``, ``exp``, ``iat``, ``jti``, ``typ``, ``aud``, ``iss`` and ``sid``
  must all be present, and ``aud``/``iss`` must match;
- ``typ`` must be the kind the caller expects, so a refresh token never
  passes as an access token, nor the reverse;
- with asymmetric keys a ``kid`` is written, and a token naming another key
  is refused.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from realtime.settings import JwtAlgorithm, Settings

REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti", "typ", "aud", "iss", "sid")


class TokenType(enum.StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


class TokenError(Exception):
    """A token was refused. ``expired`` tells apart the one case a client fixes
    by refreshing."""

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: uuid.UUID
    family_id: uuid.UUID
    jti: uuid.UUID
    type: TokenType
    issued_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    jti: uuid.UUID
    expires_at: int


class TokenCodec:
    """Issues and verifies tokens under one key and algorithm."""

    def __init__(
        self,
        *,
        algorithm: JwtAlgorithm,
        signing_key: Any,
        verifying_key: Any,
        issuer: str,
        audience: str,
        access_ttl_s: int,
        refresh_ttl_s: int,
        key_id: str = "",
        leeway_s: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithm = algorithm
        self._signing_key = signing_key
        self._verifying_key = verifying_key
        self.issuer = issuer
        self.audience = audience
        self.access_ttl_s = access_ttl_s
        self.refresh_ttl_s = refresh_ttl_s
        self.key_id = key_id
        self.leeway_s = leeway_s
        self._clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.time
    ) -> TokenCodec:
        if settings.jwt_algorithm is JwtAlgorithm.HS256:
            secret = settings.hs_secret()
            signing: Any = secret
            verifying: Any = secret
        else:
            assert settings.jwt_private_key_file is not None
            assert settings.jwt_public_key_file is not None
            signing = _read_key(settings.jwt_private_key_file)
            verifying = _read_key(settings.jwt_public_key_file)
        return cls(
            algorithm=settings.jwt_algorithm,
            signing_key=signing,
            verifying_key=verifying,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            key_id=settings.jwt_key_id,
            leeway_s=settings.jwt_leeway_s,
            clock=clock,
        )

    def issue(
        self, token_type: TokenType, user_id: uuid.UUID, family_id: uuid.UUID
    ) -> IssuedToken:
        now = int(self._clock())
        ttl = (
            self.access_ttl_s if token_type is TokenType.ACCESS else self.refresh_ttl_s
        )
        jti = uuid.uuid4()
        claims = {
            "sub": str(user_id),
            "sid": str(family_id),
            "jti": str(jti),
            "typ": token_type.value,
            "iat": now,
            "exp": now + ttl,
            "iss": self.issuer,
            "aud": self.audience,
        }
        headers = {"kid": self.key_id} if self.key_id else None
        token = jwt.encode(
            claims, self._signing_key, algorithm=self.algorithm.value, headers=headers
        )
        return IssuedToken(token=token, jti=jti, expires_at=now + ttl)

    def verify(
        self, token: str, expected: TokenType, *, allow_expired: bool = False
    ) -> Claims:
        """Check a token fully; raise :class:`TokenError` with the reason.

        ``allow_expired`` skips only the expiry check: logging out with an
        expired refresh token must still end its session.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise TokenError("malformed token") from exc
        if self.key_id and header.get("kid") != self.key_id:
            raise TokenError("unknown key id")
        try:
            payload = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm.value],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": not allow_expired,
                },
            )
            # PyJWT checks exp against the wall clock; an injected clock (in
            # tests, or a skewed host) is checked here as well.
            if not allow_expired and payload["exp"] + self.leeway_s < self._clock():
                raise jwt.ExpiredSignatureError("expired")
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired", expired=True) from exc
        except jwt.InvalidTokenError as exc:
            raise TokenError(f"invalid token: {type(exc).__name__}") from exc

        if payload.get("typ") != expected.value:
            raise TokenError(f"expected a {expected.value} token")
        ids = (payload["sub"], payload["sid"], payload["jti"])
        if not all(isinstance(value, str) for value in ids):
            raise TokenError("malformed claims")
        try:
            return Claims(
                user_id=uuid.UUID(payload["sub"]),
                family_id=uuid.UUID(payload["sid"]),
                jti=uuid.UUID(payload["jti"]),
                type=expected,
                issued_at=int(payload["iat"]),
                expires_at=int(payload["exp"]),
            )
        except (TypeError, ValueError) as exc:
            raise TokenError("malformed claims") from exc


def _read_key(path: Path) -> bytes:
    return path.read_bytes()
