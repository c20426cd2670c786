"""The base of every JSON handler: bounded bodies, one error shape, auth.

Handler errors are caught once, here: an :class:`ApiError` becomes its
status and ``{"error": {...}}`` body; anything else is logged with its
traceback and answered ``internal_error`` without internals.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import uuid
from collections.abc import Callable
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

# Tornado hands a body over in pieces of at most 64 KiB.
_SLACK = 1024 * 1024

# How much of a refused body is read and dropped before the connection is
# cut: enough for a client that only reads after sending to see the answer.
_DRAIN_LIMIT = 8 * 1024 * 1024

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
        #: Headers an error response keeps, e.g. Content-Range on a 416.
        self.error_headers: dict[str, str] = {}
        self._refused = False
        self._drained = 0
        self._counted = True
        node.requests_in_flight += 1

    # Request lifecycle.

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()
        super().on_connection_close()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.node.requests_in_flight -= 1

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def body_limit(self) -> int:
        return self.max_body_bytes or self.node.settings.max_json_body_bytes

    async def prepare(self) -> None:
        self._apply_cors()
        limit = self.body_limit()
        # Tornado's own cap answers a bare 400; keep it a read buffer above
        # ours so that ours, with a proper 413, is the one that fires.
        self.request.connection.set_max_body_size(limit + _SLACK)  # type: ignore[union-attr]
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
        if self.refusing_body(len(chunk)):
            return None
        if len(self._body) + len(chunk) > self.body_limit():
            self.refuse_body(self.too_large())
            return None
        self._body += chunk
        return None

    def too_large(self) -> ApiError:
        return ApiError(
            ErrorCode.PAYLOAD_TOO_LARGE, details={"max_bytes": self.body_limit()}
        )

    def refuse_body(self, error: ApiError) -> None:
        """Answer ``error`` now, in the middle of the body, and drop the rest.

        Closing at once would lose the answer: a socket closed with unread
        input is reset, and the reset discards what was still being sent. So
        the answer is flushed, the rest of the body is read and thrown away
        up to a bound, and only a client that goes past it is cut off.
        """
        self._refused = True
        self._drained = 0
        # Tornado's own cap would otherwise stop the drain early and write
        # a bare 400 behind our answer on the same connection.
        self.request.connection.set_max_body_size(  # type: ignore[union-attr]
            self.body_limit() + _SLACK + _DRAIN_LIMIT
        )
        self.clear()
        self._render_error(error)
        self.flush()

    def refusing_body(self, incoming: int) -> bool:
        """True when a refused body is being drained (and counts it)."""
        if not self._refused:
            return self._finished
        self._drained += incoming
        if self._drained > _DRAIN_LIMIT and not self._finished:
            self.finish()
        return True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A refused body has been answered already; the method must not run.
        for name in ("get", "head", "post", "put", "patch", "delete"):
            method = cls.__dict__.get(name)
            if method is not None:
                setattr(cls, name, _skipped_when_refused(method))

    def options(self, *args: str, **kwargs: str) -> None:
        # CORS preflight; prepare() already set or refused the headers.
        self.set_status(204)
        self.finish()

    def _origin_allowed(self) -> bool | None:
        """None for requests without an Origin (native clients)."""
        origin = self.request.headers.get("Origin")
        if origin is None:
            return None
        allowed = self.node.settings.allowed_origins
        return "*" in allowed or origin in allowed

    def _apply_cors(self) -> None:
        verdict = self._origin_allowed()
        if verdict is False:
            raise ApiError(ErrorCode.FORBIDDEN, "This origin is not allowed.")
        if verdict:
            self._set_cors_headers()

    def _set_cors_headers(self) -> None:
        self.set_header("Access-Control-Allow-Origin", self.request.headers["Origin"])
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
            self.node.metrics.rate_limited_auth.inc()
            retry_ms = math.ceil(wait * 1000)
            raise ApiError(ErrorCode.RATE_LIMITED, retry_after_ms=retry_ms)

    # Output.

    def reply(self, result: BaseModel, status: int = 200) -> None:
        self.set_status(status)
        self.finish(result.model_dump_json().encode())

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info: ExcInfo | None = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, ApiError):
            error = exc
        elif status_code < 500:
            error = ApiError(_STATUS_CODES.get(status_code, ErrorCode.BAD_REQUEST))
        else:
            error = ApiError(_STATUS_CODES.get(status_code, ErrorCode.INTERNAL_ERROR))
        self._render_error(error)
        self.finish()

    def _render_error(self, error: ApiError) -> None:
        # send_error() cleared the headers; put back those an error needs.
        self.set_status(error.status)
        self.set_header("Content-Type", "application/json")
        if self._origin_allowed():
            self._set_cors_headers()
        for name, value in self.error_headers.items():
            self.set_header(name, value)
        if error.retry_after_ms is not None:
            self.set_header("Retry-After", str(math.ceil(error.retry_after_ms / 1000)))
        body = ErrorResponse(error=error.body()).model_dump_json().encode()
        # Known length, so that an answer flushed early is not chunked.
        self.set_header("Content-Length", str(len(body)))
        self.write(body)

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


def _skipped_when_refused(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    async def run(self: ApiHandler, *args: Any, **kwargs: Any) -> None:
        if self._refused:
            if not self._finished:
                self.finish()
            return
        result = method(self, *args, **kwargs)
        if inspect.isawaitable(result):
            await result

    return run


class NotFoundHandler(ApiHandler):
    """Any path no route matches."""

    async def prepare(self) -> None:
        raise ApiError(ErrorCode.NOT_FOUND, "No such endpoint.")


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value)
