"""Fan-out between nodes.

The hub delivers an event to this node's own sockets itself, at once; the
bus carries it to the other nodes. One node alone has :class:`LocalBus`,
which carries nothing. A cluster has :class:`~realtime.redis_bus.RedisBus`,
where each node subscribes only to the channels its own sockets need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

#: Called with (channel, payload) for every message from another node.
Receiver = Callable[[str, bytes], None]


class Bus(Protocol):
    #: Messages received from other nodes.
    received: int
    #: Messages handed to the bus for other nodes.
    published: int
    #: Publishes that failed (the bus was unreachable).
    publish_failures: int
    #: Times the bus got its connection back after losing it.
    reconnects: int

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None:
        """To the other nodes that subscribe to ``channel``."""
        ...

    async def subscribed(self, channel: str) -> None:
        """Until what other nodes publish on ``channel`` reaches this node
        (bounded: an unreachable bus does not hold a caller forever)."""
        ...

    @property
    def healthy(self) -> bool:
        """Whether events reach the other nodes now (for readiness)."""
        ...

    async def close(self) -> None: ...


class LocalBus:
    """The bus of a node that runs alone: there is no other node to tell."""

    healthy = True
    received = 0
    published = 0
    publish_failures = 0
    reconnects = 0

    def subscribe(self, channel: str) -> None:
        pass

    def unsubscribe(self, channel: str) -> None:
        pass

    async def publish(self, channel: str, payload: bytes) -> None:
        pass

    async def subscribed(self, channel: str) -> None:
        pass

    async def close(self) -> None:
        pass
