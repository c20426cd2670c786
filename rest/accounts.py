"""Register, log in, refresh, log out, and who am I."""

from __future__ import annotations

from protocol.accounts import (
    LoginParams,
    LogoutParams,
    LogoutResult,
    RefreshParams,
    RegisterParams,
    TokenPair,
    UserOut,
)
from protocol.errors import ApiError, ErrorCode

from .base import ApiHandler
from .spec import Operation, Route

E = ErrorCode
_BODY_ERRORS = (E.INVALID_JSON, E.VALIDATION_FAILED, E.PAYLOAD_TOO_LARGE)
_TOKEN_ERRORS = (E.AUTH_REQUIRED, E.INVALID_TOKEN, E.TOKEN_EXPIRED, E.TOKEN_REVOKED)


class RegisterHandler(ApiHandler):
    async def post(self) -> None:
        self.rate_limit(f"register:{self.request.remote_ip}")
        if not self.node.settings.registration_open:
            raise ApiError(ErrorCode.FORBIDDEN, "Registration is closed.")
        params = self.parse(RegisterParams)
        self.reply(await self.node.accounts.register(params), status=201)


class LoginHandler(ApiHandler):
    async def post(self) -> None:
        params = self.parse(LoginParams)
        # Per address against spraying many names, per name against a
        # botnet guessing one password from many addresses.
        self.rate_limit(
            f"login:ip:{self.request.remote_ip}",
            f"login:user:{params.username.lower()}",
        )
        self.reply(await self.node.accounts.login(params.username, params.password))


class RefreshHandler(ApiHandler):
    async def post(self) -> None:
        params = self.parse(RefreshParams)
        self.reply(await self.node.accounts.refresh(params.refresh_token))


class LogoutHandler(ApiHandler):
    async def post(self) -> None:
        params = self.parse(LogoutParams)
        principal = await self.principal() if self.bearer_token() else None
        await self.node.accounts.logout(principal, params.refresh_token)
        self.reply(LogoutResult())


class MeHandler(ApiHandler):
    async def get(self) -> None:
        principal = await self.principal()
        self.reply(await self.node.accounts.get_user(principal.user_id))


ROUTES = (
    Route(
        "/v1/auth/register",
        RegisterHandler,
        (
            Operation(
                "post",
                "Create an account",
                params=RegisterParams,
                result=UserOut,
                status=201,
                auth=False,
                errors=(*_BODY_ERRORS, E.USERNAME_TAKEN, E.FORBIDDEN, E.RATE_LIMITED),
            ),
        ),
        tag="auth",
    ),
    Route(
        "/v1/auth/login",
        LoginHandler,
        (
            Operation(
                "post",
                "Log in; start a session",
                params=LoginParams,
                result=TokenPair,
                auth=False,
                errors=(*_BODY_ERRORS, E.INVALID_CREDENTIALS, E.RATE_LIMITED),
            ),
        ),
        tag="auth",
    ),
    Route(
        "/v1/auth/refresh",
        RefreshHandler,
        (
            Operation(
                "post",
                "Trade a refresh token for a new pair",
                description="Each refresh token works once. Presenting one "
                "again ends the whole session (`refresh_reused`).",
                params=RefreshParams,
                result=TokenPair,
                auth=False,
                errors=(
                    *_BODY_ERRORS,
                    E.INVALID_TOKEN,
                    E.TOKEN_EXPIRED,
                    E.TOKEN_REVOKED,
                    E.REFRESH_REUSED,
                ),
            ),
        ),
        tag="auth",
    ),
    Route(
        "/v1/auth/logout",
        LogoutHandler,
        (
            Operation(
                "post",
                "End a session",
                description="Names the session by its refresh token, or by "
                "the access token in `Authorization`.",
                params=LogoutParams,
                result=LogoutResult,
                auth=False,
                errors=(*_BODY_ERRORS, *_TOKEN_ERRORS, E.FORBIDDEN),
            ),
        ),
        tag="auth",
    ),
    Route(
        "/v1/me",
        MeHandler,
        (
            Operation(
                "get", "The caller's account", result=UserOut, errors=_TOKEN_ERRORS
            ),
        ),
        tag="auth",
    ),
)
