"""Channels to local subscribers, on one node.

The hub receives each event once from the bus, turns it into a
:class:`Frames` (encoded at most once per codec, on first use), and hands
the same object to every local subscriber of the channel. Conversation
channels pass through a node-level :class:`Sequencer`, so subscribers see
their seqs in order and a gap is repaired from storage once per node, not
once per socket.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from protocol.codecs import JSON, Codec
from realtime.sequencer import Sequencer
from realtime.services.chatlog import StoredEvent
from realtime.wsframe import build_frame

logger = logging.getLogger(__name__)

FetchEvents = Callable[[uuid.UUID, int, int], Awaitable[Sequence[StoredEvent]]]


class Frames:
    """One event, as WebSocket frames built lazily and at most once per codec."""

    __slots__ = ("_frames", "_json", "seq", "value")

    def __init__(self, value: dict[str, Any], json_bytes: bytes | None = None) -> None:
        self.value = value
        self.seq: int | None = value.get("seq")
        self._json = json_bytes
        self._frames: dict[str, bytes] = {}

    def frame(self, codec: Codec) -> bytes:
        frame = self._frames.get(codec.name)
        if frame is None:
            if codec is JSON and self._json is not None:
                payload = self._json
            else:
                payload = codec.encode(self.value)
            frame = self._frames[codec.name] = build_frame(payload, codec.binary)
        return frame


class Subscriber(Protocol):
    def on_frames(self, channel: str, frames: Frames) -> None: ...


class _Channel:
    __slots__ = ("sequencer", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.sequencer: Sequencer[Frames, StoredEvent] | None = None


class Hub:
    def __init__(self, fetch: FetchEvents) -> None:
        self._fetch = fetch
        self._channels: dict[str, _Channel] = {}
        self.bus: Any = None
        self.gap_repairs = 0
        self.deliveries = 0

    def attach(self, bus: Any) -> None:
        self.bus = bus

    # Subscriptions.

    def subscribe(
        self, channel: str, subscriber: Subscriber, head: int | None = None
    ) -> None:
        """Add a local subscriber. For a conversation channel, ``head`` is the
        newest seq the caller read from storage; the node's stream starts
        there if it is new."""
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel()
            if head is not None:
                entry.sequencer = Sequencer(head, self, channel)
            self.bus.subscribe(channel)
        entry.subscribers.add(subscriber)

    def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        entry.subscribers.discard(subscriber)
        if not entry.subscribers:
            del self._channels[channel]
            if entry.sequencer is not None:
                entry.sequencer.close()
            self.bus.unsubscribe(channel)

    def subscriber_count(self, channel: str) -> int:
        entry = self._channels.get(channel)
        return len(entry.subscribers) if entry else 0

    # Traffic.

    async def publish(self, channel: str, envelope: dict[str, Any]) -> None:
        await self.bus.publish(channel, orjson.dumps(envelope))

    def on_bus_message(self, channel: str, payload: bytes) -> None:
        entry = self._channels.get(channel)
        if entry is None:
            return
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError:
            logger.error("undecodable bus message on %s", channel)
            return
        # For JSON clients the bus payload already is the frame.
        frames = Frames(value, payload)
        if entry.sequencer is not None and frames.seq is not None:
            entry.sequencer.offer(frames.seq, frames)
        else:
            self._fan_out(entry, channel, frames)

    def _fan_out(self, entry: _Channel, channel: str, frames: Frames) -> None:
        for subscriber in tuple(entry.subscribers):
            subscriber.on_frames(channel, frames)
        self.deliveries += len(entry.subscribers)

    # Sequencer owner: node-level order per conversation channel.

    async def fetch_events(
        self, key: str, after: int, limit: int
    ) -> Sequence[StoredEvent]:
        return await self._fetch(uuid.UUID(key[5:]), after, limit)

    def deliver_live(self, key: str, item: Frames) -> None:
        entry = self._channels.get(key)
        if entry is not None:
            self._fan_out(entry, key, item)

    def deliver_stored(self, key: str, event: StoredEvent) -> None:
        self.deliver_live(key, Frames(event.envelope()))

    def on_gap(self, key: str, cursor: int, seq: int) -> None:
        self.gap_repairs += 1
        logger.info("gap on %s: have %d, got %d; reading storage", key, cursor, seq)
