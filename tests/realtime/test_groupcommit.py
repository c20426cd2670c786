"""Group commit without storage: every submitted item is answered exactly
once, batches of a key run one at a time in arrival order, and no caller
is left waiting whatever the writer or the other callers do."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from realtime.services.groupcommit import GroupCommit


class Writer:
    """Records batches; each waits for ``gate`` when one is given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, key: str, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [ValueError(i) if i < 0 else i * 10 for i in items]


async def _in_flight(writer: Writer) -> None:
    """Hold the writer inside its first batch."""
    writer.gate = asyncio.Event()
    writer.entered.clear()


async def test_a_lone_item_is_written_at_once() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer)

    assert await commit.submit("a", 1) == 10
    assert writer.batches == [[1]]


async def test_items_arriving_during_a_batch_share_the_next_in_order() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer, max_batch=3)
    await _in_flight(writer)
    first = asyncio.create_task(commit.submit("a", 0))
    await writer.entered.wait()

    rest = [asyncio.create_task(commit.submit("a", i)) for i in range(1, 6)]
    other_key = asyncio.create_task(commit.submit("b", 9))
    await asyncio.sleep(0)
    assert writer.gate is not None
    writer.gate.set()

    assert await first == 0
    assert [await t for t in rest] == [10, 20, 30, 40, 50]
    assert await other_key == 90
    batches_of_a = [b for b in writer.batches if b != [9]]
    assert batches_of_a == [[0], [1, 2, 3], [4, 5]]
    assert (commit.batches, commit.items) == (4, 7)


async def test_an_item_that_must_be_alone_gets_its_own_batch() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer, alone=lambda i: i >= 100)
    await _in_flight(writer)
    first = asyncio.create_task(commit.submit("a", 0))
    await writer.entered.wait()

    rest = [asyncio.create_task(commit.submit("a", i)) for i in (1, 100, 2, 3)]
    await asyncio.sleep(0)
    assert writer.gate is not None
    writer.gate.set()

    await asyncio.gather(first, *rest)
    assert writer.batches == [[0], [1], [100], [2, 3]]


async def test_per_item_errors_go_to_their_callers_only() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer)

    results = await asyncio.gather(
        *(commit.submit("a", i) for i in (1, -2, 3)), return_exceptions=True
    )

    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert results[2] == 30
    assert writer.batches == [[1, -2, 3]]


async def test_a_failed_batch_fails_all_its_callers_and_the_next_batch_runs() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer)
    writer.fail = RuntimeError("storage is down")

    results = await asyncio.gather(
        *(commit.submit("a", i) for i in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)

    writer.fail = None
    assert await commit.submit("a", 5) == 50


async def test_cancelled_callers_do_not_disturb_the_others() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer)
    await _in_flight(writer)
    in_flight = [asyncio.create_task(commit.submit("a", i)) for i in (1, 2)]
    await writer.entered.wait()
    queued = [asyncio.create_task(commit.submit("a", i)) for i in (3, 4, 5)]
    await asyncio.sleep(0)

    # One caller gives up inside a batch, one while still queued.
    in_flight[0].cancel()
    queued[1].cancel()
    assert writer.gate is not None
    writer.gate.set()

    assert await in_flight[1] == 20
    assert [await queued[0], await queued[2]] == [30, 50]
    for task in (in_flight[0], queued[1]):
        with pytest.raises(asyncio.CancelledError):
            await task
    # Written although its caller left; dropped before it was taken.
    assert writer.batches == [[1, 2], [3, 5]]


async def test_a_cancelled_writer_cancels_its_callers_and_the_key_recovers() -> None:
    writer = Writer()
    commit: GroupCommit[str, int, int] = GroupCommit(writer)
    await _in_flight(writer)
    in_flight = asyncio.create_task(commit.submit("a", 1))
    await writer.entered.wait()
    queued = asyncio.create_task(commit.submit("a", 2))
    await asyncio.sleep(0)

    commit._writers["a"].cancel()

    for task in (in_flight, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    writer.gate = None
    assert await asyncio.wait_for(commit.submit("a", 3), 1) == 30


async def test_a_writer_with_too_few_outcomes_fails_its_batch_only() -> None:
    async def short(key: str, items: Sequence[int]) -> list[int | Exception]:
        return [1]

    commit: GroupCommit[str, int, int] = GroupCommit(short)

    results = await asyncio.wait_for(
        asyncio.gather(
            commit.submit("a", 1), commit.submit("a", 2), return_exceptions=True
        ),
        1,
    )

    assert all(isinstance(r, RuntimeError) for r in results)
    assert await commit.submit("a", 3) == 1
