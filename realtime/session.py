"""One socket's life: authentication, the conversations it follows, its
outbox, its rate limits, and the dispatch of its requests.

The session does not know Tornado: it talks to a :class:`Transport`, so the
rules here test without a network and the WebSocket handler stays thin.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ValidationError

from protocol import chat
from protocol.close_codes import CloseCode
from protocol.codecs import Codec, DecodeError
from protocol.envelope import Request, conversation_channel, user_channel
from protocol.errors import ApiError, ErrorCode, field_errors
from realtime.hub import Frames
from realtime.node import Node
from realtime.presence import presence_channel
from realtime.ratelimit import TokenBucket
from realtime.rpc import Call, lookup
from realtime.sequencer import Sequencer
from realtime.services.accounts import Principal
from realtime.services.chatlog import (
    REVOKED,
    SUBSCRIBE,
    UNSUBSCRIBE,
    StoredEvent,
    events_after,
)
from realtime.timefmt import iso_from_epoch
from realtime.wsframe import build_frame

logger = logging.getLogger(__name__)

ABUSE_WINDOW_S = 10.0
MAX_PRESENCE_WATCH = 1000


class Transport(Protocol):
    def send_frame(self, frame: bytes) -> None:
        """Queue one complete WebSocket frame; drop it if the socket closed."""
        ...

    def buffered_bytes(self) -> int:
        """Bytes queued on the socket and not yet taken by the kernel."""
        ...

    def close(self, code: int, reason: str) -> None: ...


class Session:
    __slots__ = (
        "__weakref__",
        "_after_reply",
        "_buckets",
        "_channels",
        "_expiry",
        "_rejections",
        "_streams",
        "_tasks",
        "_timers",
        "_watched",
        "closed",
        "codec",
        "conn_id",
        "node",
        "principal",
        "transport",
    )

    def __init__(
        self, node: Node, transport: Transport, codec: Codec, conn_id: str
    ) -> None:
        self.node = node
        self.transport = transport
        self.codec = codec
        self.conn_id = conn_id
        self.principal: Principal | None = None
        self.closed = False
        self._streams: dict[str, Sequencer[Frames, StoredEvent]] = {}
        self._watched: set[str] = set()
        self._channels: set[str] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._expiry: list[asyncio.TimerHandle] = []
        self._buckets: dict[str, TokenBucket] = {}
        self._rejections: deque[float] = deque()
        self._after_reply: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # Life cycle.

    async def start(self, bearer: str | None) -> None:
        """Authenticate from the handshake header, or wait for `auth`."""
        if bearer is not None:
            try:
                await self.authenticate(bearer)
            except ApiError as exc:
                self.close(_close_for(exc))
            return
        self._later(self.node.settings.ws_auth_timeout_s, self._auth_deadline)

    def _auth_deadline(self) -> None:
        if self.principal is None and not self.closed:
            logger.debug("conn=%s auth deadline passed", self.conn_id)
            self.close(CloseCode.AUTH_TIMEOUT)

    def close(self, code: CloseCode) -> None:
        if self.closed:
            return
        logger.info("conn=%s closing: %s", self.conn_id, code.reason)
        self.transport.close(code.code, code.reason)
        self.on_closed()

    def close_restarting(self) -> None:
        self.close(CloseCode.SERVER_RESTARTING)

    def on_closed(self) -> None:
        """The socket is gone: release everything it held."""
        if self.closed:
            return
        self.closed = True
        for timer in (*self._timers, *self._expiry):
            timer.cancel()
        self.node.sockets.discard(self)
        for stream in self._streams.values():
            stream.close()
        for channel in self._channels:
            self.node.hub.unsubscribe(channel, self)
        self._channels.clear()
        self._streams.clear()
        if self.principal is not None:
            self._spawn(self.node.presence.disconnected(self.principal.user_id))

    # Authentication.

    async def authenticate(self, token: str) -> chat.AuthResult:
        principal = await self.node.accounts.authenticate(token)
        first = self.principal is None
        if not first and self.principal and principal.user_id != self.principal.user_id:
            raise ApiError(ErrorCode.FORBIDDEN, "The token is for another user.")
        self.principal = principal
        self._schedule_expiry(principal)
        if first:
            self.node.sockets.add(self)
            await self._follow_everything(principal.user_id)
            await self.node.presence.connected(principal.user_id)
            logger.info(
                "conn=%s authenticated user=%s", self.conn_id, principal.user_id
            )
        return chat.AuthResult(
            user_id=principal.user_id,
            session_id=principal.family_id,
            expires_at=datetime.fromtimestamp(principal.expires_at, UTC),
        )

    def _schedule_expiry(self, principal: Principal) -> None:
        for timer in self._expiry:
            timer.cancel()
        loop = asyncio.get_running_loop()
        left = principal.expires_at - time.time()
        warn_in = left - self.node.settings.ws_expiry_warning_s
        expires_at = iso_from_epoch(principal.expires_at)
        self._expiry = [
            loop.call_later(
                max(0.0, warn_in),
                lambda: self.send_value(
                    {"event": "session.expiring", "data": {"expires_at": expires_at}}
                ),
            ),
            loop.call_later(
                max(0.0, left), lambda: self.close(CloseCode.TOKEN_EXPIRED)
            ),
        ]

    async def _follow_everything(self, user_id: uuid.UUID) -> None:
        self._subscribe(user_channel(user_id))
        heads = await self.node.conversations.memberships(user_id)
        for conv_id, head in heads.items():
            self._follow(conv_id, head)

    # Subscriptions.

    def _subscribe(self, channel: str, head: int | None = None) -> None:
        if channel not in self._channels:
            self._channels.add(channel)
            self.node.hub.subscribe(channel, self, head)

    def _follow(
        self, conversation_id: uuid.UUID, cursor: int
    ) -> Sequencer[Frames, StoredEvent]:
        channel = conversation_channel(conversation_id)
        stream = self._streams.get(channel)
        if stream is not None:
            return stream
        db = self.node.db

        async def fetch(after: int, limit: int) -> Sequence[StoredEvent]:
            return await events_after(db, conversation_id, after, limit)

        stream = Sequencer(
            cursor,
            fetch,
            deliver_live=lambda seq, frames: self._write(frames.frame(self.codec)),
            deliver_stored=lambda event: self.send_value(event.envelope()),
        )
        self._streams[channel] = stream
        self._subscribe(channel, cursor)
        return stream

    def _unfollow(self, channel: str) -> None:
        stream = self._streams.pop(channel, None)
        if stream is not None:
            stream.close()
        if channel in self._channels:
            self._channels.discard(channel)
            self.node.hub.unsubscribe(channel, self)

    def watch_presence(self, user_ids: list[uuid.UUID]) -> None:
        for user_id in user_ids:
            if len(self._watched) >= MAX_PRESENCE_WATCH:
                break
            channel = presence_channel(user_id)
            self._watched.add(channel)
            self._subscribe(channel)

    # Events from the hub.

    def on_frames(self, channel: str, frames: Frames) -> None:
        if self.closed:
            return
        stream = self._streams.get(channel)
        if stream is not None:
            if frames.seq is not None:
                stream.offer(frames.seq, frames)
            elif stream.live:
                # typing and receipts: ephemeral, dropped while catching up.
                self._write(frames.frame(self.codec))
            return
        kind = frames.value.get("event")
        if kind in (SUBSCRIBE, UNSUBSCRIBE, REVOKED):
            self._control(kind, frames.value.get("data") or {})
        elif channel in self._watched:
            self._write(frames.frame(self.codec))

    def _control(self, kind: str, data: dict[str, Any]) -> None:
        if kind == REVOKED:
            if self.principal and data.get("session_id") == str(
                self.principal.family_id
            ):
                self.close(CloseCode.SESSION_REVOKED)
            return
        conversation_id = uuid.UUID(data["conversation_id"])
        channel = conversation_channel(conversation_id)
        if kind == SUBSCRIBE:
            after = int(data["after"])
            stream = self._follow(conversation_id, after)
            stream.catch_up(target=after + 1)
        else:
            self._spawn(self._leave_after(channel, int(data["seq"])))

    async def _leave_after(self, channel: str, seq: int) -> None:
        """Deliver up to the removal event, then stop following."""
        stream = self._streams.get(channel)
        if stream is not None and stream.cursor < seq:
            stream.catch_up(target=seq)
            await stream.wait()
        self._unfollow(channel)

    # Sync.

    async def sync(self, params: chat.SyncParams) -> chat.SyncResult:
        """Storage answers; live delivery pauses meanwhile so that nothing
        is sent twice or out of order, and resumes after the reply."""
        assert self.principal is not None
        for stream in self._streams.values():
            stream.pause()
        try:
            result, caught_up = await self.node.messages.sync_page(
                self.principal.user_id,
                params,
                max_bytes=self.node.settings.ws_outbox_max_bytes // 2,
            )
        except BaseException:
            for stream in self._streams.values():
                stream.catch_up()
            raise
        for conv_id, position in result.positions.items():
            stream = self._follow(conv_id, position)
            stream.cursor = position
        for conv_id in result.removed:
            self._unfollow(conversation_channel(conv_id))
        # Conversations this page brought up to date go live after the
        # reply; the others wait for the client's next sync page.
        resumed = [self._streams[conversation_channel(c)] for c in caught_up]

        def resume() -> None:
            for stream in resumed:
                stream.catch_up()

        self._after_reply.append(resume)
        return result

    # Requests.

    async def on_frame(self, frame: bytes | str) -> None:
        if self.closed:
            return
        if isinstance(frame, bytes) != self.codec.binary:
            self.close(CloseCode.PROTOCOL_VIOLATION)
            return
        try:
            value = self.codec.decode(frame)
        except DecodeError:
            self.reply_error(
                None, ApiError(ErrorCode.INVALID_JSON, "The frame is not valid.")
            )
            return
        request_id = _usable_id(value.get("id") if isinstance(value, dict) else None)
        try:
            request = Request.model_validate(value)
        except ValidationError as exc:
            self.reply_error(
                request_id,
                ApiError(
                    ErrorCode.VALIDATION_FAILED,
                    "A request is {id, method, params}.",
                    details=field_errors(
                        [dict(e) for e in exc.errors(include_input=False)]
                    ),
                ),
            )
            return
        await self._dispatch(request)

    async def _dispatch(self, request: Request) -> None:
        started = time.perf_counter()
        try:
            method = lookup(request.method)
            if self.principal is None and method.name != "auth":
                raise ApiError(ErrorCode.AUTH_REQUIRED, "Send `auth` first.")
            self._take(method.spec.rate_class)
            try:
                # JSON-mode validation, so that ids and times arrive as the
                # strings both codecs carry.
                params = method.spec.params.model_validate_json(
                    orjson.dumps(request.params)
                )
            except ValidationError as exc:
                raise ApiError(
                    ErrorCode.VALIDATION_FAILED,
                    details=field_errors(
                        [dict(e) for e in exc.errors(include_input=False)]
                    ),
                ) from None
            if method.name == "auth":
                result: BaseModel = await self._auth_request(params)
            else:
                assert self.principal is not None
                result = await method.handler(
                    Call(self.node, self.principal, self), params
                )
        except ApiError as exc:
            logger.debug(
                "conn=%s %s -> %s", self.conn_id, request.method, exc.code.code
            )
            self.reply_error(request.id, exc)
            if self.principal is None and request.method == "auth":
                self.close(_close_for(exc))
            return
        except Exception:
            logger.exception("conn=%s method %s failed", self.conn_id, request.method)
            self.reply_error(request.id, ApiError(ErrorCode.INTERNAL_ERROR))
            return
        self.send_value({"id": request.id, "result": result.model_dump(mode="json")})
        for hook in self._after_reply:
            hook()
        self._after_reply.clear()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "conn=%s %s ok in %.1fms",
                self.conn_id,
                request.method,
                1000 * (time.perf_counter() - started),
            )

    async def _auth_request(self, params: Any) -> chat.AuthResult:
        assert isinstance(params, chat.AuthParams)
        return await self.authenticate(params.token)

    def _take(self, rate_class: str) -> None:
        limits = self.node.settings.ws_rate_limits
        rate, burst = limits.get(rate_class) or limits["default"]
        now = time.monotonic()
        bucket = self._buckets.get(rate_class)
        if bucket is None:
            bucket = self._buckets[rate_class] = TokenBucket(rate, burst, burst, now)
        wait = bucket.take(now)
        if wait <= 0:
            return
        self._rejections.append(now)
        while self._rejections and self._rejections[0] < now - ABUSE_WINDOW_S:
            self._rejections.popleft()
        if len(self._rejections) > self.node.settings.ws_abuse_limit:
            self._later(0, lambda: self.close(CloseCode.RATE_LIMITED))
        raise ApiError(ErrorCode.RATE_LIMITED, retry_after_ms=max(1, int(wait * 1000)))

    # Output.

    def reply_error(self, request_id: str | int | None, error: ApiError) -> None:
        self.send_value(
            {
                "id": request_id,
                "error": error.body().model_dump(mode="json"),
            }
        )

    def send_value(self, value: dict[str, Any]) -> None:
        self._write(build_frame(self.codec.encode(value), self.codec.binary))

    def _write(self, frame: bytes) -> None:
        """Queue a frame; a client whose queue passes the bound is closed
        instead of growing the node's memory."""
        if self.closed:
            return
        limit = self.node.settings.ws_outbox_max_bytes
        buffered = self.transport.buffered_bytes()
        # A frame alone may exceed the bound (a big sync page); what counts
        # is a backlog the client is not reading.
        if buffered and buffered + len(frame) > limit:
            self.close(CloseCode.SLOW_CONSUMER)
            return
        self.transport.send_frame(frame)

    # Helpers.

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _usable_id(value: object) -> str | int | None:
    """The id to echo in an error reply: only one a valid request could have."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -(2**53) < value < 2**53:
        return value
    if isinstance(value, str) and 0 < len(value) <= 64:
        return value
    return None


def _close_for(error: ApiError) -> CloseCode:
    if error.code is ErrorCode.TOKEN_EXPIRED:
        return CloseCode.TOKEN_EXPIRED
    if error.code is ErrorCode.TOKEN_REVOKED:
        return CloseCode.SESSION_REVOKED
    return CloseCode.INVALID_TOKEN
