"""Everything one node holds, built once from settings and shared by every
handler."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from realtime.blobs import BlobStore, LocalBlobStore
from realtime.cluster import ClusterLink, SharedMemberCache
from realtime.hub import Hub
from realtime.metrics import NodeMetrics
from realtime.presence import Presence, Typing
from realtime.presence_redis import RedisPresence
from realtime.ratelimit import KeyedLimiter
from realtime.redis_bus import RedisBus
from realtime.security.tokens import TokenCodec
from realtime.services.accounts import AccountService
from realtime.services.chatlog import events_after
from realtime.services.conversations import ConversationService
from realtime.services.devices import DeviceService
from realtime.services.messages import MessageService
from realtime.services.uploads import UploadService
from realtime.settings import Settings
from realtime.storage.database import Database
from realtime.storage.migrate import ensure_migrated
from realtime.websocket import Sockets

logger = logging.getLogger(__name__)


@dataclass
class Node:
    settings: Settings
    db: Database
    tokens: TokenCodec
    accounts: AccountService
    devices: DeviceService
    uploads: UploadService
    conversations: ConversationService
    messages: MessageService
    hub: Hub
    presence: Presence
    typing: Typing
    blobs: BlobStore
    # Login and register attempts, keyed by client address and by username.
    auth_limiter: KeyedLimiter
    #: Every open WebSocket of this node, authenticated or not.
    connections: Sockets
    cluster: ClusterLink = field(init=False)
    metrics: NodeMetrics = field(init=False)
    draining: bool = field(default=False)
    #: REST requests being handled, for draining.
    requests_in_flight: int = field(default=0)
    #: Authenticated sockets of this node (sessions), for draining.
    sockets: set[Any] = field(default_factory=set)
    #: Node-wide loops, cancelled by :meth:`close`.
    background: list[asyncio.Task[None]] = field(default_factory=list)
    _rpc_limiters: dict[str, KeyedLimiter] = field(default_factory=dict)

    def rpc_limiter(self, rate_class: str) -> KeyedLimiter:
        """Per-user buckets for REST calls of one rate class, sized like the
        per-socket ones."""
        limiter = self._rpc_limiters.get(rate_class)
        if limiter is None:
            limits = self.settings.ws_rate_limits
            rate, burst = limits.get(rate_class) or limits["default"]
            limiter = self._rpc_limiters[rate_class] = KeyedLimiter(rate, burst)
        return limiter

    @property
    def node_id(self) -> str:
        return self.settings.effective_node_id

    async def close(self) -> None:
        self.connections.close_all()
        for task in self.background:
            task.cancel()
        self.typing.close()
        # Before the bus: taking this node's users offline publishes events.
        await self.presence.close()
        await self.hub.bus.close()
        await self.db.close()


async def build_node(settings: Settings, *, check_schema: bool = True) -> Node:
    """Open storage and wire the services. Refuses an unmigrated database."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if check_schema:
        await ensure_migrated(settings.sqlalchemy_url)
    db = Database(settings.sqlalchemy_url)
    tokens = TokenCodec.from_settings(settings)
    blobs = LocalBlobStore(settings.data_dir / "blobs")
    per_minute = settings.auth_rate_per_minute

    async def fetch(conversation_id: uuid.UUID, after: int, limit: int) -> Any:
        return await events_after(db, conversation_id, after, limit)

    hub = Hub(fetch, settings.ws_batch_window_ms / 1000.0)
    members = SharedMemberCache(db)
    presence = (
        RedisPresence.from_settings(settings, hub.publish)
        if settings.redis_url
        else Presence(hub.publish)
    )
    conversations = ConversationService(db, members, hub.publish)
    node = Node(
        settings=settings,
        db=db,
        tokens=tokens,
        accounts=AccountService(db, tokens, hub.publish),
        devices=DeviceService(db),
        uploads=UploadService(db, blobs, settings.public_url),
        conversations=conversations,
        messages=MessageService(db, members, conversations, hub.publish),
        hub=hub,
        presence=presence,
        typing=Typing(hub.publish, cluster=bool(settings.redis_url)),
        blobs=blobs,
        auth_limiter=KeyedLimiter(rate=per_minute / 60.0, burst=per_minute),
        connections=Sockets(settings.ws_ping_interval_s),
    )
    node.cluster = ClusterLink(node, members)
    node.metrics = NodeMetrics(node)
    hub.observe_fanout = node.metrics.fanout_seconds.observe
    if settings.redis_url:
        bus = RedisBus(
            settings.redis_url,
            hub.on_bus_message,
            prefix=settings.redis_prefix,
            on_subscribed=hub.on_subscribed,
            on_reconnected=node.cluster.on_reconnected,
        )
        hub.attach(bus)
        bus.start()
    node.cluster.start()
    presence.start()
    return node
