"""What keeps one node consistent with the others.

- The control channel, which every node subscribes to: a membership change
  anywhere drops the conversation's cached member list everywhere.
- After the bus was cut off (a Redis outage), the node repairs what it
  may have missed, from storage: every followed conversation catches up,
  sessions ended meanwhile are closed, and each socket's conversations are
  checked against the memberships in storage.
- Every few seconds it compares the heads of the conversations it follows
  with storage. An event can be stored and never published: its node died
  between the commit and the publish, or one PUBLISH failed while the
  subscriber connection stayed up. Without this check the other nodes
  would hear of it only with the conversation's next event.
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
#: How often followed conversations are compared with storage: the longest
#: an event that was stored but never published stays unseen. Each check is
#: one query per 500 conversations this node follows.
HEAD_CHECK_S = 5.0
#: How long a stored event may take to arrive through the bus before the
#: check counts it as never published: publishing takes milliseconds.
HEAD_GRACE_S = 1.0


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
        #: Conversations found behind storage by the head check.
        self.unannounced = 0
        self.head_check_s = HEAD_CHECK_S
        self.head_grace_s = HEAD_GRACE_S
        members.link = self

    def start(self) -> None:
        self.node.hub.subscribe(CONTROL_CHANNEL, self)
        if self.node.settings.redis_url:
            # A node alone publishes to its own sockets in-process: nothing
            # it stores can miss them.
            self.node.background.append(asyncio.ensure_future(self._check_heads()))

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

    async def _check_heads(self) -> None:
        while True:
            await asyncio.sleep(self.head_check_s)
            try:
                await self.check_heads()
            except Exception:
                # Storage is down: the next round tries again.
                logger.warning("comparing conversation heads with storage failed")

    async def check_heads(self) -> None:
        """Catch up every followed conversation that storage shows ahead of
        what this node passed on."""
        hub = self.node.hub
        cursors = hub.cursors()
        if not cursors:
            return
        ids = {channel: uuid.UUID(channel[5:]) for channel in cursors}
        heads = await self.node.conversations.heads(list(ids.values()))
        behind = {
            channel: heads[ids[channel]]
            for channel, cursor in cursors.items()
            if heads.get(ids[channel], 0) > cursor
        }
        if not behind:
            return
        # Events committed a moment ago are on their way: give them time.
        await asyncio.sleep(self.head_grace_s)
        for channel, head in behind.items():
            if hub.catch_up(channel, head):
                self.unannounced += 1
                logger.info("%s is behind storage (head %d)", channel, head)

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
