"""The reference asyncio client of the Squall protocol.

    client = SquallClient("ws://127.0.0.1:8000/v1/ws", token="...")
    await client.connect()
    sent = await client.call("message.send", {...})
    async for event in client.events():
        ...

It reconnects on its own with jittered exponential backoff, resumes with
``sync`` from the last seq it saw per conversation, and drops duplicates,
so the events it yields are, per conversation, in seq order with no gap
and no duplicate. Given several node URLs instead of one, each reconnect
goes to the next, so the clients of a node that died or is draining end
up on the others (one URL behind a load balancer has the same effect).
It depends on nothing of Squall but this package.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import tornado.httpclient
import tornado.websocket

from .backoff import Backoff
from .close_codes import CloseCode
from .codecs import JSON, MSGPACK, Codec

logger = logging.getLogger(__name__)

TokenSource = str | Callable[[], Awaitable[str]]

#: Closed for abusing rate limits: stay away at least this long.
RATE_LIMITED_PAUSE_S = 60.0
#: Times a resume asks a slow or throttled server again on one connection.
RESUME_ATTEMPTS = 8


class RpcError(Exception):
    """An error reply. ``code`` is from the error catalogue."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.code: str = body.get("code", "unknown")
        self.retry_after_ms: int | None = body.get("retry_after_ms")
        super().__init__(f"{self.code}: {body.get('message', '')}")


class Closed(Exception):
    """The connection ended and will not be reopened."""

    #: Whether the same call may succeed if made again.
    retryable = False

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"closed {code} {reason}")


class Disconnected(Closed):
    """The connection dropped, or was not back in time, and the client is
    reconnecting. A request in flight may or may not have reached the
    server, so make the call again: ``message.send`` with the same
    ``client_msg_id`` is stored once and answered with the stored message.
    """

    retryable = True


