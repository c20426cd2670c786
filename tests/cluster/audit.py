"""Comparing what a client yielded for one conversation with what storage
holds: each stored event once, in seq order, and nothing else."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: One seq-carrying event as a client yielded it or storage holds it: its
#: seq, and the client_msg_id of a message.new (None for other events).
Entry = tuple[int, str | None]


@dataclass(frozen=True)
class Audit:
    lost: list[int]
    """Stored seqs the client never yielded."""
    duplicated: list[int]
    """Seqs the client yielded more than once."""
    reordered: list[int]
    """Seqs the client yielded after a higher one."""
    wrong: list[int]
    """Seqs yielded with another message than the stored one, or not stored."""

    @property
    def counts(self) -> dict[str, int]:
        return {
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "reordered": len(self.reordered),
            "wrong": len(self.wrong),
        }

    @property
    def clean(self) -> bool:
        return not any(self.counts.values())


def audit(received: Sequence[Entry], stored: Mapping[int, str | None]) -> Audit:
    seen = Counter(seq for seq, _ in received)
    reordered: list[int] = []
    highest = 0
    for seq, _ in received:
        if seq < highest:
            reordered.append(seq)
        highest = max(highest, seq)
    return Audit(
        lost=sorted(set(stored) - set(seen)),
        duplicated=sorted(seq for seq, n in seen.items() if n > 1),
        reordered=reordered,
        wrong=sorted(
            {seq for seq, msg in received if seq not in stored or stored[seq] != msg}
        ),
    )
