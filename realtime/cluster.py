"""What keeps one node consistent with the others.

- The control channel, which every node subscribes to: a membership change
  anywhere drops the conversation's cached member list everywhere.
- After the bus was cut off (a Redis outage), the node repairs what it
  may have missed, from storage: every followed conversation catches up,
  sessions ended meanwhile are closed, and each socket's conversations are
  checked against the memberships in storage.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from protocol.close_codes import CloseCode
from realtime.services.chatlog import MemberCache

if TYPE_CHECKING:
    from realtime.hub import Batch, Frames
    from realtime.node import Node

logger = logging.getLogger(__name__)

CONTROL_CHANNEL = "cluster"
MEMBERS_CHANGED = "_members"


class SharedMemberCache(MemberCache):
    """A member cache whose invalidations reach every node's cache."""

    link: ClusterLink | None = None

    def invalidate(self, conversation_id: uuid.UUID) -> None:
        super().invalidate(conversation_id)
        if self.link is not None:
            self.link.spawn(self.link.members_changed(conversation_id))

    def drop(self, conversation_id: uuid.UUID) -> None:
        """Forget one conversation here only (told by another node)."""
        super().invalidate(conversation_id)

    def clear(self) -> None:
        self._entries.clear()


class ClusterLink:
    """The node's subscriber on the control channel, and its repairs."""

    def __init__(self, node: Node, members: SharedMemberCache) -> None:
        self.node = node
        self.members = members
        self._tasks: set[asyncio.Task[None]] = set()
        self.resyncs = 0
        members.link = self

    def start(self) -> None:
        self.node.hub.subscribe(CONTROL_CHANNEL, self)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Control messages.

    async def members_changed(self, conversation_id: uuid.UUID) -> None:
        await self.node.hub.publish(
            CONTROL_CHANNEL,
            {
                "event": MEMBERS_CHANGED,
                "data": {"conversation_id": str(conversation_id)},
            },
        )

    def on_frames(self, channel: str, frames: Frames | Batch) -> None:
        items = frames.items if frames.items is not None else [frames]
        for item in items:
            value: dict[str, Any] = getattr(item, "value", {})
            if value.get("event") == MEMBERS_CHANGED:
                try:
                    conv_id = uuid.UUID(str(value["data"]["conversation_id"]))
                except (KeyError, TypeError, ValueError):
                    logger.error("malformed control message on %s", channel)
                    continue
                self.members.drop(conv_id)

    # Repairs.

    def on_reconnected(self) -> None:
        """The bus is back after losing its connection."""
        self.resyncs += 1
        self.members.clear()
        self.node.hub.catch_up_all()
        self.spawn(self._resync_sessions())

    async def _resync_sessions(self) -> None:
        sessions = [s for s in list(self.node.sockets) if s.principal and not s.closed]
        if not sessions:
            return
        try:
            revoked = await self.node.accounts.revoked_among(
                {s.principal.family_id for s in sessions if s.principal}
            )
            memberships = await self.node.conversations.conversations_of(
                {s.principal.user_id for s in sessions if s.principal}
            )
        except Exception:
            # Storage is down as well; the sockets go on as they were.
            logger.exception("re-checking sockets after the bus came back failed")
            return
        closed = 0
        for session in sessions:
            principal = session.principal
            if principal is None or session.closed:
                continue
            if principal.family_id in revoked:
                session.close(CloseCode.SESSION_REVOKED)
                closed += 1
                continue
            session.reconcile(memberships.get(principal.user_id, set()))
        logger.info(
            "re-checked %d sockets after the bus came back (%d revoked)",
            len(sessions),
            closed,
        )