class SquallClient:
    def __init__(
        self,
        url: str | Sequence[str],
        token: TokenSource,
        *,
        codec: str = "json",
        reconnect: bool = True,
        positions: dict[str, int] | None = None,
        backoff: Backoff | None = None,
        call_timeout_s: float = 10.0,
        auth_in_header: bool = True,
    ) -> None:
        #: Where to connect: the first at first, the next on each reconnect.
        self.urls: list[str] = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("SquallClient needs at least one URL")
        self._url_index = 0
        self._token = token
        self.codec: Codec = MSGPACK if codec == "msgpack" else JSON
        self.reconnect = reconnect
        #: Last seq yielded per conversation id; what a resume starts from.
        self.positions: dict[str, int] = dict(positions or {})
        self.backoff = backoff or Backoff()
        self.call_timeout_s = call_timeout_s
        self.auth_in_header = auth_in_header
        self.connects = 0
        self.close_code: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any] | Closed] = asyncio.Queue()
        self._conn: tornado.websocket.WebSocketClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        #: Set once the client stops for good, or close() was called.
        self._stopped = asyncio.Event()
        self._closing = False
        self._finished = False
        self._syncing = False
        self._resumer: asyncio.Future[None] | None = None
        self._renewer: asyncio.Future[None] | None = None

    # Connection.

    @property
    def url(self) -> str:
        """The URL connected to now, or tried next."""
        return self.urls[self._url_index]

    @url.setter
    def url(self, value: str) -> None:
        self.urls = [value]
        self._url_index = 0

    def _next_url(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    async def connect(self) -> None:
        """Open, authenticate and go live; raise if that fails. With several
        URLs each is tried once, in order, before giving up."""
        for attempt in range(len(self.urls)):
            try:
                await self._open()
                break
            except (OSError, tornado.httpclient.HTTPClientError):
                if attempt == len(self.urls) - 1:
                    raise
                logger.info("could not connect to one node; trying the next")
                self._next_url()
        self._reader = asyncio.ensure_future(self._run())
        if self.auth_in_header:
            # The server answers a request only once the header token was
            # accepted and the socket follows all its conversations: after
            # this, everything that happens reaches it live.
            await self.call("ping")

    async def _token_value(self) -> str:
        if isinstance(self._token, str):
            return self._token
        return await self._token()

    async def _open(self) -> None:
        token = await self._token_value()
        headers = {"Authorization": f"Bearer {token}"} if self.auth_in_header else {}
        request = tornado.httpclient.HTTPRequest(self.url, headers=headers)
        self._conn = await tornado.websocket.websocket_connect(
            request, subprotocols=[self.codec.subprotocol]
        )
        if not self.auth_in_header:
            await self._auth_first(self._conn, token)
        self.connects += 1
        self._ready.set()

    async def _auth_first(
        self, conn: tornado.websocket.WebSocketClientConnection, token: str
    ) -> None:
        """The first request of a socket without a header: nothing else can
        arrive before its reply, so it is read here, before the reader runs."""
        frame = self.codec.encode(
            {"id": 0, "method": "auth", "params": {"token": token}}
        )
        await conn.write_message(frame, binary=self.codec.binary)
        reply = await asyncio.wait_for(conn.read_message(), self.call_timeout_s)
        if reply is None:
            raise Closed(conn.close_code, conn.close_reason)
        value = self.codec.decode(reply)
        if "error" in value:
            conn.close()
            raise RpcError(value["error"])

    async def close(self) -> None:
        self._closing = True
        self._stopped.set()
        if self._conn is not None:
            self._conn.close(CloseCode.NORMAL.code)
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._reader, 5)

    async def _run(self) -> None:
        while True:
            assert self._conn is not None
            conn = self._conn
            reading = asyncio.ensure_future(self._read(conn))
            if self.connects > 1 or self.positions:
                # Beside the reader, so that a close during the resume
                # fails its sync at once instead of after a timeout.
                self._resumer = asyncio.ensure_future(self._resume())
            await reading
            # Closed by the peer or the network: release it on our side too.
            conn.close()
            code, reason = conn.close_code, conn.close_reason
            self.close_code = code
            self._ready.clear()
            again = self._will_reconnect(code)
            lost = Disconnected if again else Closed
            self._fail_pending(lost(code, reason))
            if self._resumer is not None:
                # A sync reply read just before the close may still be being
                # handed out: its events must come before the end of stream.
                with contextlib.suppress(BaseException):
                    await self._resumer
            if not again:
                break
            if CloseCode.from_code(code) is CloseCode.RATE_LIMITED:
                await self._pause(RATE_LIMITED_PAUSE_S)
            if not await self._reopen():
                break
        self._finished = True
        self._stopped.set()
        self._events.put_nowait(Closed(self.close_code, None))

    def _will_reconnect(self, code: int | None) -> bool:
        if self._closing or not self.reconnect:
            return False
        advice = CloseCode.from_code(code)
        return advice is None or advice.reconnect

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the client is closed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _reopen(self) -> bool:
        while not self._closing:
            delay = self.backoff.next_delay()
            logger.info("reconnecting in %.2fs", delay)
            await self._pause(delay)
            if self._closing:
                break
            # The node we lost may be gone for good: try the next one.
            self._next_url()
            try:
                await asyncio.wait_for(self._open(), 10)
            except (TimeoutError, OSError, tornado.httpclient.HTTPClientError):
                continue
            except Closed:
                continue  # closed before its auth was answered
            except RpcError:
                return False
            self.backoff.reset()
            return True
        return False

    async def _read(self, conn: tornado.websocket.WebSocketClientConnection) -> None:
        while True:
            frame = await conn.read_message()
            if frame is None:
                return
            try:
                value = self.codec.decode(frame)
            except ValueError:
                logger.warning("undecodable frame from server")
                continue
            if "event" in value:
                self._on_event(value)
            else:
                future = self._pending.pop(value.get("id"), None)
                if future is not None and not future.done():
                    if "error" in value:
                        future.set_exception(RpcError(value["error"]))
                    else:
                        future.set_result(value.get("result"))

    # Events.

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "session.expiring" and not isinstance(
            self._token, str
        ):
            # A token source can give a fresh token: swap it in place.
            self._renewer = asyncio.ensure_future(self._renew())
        seq = event.get("seq")
        channel = event.get("channel") or ""
        if seq is None or not channel.startswith("conv:"):
            self._events.put_nowait(event)
            return
        conversation = channel[5:]
        have = self.positions.get(conversation)
        if have is not None and seq <= have:
            return  # already yielded
        if have is not None and seq > have + 1:
            # Ahead of what this client has: the events in between come from
            # the sync under way, or from one started now. Never skip ahead.
            if not self._syncing:
                self._resumer = asyncio.ensure_future(self._resume())
            return
        self.positions[conversation] = seq
        self._events.put_nowait(event)

    async def _renew(self) -> None:
        try:
            await self.call("auth", {"token": await self._token_value()})
        except (TimeoutError, RpcError, Closed) as exc:
            logger.info("token renewal failed: %s", exc)

    async def _resume(self) -> None:
        """Ask for everything missed since ``positions``, until complete.

        A slow or throttled server is asked again, since nothing else may
        come along to start another resume; a lost connection ends this
        one, and the reconnect starts the next."""
        if self._syncing:
            return
        self._syncing = True
        retry = Backoff(base_s=0.2, cap_s=5.0)
        try:
            while True:
                try:
                    result = await self.call(
                        "sync", {"positions": dict(self.positions)}
                    )
                except (TimeoutError, RpcError) as exc:
                    temporary = isinstance(exc, TimeoutError) or exc.body.get(
                        "temporary", False
                    )
                    if not temporary or retry.attempt >= RESUME_ATTEMPTS:
                        raise
                    logger.info("resume failed (%s); asking again", exc)
                    await self._pause(_retry_delay(exc, retry))
                    if self._closing:
                        return
                    continue
                for event in result["events"]:
                    self._on_event(event)
                for conversation in result.get("removed", []):
                    self.positions.pop(conversation, None)
                if result["complete"]:
                    return
        except (TimeoutError, RpcError, Closed) as exc:
            logger.info("resume interrupted: %s", exc)
        finally:
            self._syncing = False

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events in arrival order; per conversation, in seq order."""
        while True:
            item = await self._events.get()
            if isinstance(item, Closed):
                return
            yield item

    async def next_event(
        self,
        timeout: float = 5.0,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next event (that ``match`` accepts), or TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                item = await self._events.get()
                if isinstance(item, Closed):
                    raise item
                if match is None or match(item):
                    return item

    # Calls.

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send a request; return its result or raise :class:`RpcError`.

        While the client is reconnecting, the call waits for the new
        connection (up to ``timeout``). It raises :class:`Disconnected` if
        none came in time or the connection dropped before the reply, and
        :class:`Closed` once the client has stopped for good; a
        ``TimeoutError`` means no reply came in time. After
        :class:`Disconnected` or ``TimeoutError`` the request may have been
        carried out: retry it with the same ids (``client_msg_id``)."""
        limit = timeout or self.call_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        request_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        frame = self.codec.encode(
            {"id": request_id, "method": method, "params": params or {}}
        )
        while True:
            conn = await self._connection(max(0.0, deadline - loop.time()))
            self._pending[request_id] = future
            try:
                await conn.write_message(frame, binary=self.codec.binary)
                break
            except tornado.websocket.WebSocketClosedError:
                # Closed before the reader noticed; nothing was sent, so
                # the request waits for the next connection.
                self._pending.pop(request_id, None)
                if self._conn is conn:
                    self._ready.clear()
        try:
            return await asyncio.wait_for(future, limit)
        finally:
            self._pending.pop(request_id, None)

    async def _connection(
        self, timeout: float
    ) -> tornado.websocket.WebSocketClientConnection:
        """The open connection, waiting up to ``timeout`` for a reconnect."""
        if not self._ready.is_set():
            if self._finished or self._closing:
                raise Closed(self.close_code, None)
            ready = asyncio.ensure_future(self._ready.wait())
            stopped = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait(
                    (ready, stopped),
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                ready.cancel()
                stopped.cancel()
            if not self._ready.is_set():
                if self._finished or self._closing:
                    raise Closed(self.close_code, None)
                raise Disconnected(self.close_code, "not reconnected in time")
        assert self._conn is not None
        return self._conn

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()


def _retry_delay(exc: Exception, backoff: Backoff) -> float:
    """How long to wait before asking again: what the server said, if it
    said, or the next backoff step."""
    delay = backoff.next_delay()
    if isinstance(exc, RpcError) and exc.retry_after_ms:
        delay = max(delay, exc.retry_after_ms / 1000.0)
    return delay
