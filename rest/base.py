"""The base of every JSON handler: bounded bodies, one error shape, auth.

Handler errors are caught once, here: an :class:`ApiError` becomes its
status and ``{"error": {...}}`` body; anything else is logged with its
traceback and answered ``internal_error`` without internals.
"""

from __future__ import annotations

import logging
import math
import uuid
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import orjson
import tornado.web
from pydantic import BaseModel, ValidationError

from protocol.errors import ApiError, ErrorCode, ErrorResponse, field_errors
from realtime.node import Node
from realtime.services.accounts import Principal

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=BaseModel)

_STATUS_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.AUTH_REQUIRED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """JSON in, JSON out. Bodies are streamed and capped so that an oversized
    request is refused with 413 before it is read whole."""

    node: Node
    #: Largest body this handler accepts; None means the node's JSON limit.
    max_body_bytes: ClassVar[int | None] = None

    def initialize(self, node: Node) -> None:
        self.node = node
        self._body = bytearray()
        self._principal: Principal | None = None

    # Request lifecycle.

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def body_limit(self) -> int:
        return self.max_body_bytes or self.node.settings.max_json_body_bytes

    async def prepare(self) -> None:
        self._apply_cors()
        limit = self.body_limit()
        # Tornado's own cap answers a bare 400; keep it above ours so that
        # ours, with a proper 413, is the one that fires.
        self.request.connection.set_max_body_size(limit + 1)  # type: ignore[union-attr]
        declared = self.request.headers.get("Content-Length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                raise ApiError(ErrorCode.BAD_REQUEST, "Bad Content-Length.") from None
            if too_big:
                raise ApiError(
                    ErrorCode.PAYLOAD_TOO_LARGE, details={"max_bytes": limit}
                )

    def data_received(self, chunk: bytes) -> Any:
        if self._finished:
            return None
        if len(self._body) + len(chunk) > self.body_limit():
            self.fail(
                ApiError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    details={"max_bytes": self.body_limit()},
                )
            )
            return None
        self._body += chunk
        return None

    def options(self, *args: str, **kwargs: str) -> None:
        # CORS preflight; prepare() already set or refused the headers.
        self.set_status(204)
        self.finish()

    def _apply_cors(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin is None:
            return
        allowed = self.node.settings.allowed_origins
        if "*" not in allowed and origin not in allowed:
            raise ApiError(ErrorCode.FORBIDDEN, "This origin is not allowed.")
        self.set_header("Access-Control-Allow-Origin", origin)
        self.set_header("Vary", "Origin")
        self.set_header(
            "Access-Control-Allow-Headers", "Authorization, Content-Type, Range"
        )
        self.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS")
        self.set_header("Access-Control-Max-Age", "600")

    # Input.

    def parse(self, model: type[P]) -> P:
        """Validate the JSON body against ``model``."""
        body = bytes(self._body) or b"{}"
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            if any(e["type"] == "json_invalid" for e in errors):
                raise ApiError(ErrorCode.INVALID_JSON) from None
            if any(e["type"] == "model_type" and not e["loc"] for e in errors):
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED, "The body must be a JSON object."
                ) from None
            raise ApiError(
                ErrorCode.VALIDATION_FAILED,
                details=field_errors([dict(e) for e in errors]),
            ) from None

    @staticmethod
    def parse_id(value: str, what: str = "id") -> uuid.UUID:
        try:
            return uuid.UUID(value)
        except ValueError:
            raise ApiError(
                ErrorCode.INVALID_ID, f"The {what} is not a valid UUID."
            ) from None

    def bearer_token(self) -> str | None:
        header = self.request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                ErrorCode.INVALID_TOKEN, "Use `Authorization: Bearer <token>`."
            )
        return token.strip()

    async def principal(self) -> Principal:
        """The caller, from a valid access token; 401 otherwise."""
        if self._principal is None:
            token = self.bearer_token()
            if token is None:
                raise ApiError(ErrorCode.AUTH_REQUIRED)
            self._principal = await self.node.accounts.authenticate(token)
        return self._principal

    def rate_limit(self, *keys: str) -> None:
        """Take one token from each key's bucket; 429 when any is empty."""
        wait = max(self.node.auth_limiter.take(key) for key in keys)
        if wait > 0:
            retry_ms = math.ceil(wait * 1000)
            self.set_header("Retry-After", str(math.ceil(wait)))
            raise ApiError(ErrorCode.RATE_LIMITED, retry_after_ms=retry_ms)

    # Output.

    def reply(self, result: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(result.model_dump_json().encode())

    def fail(self, error: ApiError) -> None:
        """Answer with ``error`` now, even in the middle of reading a body."""
        self.send_error(error.status, exc_info=(type(error), error, None))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info: ExcInfo | None = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, ApiError):
            error = exc
        elif status_code < 500:
            error = ApiError(_STATUS_CODES.get(status_code, ErrorCode.BAD_REQUEST))
        else:
            error = ApiError(_STATUS_CODES.get(status_code, ErrorCode.INTERNAL_ERROR))
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        if error.retry_after_ms is not None:
            self.set_header("Retry-After", str(math.ceil(error.retry_after_ms / 1000)))
        self.finish(ErrorResponse(error=error.body()).model_dump_json().encode())

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(value, ApiError):
            # The client's mistake, not ours: no traceback.
            logger.debug(
                "%s %s -> %s", self.request.method, self.request.path, value.code.code
            )
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(ApiHandler):
    """Any path no route matches."""

    async def prepare(self) -> None:
        raise ApiError(ErrorCode.NOT_FOUND, "No such endpoint.")


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
