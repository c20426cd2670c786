"""Fan-out between nodes over Redis pub/sub.

Each node keeps one subscriber connection and subscribes only to the
channels some local socket needs (a conversation, a user, a presence
watch) plus the cluster's control channel, so a node receives the events
of its own sockets and not the whole cluster's. Publishing uses a separate
pooled connection. Every payload starts with the publishing process's
origin tag, so a node skips the echo of what it already delivered to its
own sockets.

Redis pub/sub forgets what it could not deliver. That is safe here because
every seq-carrying event is in storage first:

- a channel's events published before its SUBSCRIBE took effect are read
  from storage once Redis confirms the subscription (``on_subscribed``);
- when the subscriber connection comes back after an outage, the node
  catches every followed conversation up from storage (``on_reconnected``).

Ephemeral events (typing, presence, receipts) lost during an outage stay
lost, as they would on any chat system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol.backoff import Backoff
from realtime.bus import Receiver

logger = logging.getLogger(__name__)

#: Longest a subscriber waits on one read, so that shutdown is prompt.
READ_TIMEOUT_S = 1.0
#: Channels per SUBSCRIBE or UNSUBSCRIBE command.
CHUNK = 500
#: Longest :meth:`RedisBus.subscribed` waits for Redis to confirm.
CONFIRM_TIMEOUT_S = 2.0
#: Longest :meth:`RedisBus.close` waits for the bus's loops to end.
CLOSE_TIMEOUT_S = 2.0
ORIGIN_BYTES = 12


class RedisBus:
    def __init__(
        self,
        url: str,
        receiver: Receiver,
        *,
        prefix: str = "squall:",
        on_subscribed: Callable[[str], None] | None = None,
        on_reconnected: Callable[[], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self._receiver = receiver
        self._on_subscribed = on_subscribed
        self._on_reconnected = on_reconnected
        #: Tags this process's payloads; unique even if two nodes were
        #: given the same node id.
        self.origin = secrets.token_hex(ORIGIN_BYTES // 2).encode()
        self._publisher = aioredis.from_url(url, socket_timeout=5)
        self._subscriber = aioredis.from_url(url)
        self._pubsub: aioredis.client.PubSub | None = None
        #: What this node wants; Redis is brought to it by :meth:`_sync`.
        self._wanted: set[str] = set()
        self._active: set[str] = set()
        #: Subscriptions Redis has confirmed on the current connection.
        self._confirmed: set[str] = set()
        self._waiters: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.published = 0
        self.publish_failures = 0
        self.received = 0

    @property
    def healthy(self) -> bool:
        return self.connected.is_set()

    # Life cycle.

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._run()),
            asyncio.ensure_future(self._sync_loop()),
        ]

    async def close(self) -> None:
        # The loops check this flag as well as being cancelled: a call under
        # them may eat the cancellation (asyncio.wait_for on Python 3.11 can,
        # when what it waits for finishes at that moment; nodes were seen
        # hanging on SIGTERM), and the wait is bounded.
        self._closing = True
        self._changed.set()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            done, running = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("Redis bus loop failed", exc_info=task.exception())
            if running:
                logger.warning("Redis bus: %d loops did not stop", len(running))
        await self._drop_pubsub()
        await self._publisher.aclose()
        await self._subscriber.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._publisher.ping())
        except (RedisError, OSError):
            return False

    # Bus.

    def subscribe(self, channel: str) -> None:
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._changed.set()

    def unsubscribe(self, channel: str) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._changed.set()

    async def subscribed(self, channel: str) -> None:
        if channel in self._confirmed or not self.connected.is_set():
            # Cut off: the catch-up after reconnecting covers the gap.
            return
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = asyncio.Event()
        try:
            await asyncio.wait_for(waiter.wait(), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            logger.warning("Redis did not confirm a subscription in time")
        finally:
            if self._waiters.get(channel) is waiter and waiter.is_set():
                del self._waiters[channel]

    async def publish(self, channel: str, payload: bytes) -> None:
        if self._closing:
            # A socket closing with the node still publishes (its presence,
            # say); the pool would open a connection nobody closes.
            return
        try:
            await self._publisher.publish(self.prefix + channel, self.origin + payload)
            self.published += 1
        except (RedisError, OSError) as exc:
            # What was stored is not lost: subscribers catch up from storage
            # on the next event or when their connection returns.
            self.publish_failures += 1
            logger.warning("publish to Redis failed: %s", type(exc).__name__)

    # Inside.

    async def _sync_loop(self) -> None:
        """Bring Redis's subscriptions to what is wanted, in batches: a node
        that opens thousands of sockets sends a few commands, not one per
        channel."""
        while not self._closing:
            await self._changed.wait()
            self._changed.clear()
            await self.connected.wait()
            if self._closing:
                return
            try:
                await self._sync()
            except (RedisError, OSError) as exc:
                # The listener notices the lost connection and reconnects,
                # and a reconnect subscribes everything wanted.
                logger.warning("Redis subscribe failed: %s", type(exc).__name__)

    async def _sync(self) -> None:
        pubsub = self._pubsub
        if pubsub is None:
            return
        add = [c for c in self._wanted if c not in self._active]
        drop = [c for c in self._active if c not in self._wanted]
        for start in range(0, len(add), CHUNK):
            chunk = add[start : start + CHUNK]
            await pubsub.subscribe(*(self.prefix + c for c in chunk))
            self._active.update(chunk)
        for start in range(0, len(drop), CHUNK):
            chunk = drop[start : start + CHUNK]
            await pubsub.unsubscribe(*(self.prefix + c for c in chunk))
            self._active.difference_update(chunk)

    async def _run(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        first = True
        while not self._closing:
            try:
                await self._connect()
                if not first:
                    self.reconnects += 1
                    logger.info("Redis bus reconnected; catching up from storage")
                    if self._on_reconnected is not None:
                        self._on_reconnected()
                first = False
                backoff.reset()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected.is_set() or first:
                    logger.warning("Redis bus lost: %s", type(exc).__name__)
            self.connected.clear()
            if self._closing:
                break
            await self._drop_pubsub()
            await asyncio.sleep(backoff.next_delay())

    async def _connect(self) -> None:
        pubsub = self._subscriber.pubsub()
        wanted = list(self._wanted)
        # A placeholder keeps the connection in subscribed mode even when
        # this node follows nothing yet.
        await pubsub.subscribe(self.prefix + "_node")
        for start in range(0, len(wanted), CHUNK):
            await pubsub.subscribe(
                *(self.prefix + c for c in wanted[start : start + CHUNK])
            )
        self._pubsub = pubsub
        self._active = set(wanted)
        self.connected.set()
        # Wanted meanwhile: the sync loop takes it from here.
        self._changed.set()

    async def _listen(self) -> None:
        assert self._pubsub is not None
        skip = len(self.prefix)
        origin = self.origin
        while not self._closing:
            message = await self._pubsub.get_message(timeout=READ_TIMEOUT_S)
            if message is None:
                continue
            kind = message.get("type")
            channel = _text(message["channel"])[skip:]
            if kind == "message":
                data: bytes = message["data"]
                if data[:ORIGIN_BYTES] == origin:
                    continue  # delivered to our own sockets already
                self.received += 1
                self._receiver(channel, data[ORIGIN_BYTES:])
            elif kind == "subscribe":
                self._confirmed.add(channel)
                waiter = self._waiters.pop(channel, None)
                if waiter is not None:
                    waiter.set()
                if self._on_subscribed is not None:
                    self._on_subscribed(channel)
            elif kind == "unsubscribe":
                self._confirmed.discard(channel)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._active = set()
        self._confirmed = set()
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
