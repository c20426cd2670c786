"""Who is online, and who is typing where.

:class:`Presence` counts this node's sockets per user. A node alone is the
whole truth and announces the flips itself; in a cluster the subclass in
:mod:`realtime.presence_redis` keeps the shared state in Redis and uses
these counts as its local view.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from protocol.chat import PresenceOut
from protocol.envelope import conversation_channel
from realtime.services.chatlog import Publish
from realtime.timefmt import iso_utc

TYPING_EXPIRY_S = 6.0
#: Last-seen times kept in memory: enough for a node's recent users, bounded
#: so that a node up for months does not hold every user it ever saw.
_LAST_SEEN_MAX = 100_000


def presence_channel(user_id: uuid.UUID) -> str:
    return f"presence:{user_id}"


class Presence:
    """This node's sockets per user, and the last time each user left."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._sockets: dict[uuid.UUID, int] = {}
        self._last_seen: OrderedDict[uuid.UUID, datetime] = OrderedDict()

    def start(self) -> None:
        """Start the background loops, if any; :meth:`close` stops them."""

    async def close(self) -> None:
        """Give up what this node holds; a node alone holds nothing outside."""

    @property
    def healthy(self) -> bool:
        """Whether presence is shared with the cluster now (for readiness); a
        node alone always is."""
        return True

    async def connected(self, user_id: uuid.UUID) -> None:
        count = self._sockets.get(user_id, 0) + 1
        self._sockets[user_id] = count
        if count == 1:
            await self._first_socket(user_id)

    async def disconnected(self, user_id: uuid.UUID) -> None:
        count = self._sockets.get(user_id, 0) - 1
        if count > 0:
            self._sockets[user_id] = count
            return
        if self._sockets.pop(user_id, None) is None:
            return  # never counted: nothing to take back
        now = datetime.now(UTC)
        self._last_seen[user_id] = now
        self._last_seen.move_to_end(user_id)
        if len(self._last_seen) > _LAST_SEEN_MAX:
            self._last_seen.popitem(last=False)
        await self._last_socket(user_id, now)

    def online(self, user_id: uuid.UUID) -> bool:
        """Whether this node holds a socket of the user."""
        return user_id in self._sockets

    async def get(self, user_ids: list[uuid.UUID]) -> list[PresenceOut]:
        return self.local_view(user_ids)

    def local_view(self, user_ids: list[uuid.UUID]) -> list[PresenceOut]:
        return [
            PresenceOut(
                user_id=u,
                online=u in self._sockets,
                last_seen_at=None if u in self._sockets else self._last_seen.get(u),
            )
            for u in dict.fromkeys(user_ids)
        ]

    # What a flip of this node's count means: for a node alone, a flip of
    # the user's presence.

    async def _first_socket(self, user_id: uuid.UUID) -> None:
        await self._announce(user_id, None)

    async def _last_socket(self, user_id: uuid.UUID, at: datetime) -> None:
        await self._announce(user_id, at)

    async def _announce(self, user_id: uuid.UUID, last_seen: datetime | None) -> None:
        """Tell the watchers: online when ``last_seen`` is None."""
        channel = presence_channel(user_id)
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "online": last_seen is None,
            "last_seen_at": None if last_seen is None else iso_utc(last_seen),
        }
        await self._publish(
            channel, {"event": "presence", "channel": channel, "data": data}
        )


class Typing:
    """Typing indicators expire on their own: a client that vanishes while
    typing does not leave everyone watching a spinner.

    The node that takes a ``start`` holds its timer and sends the ``stop``
    when it lapses. In a cluster the ``stop`` may come through another node
    (the user's other device) that never saw the ``start``; asking Redis
    whether anyone did would put a round trip on every keystroke, so with
    ``cluster`` set every ``stop`` is published. Clients treat a ``stop`` for
    someone not typing as nothing, so the repeat that the first node's timer
    sends later costs one small event.
    """

    def __init__(
        self,
        publish: Publish,
        expiry_s: float = TYPING_EXPIRY_S,
        *,
        cluster: bool = False,
    ) -> None:
        self._publish = publish
        self.expiry_s = expiry_s
        self.cluster = cluster
        self._timers: dict[tuple[uuid.UUID, uuid.UUID], asyncio.TimerHandle] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def set(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, state: str
    ) -> None:
        key = (conversation_id, user_id)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if state == "start":
            loop = asyncio.get_running_loop()
            self._timers[key] = loop.call_later(self.expiry_s, self._expire, key)
        elif timer is None and not self.cluster:
            return  # stop without start: a node alone told no one of a start
        await self._send(conversation_id, user_id, state)

    def _expire(self, key: tuple[uuid.UUID, uuid.UUID]) -> None:
        self._timers.pop(key, None)
        task = asyncio.ensure_future(self._send(*key, "stop"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, state: str
    ) -> None:
        channel = conversation_channel(conversation_id)
        await self._publish(
            channel,
            {
                "event": "typing",
                "channel": channel,
                "data": {
                    "conversation_id": str(conversation_id),
                    "user_id": str(user_id),
                    "state": state,
                    "expires_in_ms": int(self.expiry_s * 1000)
                    if state == "start"
                    else 0,
                },
            },
        )

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
