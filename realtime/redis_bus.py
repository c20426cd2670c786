"""Fan-out between nodes over Redis pub/sub.

Each node keeps one subscriber connection and subscribes only to the
channels some local socket needs (a conversation, a user, a presence
watch), so a node receives the events of its own sockets and not the
whole cluster's. Publishing uses a separate pooled connection.

Redis pub/sub forgets what it could not deliver. That is safe here because
every seq-carrying event is in storage first: when the subscriber
connection comes back, the bus tells the hub, which catches every followed
conversation up from storage. Ephemeral events (typing, presence, receipts)
lost during an outage stay lost, as they would on any chat system.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from protocol.backoff import Backoff
from realtime.bus import Receiver

logger = logging.getLogger(__name__)

#: Longest a subscriber waits on one read, so that shutdown is prompt.
READ_TIMEOUT_S = 1.0


class RedisBus:
    def __init__(
        self,
        url: str,
        receiver: Receiver,
        *,
        prefix: str = "squall:",
        on_resubscribed: Callable[[], None] | None = None,
    ) -> None:
        self.prefix = prefix
        self._receiver = receiver
        self._on_resubscribed = on_resubscribed
        self._publisher = aioredis.from_url(url)
        self._subscriber = aioredis.from_url(url)
        self._pubsub: aioredis.client.PubSub | None = None
        self._channels: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.publish_failures = 0

    # Life cycle.

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
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
        if channel not in self._channels:
            self._channels.add(channel)
            self._spawn(self._apply("subscribe", channel))

    def unsubscribe(self, channel: str) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            self._spawn(self._apply("unsubscribe", channel))

    async def publish(self, channel: str, payload: bytes) -> None:
        try:
            await self._publisher.publish(self.prefix + channel, payload)
        except (RedisError, OSError) as exc:
            # What was stored is not lost: subscribers catch up from storage
            # on the next event or when their connection returns.
            self.publish_failures += 1
            logger.warning("publish to Redis failed: %s", type(exc).__name__)

    # Inside.

    async def _apply(self, action: str, channel: str) -> None:
        async with self._lock:
            pubsub = self._pubsub
            if pubsub is None or not self.connected.is_set():
                return  # the next (re)connect subscribes everything
            try:
                if action == "subscribe" and channel in self._channels:
                    await pubsub.subscribe(self.prefix + channel)
                elif action == "unsubscribe" and channel not in self._channels:
                    await pubsub.unsubscribe(self.prefix + channel)
            except (RedisError, OSError) as exc:
                logger.warning("Redis %s failed: %s", action, type(exc).__name__)

    async def _run(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        first = True
        while True:
            try:
                await self._connect()
                if not first:
                    self.reconnects += 1
                    logger.info("Redis bus reconnected; catching up from storage")
                    if self._on_resubscribed is not None:
                        self._on_resubscribed()
                first = False
                backoff.reset()
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                logger.warning("Redis bus lost: %s", type(exc).__name__)
            self.connected.clear()
            await self._drop_pubsub()
            await asyncio.sleep(backoff.next_delay())

    async def _connect(self) -> None:
        async with self._lock:
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            channels = [self.prefix + c for c in self._channels]
            # A placeholder keeps the connection in subscribed mode even
            # when this node follows nothing yet.
            await pubsub.subscribe(self.prefix + "_node", *channels)
            self._pubsub = pubsub
            self.connected.set()

    async def _listen(self) -> None:
        assert self._pubsub is not None
        skip = len(self.prefix)
        while True:
            message = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=READ_TIMEOUT_S
            )
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            if isinstance(channel, bytes):
                channel = channel.decode()
            self._receiver(channel[skip:], message["data"])

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
