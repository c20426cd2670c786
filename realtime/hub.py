"""Channels to local subscribers, on one node.

The hub receives each event once from the bus, turns it into a
:class:`Frames` (encoded at most once per codec, on first use), and hands
the same object to every local subscriber of the channel. Conversation
channels pass through a node-level :class:`Sequencer`, so subscribers see
their seqs in order and a gap is repaired from storage once per node, not
once per socket.

Events of one channel that arrive within one turn of the event loop (a
batch of sends committed together, a burst from the bus) go out as one
:class:`Batch`: each socket gets them in a single write. A busy channel,
one that was written to less than the batch window ago, waits for the end
of that window, so that its sockets get one write per window however fast
events come. Under load this divides the system calls per delivery (most
of a delivery's cost) by the batch size; a quiet channel writes at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson

from protocol.codecs import JSON, Codec
from realtime.bus import Bus, LocalBus
from realtime.sequencer import Sequencer
from realtime.services.chatlog import StoredEvent
from realtime.wsframe import build_frame

logger = logging.getLogger(__name__)

FetchEvents = Callable[[uuid.UUID, int, int], Awaitable[Sequence[StoredEvent]]]


class Frames:
    """One event, as WebSocket frames built lazily and at most once per codec."""

    __slots__ = ("_frames", "_json", "seq", "value")

    #: What a :class:`Batch` holds; None for a single event.
    items: list[Frames] | None = None
    ordered = True

    def __init__(self, value: dict[str, Any], json_bytes: bytes | None = None) -> None:
        self.value = value
        self.seq: int | None = value.get("seq")
        self._json = json_bytes
        self._frames: dict[str, bytes] = {}

    @property
    def first_seq(self) -> int | None:
        return self.seq

    @property
    def last_seq(self) -> int | None:
        return self.seq

    def frame(self, codec: Codec) -> bytes:
        frame = self._frames.get(codec.name)
        if frame is None:
            if codec is JSON and self._json is not None:
                payload = self._json
            else:
                payload = codec.encode(self.value)
            frame = self._frames[codec.name] = build_frame(payload, codec.binary)
        return frame


class Batch:
    """Events of one channel, in order, written to each socket as one
    buffer. Its seq-carrying events are consecutive (the hub's sequencer
    delivers them so), from ``first_seq`` to ``last_seq``."""

    __slots__ = ("_frames", "first_seq", "items", "last_seq", "ordered")

    def __init__(self, items: list[Frames]) -> None:
        self.items: list[Frames] | None = items
        seqs = [f.seq for f in items if f.seq is not None]
        self.first_seq: int | None = seqs[0] if seqs else None
        self.last_seq: int | None = seqs[-1] if seqs else None
        #: False if the seqs are not consecutive (a channel without a
        #: sequencer): subscribers then take the events one by one.
        self.ordered = all(b == a + 1 for a, b in itertools.pairwise(seqs))
        self._frames: dict[str, bytes] = {}

    def frame(self, codec: Codec) -> bytes:
        frame = self._frames.get(codec.name)
        if frame is None:
            assert self.items is not None
            frame = b"".join(item.frame(codec) for item in self.items)
            self._frames[codec.name] = frame
        return frame


class Subscriber(Protocol):
    def on_frames(self, channel: str, frames: Frames | Batch) -> None: ...


class _Channel:
    __slots__ = ("pending", "sequencer", "subscribers", "written_at")

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.sequencer: Sequencer[Frames, StoredEvent] | None = None
        #: Events waiting for the end of this loop turn or batch window.
        self.pending: list[Frames] | None = None
        self.written_at = float("-inf")


class Hub:
    def __init__(self, fetch: FetchEvents, batch_window_s: float = 0.0) -> None:
        self._fetch = fetch
        self._window = batch_window_s
        self._channels: dict[str, _Channel] = {}
        self._dirty: list[tuple[str, _Channel]] = []
        self.bus: Bus = LocalBus()
        #: Gaps in a conversation's seqs read from storage.
        self.gap_repairs = 0
        #: Events written to local sockets, one per socket.
        self.deliveries = 0
        #: Events this node published.
        self.published = 0
        #: Given the seconds each fan-out took (the node's histogram).
        self.observe_fanout: Callable[[float], None] | None = None

    def attach(self, bus: Bus) -> None:
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

    async def subscribed(self, channel: str) -> None:
        """Until other nodes' events on ``channel`` reach this node."""
        await self.bus.subscribed(channel)

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

    def cursor(self, channel: str) -> int | None:
        """The newest seq this node has passed on for a conversation."""
        entry = self._channels.get(channel)
        if entry is None or entry.sequencer is None:
            return None
        return entry.sequencer.cursor

    def cursors(self) -> dict[str, int]:
        """The newest seq passed on, for every conversation followed here."""
        return {
            channel: entry.sequencer.cursor
            for channel, entry in self._channels.items()
            if entry.sequencer is not None
        }

    def catch_up(self, channel: str, head: int) -> bool:
        """Storage holds ``channel`` up to ``head``: deliver what this node
        has not passed on yet. False if it had passed all of it on."""
        entry = self._channels.get(channel)
        sequencer = entry.sequencer if entry is not None else None
        if sequencer is None or head <= sequencer.cursor:
            return False
        sequencer.catch_up(head)
        return True

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    # Repair: what the bus may have lost is in storage.

    def on_subscribed(self, channel: str) -> None:
        """The bus confirms a subscription: anything published before it
        took effect is read from storage."""
        entry = self._channels.get(channel)
        if entry is not None and entry.sequencer is not None:
            entry.sequencer.catch_up()

    def catch_up_all(self) -> None:
        """After the bus was cut off: every conversation from storage."""
        for entry in self._channels.values():
            if entry.sequencer is not None:
                entry.sequencer.catch_up()

    # Traffic.

    async def publish(self, channel: str, envelope: dict[str, Any]) -> None:
        """To this node's subscribers at once, and through the bus to the
        other nodes'."""
        payload = orjson.dumps(envelope)
        self.published += 1
        self.on_bus_message(channel, payload)
        await self.bus.publish(channel, payload)

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
            self._queue(entry, channel, frames)

    def _queue(self, entry: _Channel, channel: str, frames: Frames) -> None:
        if entry.pending is not None:
            entry.pending.append(frames)
            return
        entry.pending = [frames]
        loop = asyncio.get_running_loop()
        wait = entry.written_at + self._window - loop.time()
        if wait > 0:
            loop.call_later(wait, self._write, channel, entry)
            return
        if not self._dirty:
            loop.call_soon(self._flush)
        self._dirty.append((channel, entry))

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for channel, entry in dirty:
            self._write(channel, entry)

    def _write(self, channel: str, entry: _Channel) -> None:
        pending, entry.pending = entry.pending, None
        if not pending:
            return
        started = time.perf_counter()
        out: Frames | Batch = pending[0] if len(pending) == 1 else Batch(pending)
        for subscriber in tuple(entry.subscribers):
            subscriber.on_frames(channel, out)
        self.deliveries += len(entry.subscribers) * len(pending)
        if self.observe_fanout is not None:
            self.observe_fanout(time.perf_counter() - started)
        # The window starts when the write ends: a fan-out to many sockets
        # can itself take longer than the window.
        entry.written_at = asyncio.get_running_loop().time()

    # Sequencer owner: node-level order per conversation channel.

    async def fetch_events(
        self, key: str, after: int, limit: int
    ) -> Sequence[StoredEvent]:
        return await self._fetch(uuid.UUID(key[5:]), after, limit)

    def deliver_live(self, key: str, item: Frames) -> None:
        entry = self._channels.get(key)
        if entry is not None:
            self._queue(entry, key, item)

    def deliver_stored(self, key: str, event: StoredEvent) -> None:
        self.deliver_live(key, Frames(event.envelope()))

    def on_gap(self, key: str, cursor: int, seq: int) -> None:
        self.gap_repairs += 1
        logger.info("gap on %s: have %d, got %d; reading storage", key, cursor, seq)
