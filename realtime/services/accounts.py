"""Accounts, logins and the refresh-token families behind them."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from protocol.accounts import RegisterParams, TokenPair, UserOut
from protocol.chat import PublicUser
from protocol.envelope import user_channel
from protocol.errors import ApiError, ErrorCode
from realtime.security.passwords import (
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from realtime.security.tokens import Claims, TokenCodec, TokenError, TokenType
from realtime.services.chatlog import REVOKED, Publish, publish_nowhere
from realtime.storage.database import Database
from realtime.storage.models import RefreshFamily, RefreshToken, User, utcnow

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a valid access token."""

    user_id: uuid.UUID
    family_id: uuid.UUID
    expires_at: int


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        created_at=user.created_at,
    )


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _token_error(exc: TokenError) -> ApiError:
    if exc.expired:
        return ApiError(ErrorCode.TOKEN_EXPIRED)
    return ApiError(ErrorCode.INVALID_TOKEN)


class AccountService:
    def __init__(
        self, db: Database, tokens: TokenCodec, publish: Publish = publish_nowhere
    ) -> None:
        self.db = db
        self.tokens = tokens
        self.publish = publish

    async def _announce_revoked(self, user_id: uuid.UUID, family_id: uuid.UUID) -> None:
        """Tell every node so that the session's sockets close within seconds."""
        await self.publish(
            user_channel(user_id),
            {"event": REVOKED, "data": {"session_id": str(family_id)}},
        )

    # Accounts.

    async def create_user(
        self,
        username: str,
        password: str,
        *,
        display_name: str | None = None,
        is_admin: bool = False,
    ) -> UserOut:
        """Store a new user; ``username_taken`` if the name is in use."""
        password_hash = await hash_password_async(password)
        user = User(
            username=username.lower(),
            display_name=display_name or username,
            password_hash=password_hash,
            is_admin=is_admin,
        )
        try:
            async with self.db.transaction() as session:
                session.add(user)
        except IntegrityError as exc:
            raise ApiError(ErrorCode.USERNAME_TAKEN) from exc
        logger.info("user created id=%s", user.id)
        return user_out(user)

    async def register(self, params: RegisterParams) -> UserOut:
        return await self.create_user(
            params.username, params.password, display_name=params.display_name
        )

    async def get_user(self, user_id: uuid.UUID) -> UserOut:
        async with self.db.sessions() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise ApiError(ErrorCode.NOT_FOUND, "No such user.")
        return user_out(user)

    async def lookup(self, usernames: list[str]) -> list[PublicUser]:
        names = {name.lower() for name in usernames}
        async with self.db.sessions() as session:
            rows = await session.scalars(
                select(User).where(User.username.in_(names)).order_by(User.username)
            )
            return [
                PublicUser(id=u.id, username=u.username, display_name=u.display_name)
                for u in rows
            ]

    # Sessions.

    async def login(self, username: str, password: str) -> TokenPair:
        async with self.db.sessions() as session:
            user = await session.scalar(
                select(User).where(User.username == username.lower())
            )
        stored_hash = user.password_hash if user else None
        if not await verify_password_async(stored_hash, password) or user is None:
            raise ApiError(ErrorCode.INVALID_CREDENTIALS)

        async with self.db.transaction() as session:
            if needs_rehash(user.password_hash):
                await session.execute(
                    update(User)
                    .where(User.id == user.id)
                    .values(password_hash=await hash_password_async(password))
                )
            family = RefreshFamily(id=uuid.uuid4(), user_id=user.id)
            session.add(family)
            await session.flush()
            pair = self._issue_pair(session, user, family)
        logger.info("login user=%s session=%s", user.id, family.id)
        return pair

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Trade a refresh token for a new pair. Each refresh token works once:
        a second use means it was copied, so the whole family is revoked."""
        claims = self._verify(refresh_token, TokenType.REFRESH)
        reused = False
        async with self.db.transaction() as session:
            row = await session.execute(
                select(RefreshToken, RefreshFamily, User)
                .join(RefreshFamily, RefreshToken.family_id == RefreshFamily.id)
                .join(User, RefreshFamily.user_id == User.id)
                .where(RefreshToken.jti == claims.jti)
            )
            found = row.first()
            if found is None or found[1].id != claims.family_id:
                raise ApiError(ErrorCode.INVALID_TOKEN)
            _, family, user = found
            if family.revoked_at is not None:
                raise ApiError(ErrorCode.TOKEN_REVOKED)

            # The conditional update is the single-use check: of two
            # concurrent refreshes with one token, exactly one changes a row.
            now = utcnow()
            marked = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.jti == claims.jti, RefreshToken.used_at.is_(None))
                .values(used_at=now)
            )
            if marked.rowcount == 1:  # type: ignore[attr-defined]
                pair = self._issue_pair(session, user, family)
            else:
                reused = True
                await self._revoke(session, family.id, "reuse")
        if reused:
            await self._announce_revoked(claims.user_id, claims.family_id)
            logger.warning(
                "refresh token reused; session revoked user=%s session=%s",
                claims.user_id,
                claims.family_id,
            )
            raise ApiError(ErrorCode.REFRESH_REUSED)
        return pair

    async def logout(
        self, principal: Principal | None, refresh_token: str | None
    ) -> uuid.UUID:
        """End a session, named by a refresh token or by the caller's access
        token. Returns the revoked session id."""
        if refresh_token is not None:
            claims = self._verify(refresh_token, TokenType.REFRESH, allow_expired=True)
            if principal is not None and principal.user_id != claims.user_id:
                raise ApiError(ErrorCode.FORBIDDEN)
            family_id = claims.family_id
            user_id = claims.user_id
        elif principal is not None:
            family_id = principal.family_id
            user_id = principal.user_id
        else:
            raise ApiError(ErrorCode.AUTH_REQUIRED)
        async with self.db.transaction() as session:
            await self._revoke(session, family_id, "logout")
        await self._announce_revoked(user_id, family_id)
        logger.info("logout session=%s", family_id)
        return family_id

    async def authenticate(self, access_token: str) -> Principal:
        """Check an access token and that its session was not revoked."""
        claims = self._verify(access_token, TokenType.ACCESS)
        async with self.db.sessions() as session:
            found = await session.execute(
                select(RefreshFamily.revoked_at).where(
                    RefreshFamily.id == claims.family_id,
                    RefreshFamily.user_id == claims.user_id,
                )
            )
            row = found.first()
        if row is None:
            raise ApiError(ErrorCode.INVALID_TOKEN)
        if row.revoked_at is not None:
            raise ApiError(ErrorCode.TOKEN_REVOKED)
        return Principal(claims.user_id, claims.family_id, claims.expires_at)

    async def revoked_among(self, family_ids: set[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these sessions were ended (a node checks its sockets'
        after it was cut off from the others' revocation events)."""
        revoked: set[uuid.UUID] = set()
        ids = list(family_ids)
        async with self.db.sessions() as session:
            for start in range(0, len(ids), 500):
                rows = await session.scalars(
                    select(RefreshFamily.id).where(
                        RefreshFamily.id.in_(ids[start : start + 500]),
                        RefreshFamily.revoked_at.is_not(None),
                    )
                )
                revoked.update(rows)
        return revoked

    # Helpers.

    def _verify(
        self, token: str, kind: TokenType, *, allow_expired: bool = False
    ) -> Claims:
        try:
            return self.tokens.verify(token, kind, allow_expired=allow_expired)
        except TokenError as exc:
            logger.debug("token refused: %s", exc.reason)
            raise _token_error(exc) from exc

    def _issue_pair(
        self, session: AsyncSession, user: User, family: RefreshFamily
    ) -> TokenPair:
        access = self.tokens.issue(TokenType.ACCESS, user.id, family.id)
        refresh = self.tokens.issue(TokenType.REFRESH, user.id, family.id)
        session.add(
            RefreshToken(
                jti=refresh.jti,
                family_id=family.id,
                expires_at=_ts(refresh.expires_at),
            )
        )
        return TokenPair(
            access_token=access.token,
            access_expires_at=_ts(access.expires_at),
            expires_in=self.tokens.access_ttl_s,
            refresh_token=refresh.token,
            refresh_expires_at=_ts(refresh.expires_at),
            session_id=family.id,
            user=user_out(user),
        )

    @staticmethod
    async def _revoke(session: AsyncSession, family_id: uuid.UUID, reason: str) -> None:
        await session.execute(
            update(RefreshFamily)
            .where(RefreshFamily.id == family_id, RefreshFamily.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
