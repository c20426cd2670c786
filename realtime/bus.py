"""Fan-out between nodes. One node: :class:`LocalBus`, a direct call. A
cluster: the Redis bus (to come) with the same two methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: Called with (channel, payload) for every message on a subscribed channel.
Receiver = Callable[[str, bytes], None]


class Bus(Protocol):
    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None: ...


class LocalBus:
    """The in-process bus of an embedded node: publishing is delivering."""

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._channels: set[str] = set()

    def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def publish(self, channel: str, payload: bytes) -> None:
        if channel in self._channels:
            self._receiver(channel, payload)
