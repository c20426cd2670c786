"""Delivering one conversation's events in seq order, with no gap and no
duplicate, whatever order they arrive in.

Live events come from the bus, which promises neither order nor
completeness (publishing happens after commit, from many nodes). Storage
is the truth: every seq below the conversation's head is stored. So a
:class:`Sequencer` passes on an event only when it is the next one; on a
gap it stops, reads the missing events from storage, delivers them, and
only then goes live again. While it catches up it keeps no live events,
only the highest seq it has seen: they are all in storage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)


class HasSeq(Protocol):
    @property
    def seq(self) -> int: ...


T = TypeVar("T")
S = TypeVar("S", bound=HasSeq)
T_contra = TypeVar("T_contra", contravariant=True)
S_co = TypeVar("S_co", bound=HasSeq)


class Owner(Protocol[T_contra, S_co]):
    """What a sequencer works for (the hub, or a socket's session). Methods
    rather than closures: thousands of sequencers live on a node."""

    async def fetch_events(self, key: str, after: int, limit: int) -> Sequence[S_co]:
        """Stored events with seq > ``after``, oldest first."""
        ...

    def deliver_live(self, key: str, item: T_contra) -> None: ...

    def deliver_stored(self, key: str, event: S_co) -> None: ...

    def on_gap(self, key: str, cursor: int, seq: int) -> None: ...


PAGE = 500
#: How often to re-read storage for a seq the bus announced but a replica
#: or a slow commit does not show yet, and how long to wait between tries.
MISSING_RETRIES = 5
MISSING_DELAY_S = 0.05


class Sequencer(Generic[T, S]):
    """One ordered stream. ``deliver_live`` takes what the bus carried,
    ``deliver_stored`` what storage returned; both are called in seq order,
    each seq at most once."""

    # Thousands exist per node (one per socket and conversation).
    __slots__ = ("_owner", "_task", "cursor", "head_seen", "key", "live", "paused")

    def __init__(self, cursor: int, owner: Owner[T, S], key: str) -> None:
        self.cursor = cursor
        self.live = True
        self.paused = False
        self.head_seen = cursor
        self.key = key
        self._owner = owner
        self._task: asyncio.Task[None] | None = None

    def take_run(self, first: int, last: int) -> bool:
        """The fast lane: True, with the cursor moved to ``last``, when the
        consecutive seqs ``first..last`` are the next live events. Anything
        else goes through :meth:`offer`, one event at a time."""
        if self.live and first == self.cursor + 1:
            self.cursor = last
            if last > self.head_seen:
                self.head_seen = last
            return True
        return False

    def offer(self, seq: int, item: T) -> None:
        """An event from the bus."""
        if seq > self.head_seen:
            self.head_seen = seq
        if not self.live:
            if not self.paused and (self._task is None or self._task.done()):
                # The last catch-up failed; this event is the cue to retry.
                self.catch_up()
            return
        if seq <= self.cursor:
            return
        if seq == self.cursor + 1:
            self.cursor = seq
            self._owner.deliver_live(self.key, item)
            return
        self._owner.on_gap(self.key, self.cursor, seq)
        self.catch_up()

    def pause(self) -> None:
        """Stop delivering until :meth:`catch_up` (a client sync is reading
        storage and will move the cursor itself)."""
        self.live = False
        self.paused = True
        if self._task is not None:
            self._task.cancel()

    def catch_up(self, target: int | None = None) -> None:
        """Deliver from storage up to the highest seq seen (or ``target``),
        then go live. Idempotent while running."""
        if target is not None and target > self.head_seen:
            self.head_seen = target
        self.live = False
        self.paused = False
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def wait(self) -> None:
        """Until a running catch-up has finished (for tests and sync)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        misses = 0
        try:
            while True:
                page = await self._owner.fetch_events(self.key, self.cursor, PAGE)
                for event in page:
                    if event.seq == self.cursor + 1:
                        self.cursor = event.seq
                        self._owner.deliver_stored(self.key, event)
                if self.cursor >= self.head_seen and len(page) < PAGE:
                    break
                if not page:
                    misses += 1
                    if misses > MISSING_RETRIES:
                        logger.warning(
                            "events %d..%d announced but not in storage; "
                            "going on without them",
                            self.cursor + 1,
                            self.head_seen,
                        )
                        self.cursor = self.head_seen
                        break
                    await asyncio.sleep(MISSING_DELAY_S)
            self.live = True
        except asyncio.CancelledError:
            raise
        except Exception:
            # Storage failed: stay paused; the next live event retries.
            logger.exception("catching up from storage failed")
