"""One socket's life: authentication, the conversations it follows, its
outbox, its rate limits, and the dispatch of its requests.

The session does not know Tornado: it talks to a :class:`Transport`, so the
rules here test without a network and the WebSocket handler stays thin.
"""

from __future__ import annotations

import asyncio
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
from realtime.hub import Batch, Frames
from realtime.logs import conn_logger
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

log = conn_logger(__name__)

ABUSE_WINDOW_S = 10.0
MAX_PRESENCE_WATCH = 1000


class Transport(Protocol):
    def send_frame(self, frame: bytes) -> int:
        """Send one complete WebSocket frame (dropped if the socket closed);
        return the bytes still queued, not yet taken by the kernel."""
        ...

    def close(self, code: int, reason: str) -> None: ...


class Session:
    # Thousands per node: no __dict__, and containers made on first use.
    __slots__ = (
        "__weakref__",
        "_after_reply",
        "_buckets",
        "_rejections",
        "_streams",
        "_tasks",
        "_timer",
        "_user_channel",
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
        self._user_channel: str | None = None
        self._watched: set[str] | None = None
        #: The auth deadline, then the token's expiry warning, then its end.
        self._timer: asyncio.TimerHandle | None = None
        self._buckets: dict[str, TokenBucket] | None = None
        self._rejections: deque[float] | None = None
        self._after_reply: list[Callable[[], None]] | None = None
        self._tasks: set[asyncio.Task[None]] | None = None

    # Life cycle.

    async def start(self, bearer: str | None) -> None:
        """Authenticate from the handshake header, or wait for `auth`."""
        if bearer is not None:
            try:
                await self.authenticate(bearer)
            except ApiError as exc:
                self.close(_close_for(exc))
            return
        self._set_timer(self.node.settings.ws_auth_timeout_s, self._auth_deadline)

    def _auth_deadline(self) -> None:
        if self.principal is None and not self.closed:
            log.debug(self.conn_id, "auth deadline passed")
            self.close(CloseCode.AUTH_TIMEOUT)

    def close(self, code: CloseCode) -> None:
        if self.closed:
            return
        log.info(self.conn_id, "closing: %s", code.reason)
        self.transport.close(code.code, code.reason)
        self.on_closed()

    def on_closed(self) -> None:
        """The socket is gone: release everything it held."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.node.sockets.discard(self)
        hub = self.node.hub
        for channel, stream in self._streams.items():
            stream.close()
            hub.unsubscribe(channel, self)
        for channel in self._watched or ():
            hub.unsubscribe(channel, self)
        if self._user_channel is not None:
            hub.unsubscribe(self._user_channel, self)
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
            log.info(self.conn_id, "authenticated user=%s", principal.user_id)
        return chat.AuthResult(
            user_id=principal.user_id,
            session_id=principal.family_id,
            expires_at=datetime.fromtimestamp(principal.expires_at, UTC),
        )

    def _schedule_expiry(self, principal: Principal) -> None:
        warn_at = principal.expires_at - self.node.settings.ws_expiry_warning_s
        self._set_timer(max(0.0, warn_at - time.time()), self._expiry_warning)

    def _expiry_warning(self) -> None:
        assert self.principal is not None
        expires_at = self.principal.expires_at
        self.send_value(
            {
                "event": "session.expiring",
                "data": {"expires_at": iso_from_epoch(expires_at)},
            }
        )
        self._set_timer(max(0.0, expires_at - time.time()), self._expired)

    def _expired(self) -> None:
        self.close(CloseCode.TOKEN_EXPIRED)

    async def _follow_everything(self, user_id: uuid.UUID) -> None:
        self._user_channel = user_channel(user_id)
        self.node.hub.subscribe(self._user_channel, self)
        # Subscribed before reading: a membership change after the read then
        # arrives on the user's channel, one before it is in the read.
        await self.node.hub.subscribed(self._user_channel)
        heads = await self.node.conversations.memberships(user_id)
        for conv_id, head in heads.items():
            self._follow(conv_id, head)

    # Subscriptions.

    def _follow(
        self, conversation_id: uuid.UUID, cursor: int
    ) -> Sequencer[Frames, StoredEvent]:
        channel = conversation_channel(conversation_id)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Sequencer(cursor, self, channel)
            hub = self.node.hub
            hub.subscribe(channel, self, cursor)
            # The node may have passed on events after our position was read
            # and before we subscribed: they are in storage.
            passed = hub.cursor(channel)
            if passed is not None and passed > cursor:
                stream.catch_up(target=passed)
        return stream

    def _unfollow(self, channel: str) -> None:
        stream = self._streams.pop(channel, None)
        if stream is not None:
            stream.close()
            self.node.hub.unsubscribe(channel, self)

    def reconcile(self, conversation_ids: set[uuid.UUID]) -> None:
        """Bring what this socket follows to the user's memberships as
        storage has them now (after the node missed membership events)."""
        followed = {uuid.UUID(channel[5:]) for channel in self._streams}
        for gone in followed - conversation_ids:
            self._unfollow(conversation_channel(gone))
        if conversation_ids - followed:
            # Where a new conversation's stream should start is not known
            # here; the client's sync knows.
            self.close(CloseCode.RESYNC)

    # Sequencer owner: this socket's order per conversation.

    async def fetch_events(
        self, key: str, after: int, limit: int
    ) -> Sequence[StoredEvent]:
        return await events_after(self.node.db, uuid.UUID(key[5:]), after, limit)

    def deliver_live(self, key: str, item: Frames) -> None:
        self._write(item.frame(self.codec))

    def deliver_stored(self, key: str, event: StoredEvent) -> None:
        self.send_value(event.envelope())

    def on_gap(self, key: str, cursor: int, seq: int) -> None:
        log.debug(self.conn_id, "behind on %s: %d..%d", key, cursor, seq)

    async def watch_presence(self, user_ids: list[uuid.UUID]) -> None:
        """Watch the users' presence channels. Returns once the new ones are
        subscribed (on a cluster, confirmed by Redis), so that a flip after
        the caller reads presence arrives as an event."""
        if self._watched is None:
            self._watched = set()
        added: list[str] = []
        for user_id in user_ids:
            if len(self._watched) >= MAX_PRESENCE_WATCH:
                break
            channel = presence_channel(user_id)
            if channel not in self._watched:
                self._watched.add(channel)
                self.node.hub.subscribe(channel, self)
                added.append(channel)
        if added:
            await asyncio.gather(*(self.node.hub.subscribed(c) for c in added))

    # Events from the hub.

    def on_frames(self, channel: str, frames: Frames | Batch) -> None:
        if self.closed:
            return
        stream = self._streams.get(channel)
        if stream is not None:
            first = frames.first_seq
            if first is None:
                if stream.live:
                    # typing and receipts: ephemeral, dropped while catching up.
                    self._write(frames.frame(self.codec))
            elif frames.ordered and stream.take_run(first, frames.last_seq or first):
                self._write(frames.frame(self.codec))
            elif isinstance(frames, Batch):
                for item in frames.items or ():
                    self.on_frames(channel, item)
            else:
                stream.offer(first, frames)
            return
        if isinstance(frames, Batch):
            if self._watched is not None and channel in self._watched:
                self._write(frames.frame(self.codec))
            else:
                for item in frames.items or ():
                    self.on_frames(channel, item)
            return
        kind = frames.value.get("event")
        if kind in (SUBSCRIBE, UNSUBSCRIBE, REVOKED):
            self._control(kind, frames.value.get("data") or {})
        elif self._watched is not None and channel in self._watched:
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
            # A conversation new to this socket stays quiet until the reply
            # is out, like the others.
            stream.pause()
            stream.cursor = position
        for conv_id in result.removed:
            self._unfollow(conversation_channel(conv_id))
        # Conversations this page brought up to date go live after the
        # reply; the others wait for the client's next sync page.
        resumed = [self._streams[conversation_channel(c)] for c in caught_up]

        def resume() -> None:
            for stream in resumed:
                stream.catch_up()

        self._after_reply = [*(self._after_reply or ()), resume]
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
            log.debug(self.conn_id, "%s -> %s", request.method, exc.code.code)
            self.reply_error(request.id, exc)
            self._observe(request.method, started, exc.code)
            if self.principal is None and request.method == "auth":
                self.close(_close_for(exc))
            return
        except Exception:
            log.exception(self.conn_id, "method %s failed", request.method)
            self.reply_error(request.id, ApiError(ErrorCode.INTERNAL_ERROR))
            self._observe(request.method, started, ErrorCode.INTERNAL_ERROR)
            return
        self.send_value({"id": request.id, "result": result.model_dump(mode="json")})
        elapsed = self._observe(request.method, started)
        if self._after_reply:
            hooks, self._after_reply = self._after_reply, None
            for hook in hooks:
                hook()
        log.debug(self.conn_id, "%s ok in %.1fms", request.method, 1000 * elapsed)

    def _observe(
        self, method: str, started: float, error: ErrorCode | None = None
    ) -> float:
        """Count one answered request; the seconds it took."""
        elapsed = time.perf_counter() - started
        metrics = self.node.metrics
        metrics.observe_rpc(method, "ws", elapsed)
        if error is not None:
            metrics.rpc_errors.labels("ws", error.code).inc()
        return elapsed

    async def _auth_request(self, params: Any) -> chat.AuthResult:
        assert isinstance(params, chat.AuthParams)
        return await self.authenticate(params.token)

    def _take(self, rate_class: str) -> None:
        limits = self.node.settings.ws_rate_limits
        rate, burst = limits.get(rate_class) or limits["default"]
        now = time.monotonic()
        if self._buckets is None:
            self._buckets = {}
        bucket = self._buckets.get(rate_class)
        if bucket is None:
            bucket = self._buckets[rate_class] = TokenBucket(rate, burst, burst, now)
        wait = bucket.take(now)
        if wait <= 0:
            return
        self.node.metrics.rate_limited_socket.inc()
        if self._rejections is None:
            self._rejections = deque()
        self._rejections.append(now)
        while self._rejections[0] < now - ABUSE_WINDOW_S:
            self._rejections.popleft()
        if len(self._rejections) > self.node.settings.ws_abuse_limit:
            # After this request's error reply has been written.
            asyncio.get_running_loop().call_soon(self.close, CloseCode.RATE_LIMITED)
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
        """Send a frame; a client whose backlog passes the bound is closed
        instead of growing the node's memory."""
        if self.closed:
            return
        backlog = self.transport.send_frame(frame)
        if backlog > self.node.settings.ws_outbox_max_bytes:
            self.close(CloseCode.SLOW_CONSUMER)

    # Helpers.

    def _set_timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _spawn(self, coro: Any) -> None:
        if self._tasks is None:
            self._tasks = set()
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
