"""The hub without sockets: whatever order the bus brings a conversation's
events in, and whichever it loses, each subscriber gets every seq once, in
order, with the events of one loop turn in one batch."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codecs import JSON
from protocol.envelope import conversation_channel
from realtime.hub import Batch, Frames, Hub
from realtime.services.chatlog import StoredEvent
from realtime.wsframe import build_frame

CONV = uuid.UUID(int=7)
CHANNEL = conversation_channel(CONV)


def _event(seq: int) -> StoredEvent:
    return StoredEvent(CONV, seq, "message.new", {"n": seq})


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.writes = 0

    def on_frames(self, channel: str, frames: Frames | Batch) -> None:
        self.writes += 1
        items = frames.items if isinstance(frames, Batch) else [frames]
        self.seqs.extend(f.seq for f in items or () if f.seq is not None)


def _hub(stored: dict[int, StoredEvent]) -> Hub:
    async def fetch(conv: uuid.UUID, after: int, limit: int) -> list[StoredEvent]:
        return [stored[s] for s in sorted(stored) if s > after][:limit]

    return Hub(fetch)


def _payload(seq: int) -> dict[str, Any]:
    return _event(seq).envelope()


async def _settle(hub: Hub) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


async def test_events_of_one_turn_go_to_each_subscriber_in_one_write() -> None:
    hub = _hub({s: _event(s) for s in range(1, 4)})
    a, b = Recorder(), Recorder()
    hub.subscribe(CHANNEL, a, head=0)
    hub.subscribe(CHANNEL, b, head=0)
    for seq in (1, 2, 3):
        await hub.publish(CHANNEL, _payload(seq))
    await _settle(hub)
    assert a.seqs == b.seqs == [1, 2, 3]
    assert a.writes == b.writes == 1
    assert hub.deliveries == 6


async def test_a_batch_is_its_frames_back_to_back() -> None:
    frames = [Frames(_payload(s), orjson.dumps(_payload(s))) for s in (4, 5)]
    batch = Batch(frames)
    assert (batch.first_seq, batch.last_seq, batch.ordered) == (4, 5, True)
    expected = b"".join(build_frame(orjson.dumps(_payload(s)), False) for s in (4, 5))
    assert batch.frame(JSON) == expected
    assert batch.frame(JSON) is batch.frame(JSON)  # built once
    assert not Batch([frames[1], frames[0]]).ordered


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=30),
    order=st.randoms(use_true_random=False),
    lost=st.sets(st.integers(min_value=1, max_value=30), max_size=10),
)
def test_any_arrival_order_and_any_loss_yield_each_seq_once_in_order(
    n: int, order: Any, lost: set[int]
) -> None:
    """The bus may reorder and drop; storage has everything."""

    async def scenario() -> None:
        hub = _hub({s: _event(s) for s in range(1, n + 1)})
        sub = Recorder()
        hub.subscribe(CHANNEL, sub, head=0)
        arrivals = [s for s in range(1, n + 1) if s not in lost or s == n]
        order.shuffle(arrivals)
        for i, seq in enumerate(arrivals):
            await hub.publish(CHANNEL, _payload(seq))
            if i % 3 == 0:
                await asyncio.sleep(0)
        for _ in range(50):
            await _settle(hub)
            if len(sub.seqs) >= n:
                break
        assert sub.seqs == list(range(1, n + 1))

    asyncio.run(scenario())


async def test_a_busy_channel_waits_for_its_window_then_writes_once() -> None:
    """After a write, events within the window wait for its end and go out in
    one write; a quiet channel is written without waiting."""
    hub = _hub({s: _event(s) for s in range(1, 6)})
    hub._window = 0.05
    sub = Recorder()
    hub.subscribe(CHANNEL, sub, head=0)
    await hub.publish(CHANNEL, _payload(1))
    await asyncio.sleep(0)
    assert (sub.seqs, sub.writes) == ([1], 1)  # quiet: at once

    for seq in (2, 3):
        await hub.publish(CHANNEL, _payload(seq))
        await asyncio.sleep(0.005)
    await hub.publish(CHANNEL, _payload(4))
    await asyncio.sleep(0.01)
    assert sub.writes == 1  # busy: held for the window
    await asyncio.sleep(0.06)
    assert (sub.seqs, sub.writes) == ([1, 2, 3, 4], 2)

    await asyncio.sleep(0.06)
    await hub.publish(CHANNEL, _payload(5))
    await asyncio.sleep(0)
    assert (sub.seqs[-1], sub.writes) == (5, 3)  # quiet again
