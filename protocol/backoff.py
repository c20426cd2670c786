"""Reconnect delays: exponential, capped, with full jitter, so that the
clients of a node that went away do not all come back at the same instant."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    base_s: float = 0.25
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt += 1
        return (rng or random).uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0
