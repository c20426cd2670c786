"""Group commit: writes that share a key go to storage one batch at a time,
and whatever arrives while a batch is in flight rides in the next one.

A write that finds its key idle starts at once, so light load pays no
extra latency; under load a transaction's fixed cost (the round trips of
begin, the statements and commit) is shared by every write of its batch.
Batches of one key run strictly one after another, in arrival order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

#: The most writes of one key in one batch, unless the owner sets its own
#: bound: a bigger batch saves little more and makes its statements long.
DEFAULT_MAX_BATCH = 64


def _never_alone(item: object) -> bool:
    return False


class GroupCommit(Generic[K, T, R]):
    """Queues writes per key and hands them to ``write`` in batches.

    ``write(key, items)`` stores one batch and returns one outcome per item,
    in order: the item's result, or the exception its caller should get.
    If ``write`` raises, every caller of that batch gets the exception.
    Items for which ``alone(item)`` is true get a batch of their own.
    """

    def __init__(
        self,
        write: Callable[[K, Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        alone: Callable[[T], bool] = _never_alone,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._alone = alone
        self._queues: dict[K, deque[tuple[T, asyncio.Future[R]]]] = {}
        # Strong references: the loop keeps only weak ones to its tasks.
        self._writers: dict[K, asyncio.Task[None]] = {}
        #: Batches handed to ``write``, and the items they held.
        self.batches = 0
        self.items = 0

    async def submit(self, key: K, item: T) -> R:
        """Store ``item`` with the next batch of ``key``; its outcome.

        Cancelling the caller does not disturb the batch: an item not yet
        taken is dropped, one already in a transaction is written anyway.
        """
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._writers[key] = asyncio.create_task(self._drain(key, queue))
        queue.append((item, future))
        return await future

    async def _drain(self, key: K, queue: deque[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            while queue:
                batch = self._take(queue)
                if batch:
                    await self._run(key, batch)
        finally:
            # No await since the queue was last seen empty, so no submit can
            # have slipped in unseen; after a cancellation nothing would
            # answer what is left, so those callers are cancelled too.
            del self._queues[key]
            del self._writers[key]
            for _, future in queue:
                future.cancel()

    def _take(
        self, queue: deque[tuple[T, asyncio.Future[R]]]
    ) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        while queue and len(batch) < self._max_batch:
            item, future = queue[0]
            if future.done():
                # Its caller was cancelled before anything was written.
                queue.popleft()
                continue
            alone = self._alone(item)
            if alone and batch:
                break
            batch.append(queue.popleft())
            if alone:
                break
        return batch

    async def _run(self, key: K, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        outcomes: Sequence[R | Exception]
        try:
            try:
                outcomes = await self._write(key, [item for item, _ in batch])
                if len(outcomes) != len(batch):
                    raise RuntimeError(
                        f"{len(outcomes)} outcomes for {len(batch)} writes"
                    )
            except Exception as exc:
                outcomes = [exc] * len(batch)
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            # Should the writer itself be cancelled, no caller of this batch
            # is left waiting.
            for _, future in batch:
                if not future.done():
                    future.cancel()
