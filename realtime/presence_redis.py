"""Presence for a cluster: a user is online while any live node holds a
socket of theirs.

Keys, all under the prefix and one hash tag (``{presence}``), because the
scripts below touch a node's keys and its users' together, which Redis
Cluster allows only within one slot:

- ``nodes``: zset, node -> the time (ms, Redis's clock) by which it must
  beat again. A node is this process: its name is the node id and a random
  suffix, so a node restarted under the same id starts clean and its
  previous life is reaped like any dead node.
- ``node:<node>``: set of the users with a socket on that node; what a
  reaper clears when the node dies.
- ``user:<user_id>``: hash with a field per node holding the user, or,
  once none does, the single field ``seen`` (ms) and a 30-day expiry.

Flips are decided in Redis by one script per change, so of a connect on
one node and a disconnect on another exactly one sees the user come or go,
and only that node publishes the event. A node never writes from the
socket's coroutine: changes mark the user dirty and one writer task brings
Redis to this node's counts, so a slow or absent Redis never holds up a
socket, and the writes of one node are applied in order.

A node beats every third of its TTL. Every node looks as often for nodes
whose deadline has passed and reaps them in batches: a batch removes users
from the dead node's set and its field from their hashes in one script,
and returns those who went offline, so each offline event has one
publisher even if two reapers race. A short lock per dead node keeps the
other nodes from doing the same work meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from protocol.backoff import Backoff
from protocol.chat import PresenceOut
from realtime.presence import Presence
from realtime.services.chatlog import Publish
from realtime.settings import Settings

logger = logging.getLogger(__name__)

#: How long a user's last-seen time outlives their last socket.
SEEN_TTL_MS = 30 * 24 * 3600 * 1000
#: Users per pipeline or reap script: bounds one script's time in Redis.
BATCH = 500
#: Longest one Redis call may take (connecting, or waiting for a reply);
#: past it, ``presence.get`` answers from this node's own view. A socket
#: timeout rather than a cancel: the Redis client can lose a cancel.
COMMAND_TIMEOUT_S = 1.0
#: Longest a stopping node spends taking its users offline itself.
CLOSE_TIMEOUT_S = 3.0
#: Dead nodes reaped per look, the rest on the next look.
REAP_LOOK = 16
#: How long a stopping node waits for its loops before cancelling again.
STOP_RETRY_S = 0.1

_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Removes node from a user's hash; returns the time the user went offline,
-- or 0 if another node still holds them.
local function gone(key, node, seen_ttl)
  if redis.call('HDEL', key, node) == 0 then return 0 end
  if redis.call('HLEN', key) > 0 then return 0 end
  local now = now_ms()
  redis.call('HSET', key, 'seen', string.format('%d', now))
  redis.call('PEXPIRE', key, seen_ttl)
  return now
end
"""

# KEYS nodes; ARGV node, ttl_ms. 1 when the node was unknown or overdue, so
# that Redis may have lost what it wrote, or a reaper may have taken it.
_BEAT = (
    _LIB
    + """
local now = now_ms()
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[1])
if old == false or tonumber(old) < now then return 1 end
return 0
"""
)

# KEYS nodes, node set, user hash; ARGV node, user, '1' online / '0' not,
# seen_ttl. Online: -1 if the node is unknown or overdue (a reaper may be
# taking its users: it must beat again first), 1 if the user came online,
# else 0. Offline: the time the user went offline, else 0.
_SET = (
    _LIB
    + """
if ARGV[3] == '1' then
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if deadline == false or tonumber(deadline) < now_ms() then return -1 end
  redis.call('SADD', KEYS[2], ARGV[2])
  if redis.call('HSETNX', KEYS[3], ARGV[1], '1') == 0 then return 0 end
  if redis.call('HDEL', KEYS[3], 'seen') == 0 and redis.call('HLEN', KEYS[3]) > 1 then
    return 0
  end
  redis.call('PERSIST', KEYS[3])
  return 1
end
redis.call('SREM', KEYS[2], ARGV[2])
return gone(KEYS[3], ARGV[1], ARGV[4])
"""
)

# KEYS nodes; ARGV limit. Nodes whose deadline has passed.
_EXPIRED = (
    _LIB
    + """
local before = string.format('(%d', now_ms())
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', before, 'LIMIT', 0, ARGV[1])
"""
)

# KEYS nodes, node set, then a user hash per user; ARGV node, seen_ttl, then
# the users. Returns {status, user, ms, user, ms...} with the users who went
# offline; status 0 when the node is gone for good, 1 when users remain, 2
# when the node beat again meanwhile (it re-registers its users itself).
_REAP = (
    _LIB
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline == false or tonumber(deadline) >= now_ms() then return {2} end
local out = {1}
for i = 3, #ARGV do
  if redis.call('SREM', KEYS[2], ARGV[i]) == 1 then
    local at = gone(KEYS[i], ARGV[1], ARGV[2])
    if at > 0 then
      out[#out + 1] = ARGV[i]
      out[#out + 1] = at
    end
  end
end
if redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  out[1] = 0
end
return out
"""
)

_REDIS_TROUBLE = (RedisError, OSError)


class RedisPresence(Presence):
    """Cluster-wide presence; this node's counts are kept as its local view,
    which answers while Redis is away."""

    def __init__(
        self,
        publish: Publish,
        *,
        url: str,
        prefix: str,
        node_id: str,
        ttl_s: float,
    ) -> None:
        super().__init__(publish)
        self.node = f"{node_id}/{secrets.token_hex(4)}"
        self._node_field = self.node.encode()
        self.ttl_s = ttl_s
        self._keys = f"{prefix}{{presence}}:"
        self._nodes_key = self._keys + "nodes"
        # One quick retry covers a pooled connection that Redis dropped; the
        # loops here do the longer waiting.
        self._redis = aioredis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._beat = self._redis.register_script(_BEAT)
        self._set = self._redis.register_script(_SET)
        self._expired = self._redis.register_script(_EXPIRED)
        self._reap_batch = self._redis.register_script(_REAP)
        #: Users whose state in Redis may differ from this node's count.
        self._dirty: set[uuid.UUID] = set()
        self._wake = asyncio.Event()
        #: Redis may lack what this node holds: register and rewrite it all.
        self._resync = True
        self._failing = False
        #: Loop time from which this node reaps others: after a start or an
        #: outage the other nodes get a TTL to beat again before it judges.
        self._reap_from: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Counters for metrics.
        self.redis_errors = 0
        self.resyncs = 0
        self.reaped_nodes = 0
        self.reaped_users = 0
        self.local_answers = 0

    @classmethod
    def from_settings(cls, settings: Settings, publish: Publish) -> RedisPresence:
        return cls(
            publish,
            url=settings.redis_url,
            prefix=settings.redis_prefix,
            node_id=settings.effective_node_id,
            ttl_s=settings.presence_ttl_s,
        )

    @property
    def healthy(self) -> bool:
        """False from a failed Redis call until the next one succeeds."""
        return not self._failing

    def _node_key(self, node: str) -> str:
        return f"{self._keys}node:{node}"

    def _user_key(self, user: uuid.UUID | str) -> str:
        return f"{self._keys}user:{user}"

    # Life cycle.

    def start(self) -> None:
        self._tasks = [
            asyncio.ensure_future(self._keep(self._write_loop)),
            asyncio.ensure_future(self._keep(self._beat_loop)),
            asyncio.ensure_future(self._keep(self._reap_loop)),
        ]
        self._wake.set()

    async def close(self) -> None:
        """Stop the loops and take this node's users offline at once, rather
        than leaving them to the reapers a TTL later."""
        await self.stop()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._redis.zadd(self._nodes_key, {self.node: 0})
                await self._reap(self.node)
        except (*_REDIS_TROUBLE, TimeoutError) as exc:
            logger.warning(
                "presence: could not deregister node %s (%s); others reap it "
                "within %.1f s",
                self.node,
                type(exc).__name__,
                self.ttl_s * 4 / 3,
            )
        await self._redis.aclose()

    async def stop(self) -> None:
        """Stop the loops and leave Redis as it is, the way a node that
        crashed would."""
        tasks, self._tasks = self._tasks, []
        # The Redis client can lose a cancel that lands during a command
        # (the command returns as if none had come, and the loop goes on):
        # cancel again until every loop has ended.
        while pending := [task for task in tasks if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=STOP_RETRY_S)

    async def _keep(self, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a loop again after a bug in it, so that presence does not
        stop for the rest of the node's life."""
        while True:
            try:
                await loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("presence: %s failed; restarting it", loop.__name__)
                self._resync = True
                await asyncio.sleep(self.ttl_s / 3)

    # Flips of this node's counts: only marked here, written by the writer.

    async def _first_socket(self, user_id: uuid.UUID) -> None:
        self._mark(user_id)

    async def _last_socket(self, user_id: uuid.UUID, at: datetime) -> None:
        self._mark(user_id)

    def _mark(self, user_id: uuid.UUID) -> None:
        self._dirty.add(user_id)
        self._wake.set()

    # Reading.

    async def get(self, user_ids: list[uuid.UUID]) -> list[PresenceOut]:
        """Presence of each user across the cluster, in one round trip; this
        node's own view if Redis does not answer."""
        users = list(dict.fromkeys(user_ids))
        if self._failing:
            self.local_answers += 1
            return self.local_view(users)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for user in users:
                    pipe.hgetall(self._user_key(user))
                hashes = await pipe.execute()
        except _REDIS_TROUBLE as exc:
            self._trouble("read", exc)
            self.local_answers += 1
            return self.local_view(users)
        return [
            self._merge(user, fields)
            for user, fields in zip(users, hashes, strict=True)
        ]

    def _merge(self, user: uuid.UUID, fields: dict[bytes, bytes]) -> PresenceOut:
        """Redis for the other nodes, this node's counts for itself: they are
        ahead of what the writer has brought to Redis yet."""
        elsewhere = any(f not in (b"seen", self._node_field) for f in fields)
        if elsewhere or user in self._sockets:
            return PresenceOut(user_id=user, online=True, last_seen_at=None)
        times = [self._last_seen[user]] if user in self._last_seen else []
        if b"seen" in fields:
            times.append(_from_ms(int(fields[b"seen"])))
        return PresenceOut(
            user_id=user, online=False, last_seen_at=max(times) if times else None
        )

    # The writer: Redis follows this node's counts.

    async def _write_loop(self) -> None:
        backoff = Backoff(base_s=0.1, cap_s=5.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except _REDIS_TROUBLE as exc:
                self._trouble("write", exc)
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
            else:
                backoff.reset()
                self._recovered()

    async def _flush(self) -> None:
        while self._resync or self._dirty:
            if self._resync:
                await self._register()
            batch = [self._dirty.pop() for _ in range(min(BATCH, len(self._dirty)))]
            # The counts may change while the writes are away: what was
            # written is what the replies are about.
            online = [user in self._sockets for user in batch]
            try:
                results = await self._write(batch, online)
            except BaseException:
                self._dirty.update(batch)
                raise
            for user, came, result in zip(batch, online, results, strict=True):
                if result == -1:
                    # Overdue or reaped: beat and register, then again.
                    self._resync = True
                    self._dirty.add(user)
                elif result and came:
                    await self._announce(user, None)
                elif result:
                    await self._announce(user, _from_ms(result))

    async def _write(self, users: list[uuid.UUID], online: list[bool]) -> list[Any]:
        if not users:
            return []
        node_key = self._node_key(self.node)
        async with self._redis.pipeline(transaction=False) as pipe:
            for user, came in zip(users, online, strict=True):
                await self._set(
                    keys=[self._nodes_key, node_key, self._user_key(user)],
                    args=[self.node, str(user), "1" if came else "0", SEEN_TTL_MS],
                    client=pipe,
                )
            return list(await pipe.execute())

    async def _register(self) -> None:
        """Beat, then mark every user whose state in Redis may be wrong:
        everyone this node holds, and whoever Redis says it holds but it
        does not (a write lost with its reply)."""
        await self._beat(keys=[self._nodes_key], args=[self.node, self._ttl_ms])
        held = await self._redis.smembers(self._node_key(self.node))
        self._resync = False
        self.resyncs += 1
        self._dirty.update(self._sockets)
        for raw in held:
            with contextlib.suppress(ValueError):
                user = uuid.UUID(_text(raw))
                if user not in self._sockets:
                    self._dirty.add(user)

    # Heartbeat and reaping.

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)

    async def _beat_loop(self) -> None:
        """Beat every third of the TTL, on a schedule that nothing else this
        node does can delay: a node that beats late is reaped."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                overdue = await self._beat(
                    keys=[self._nodes_key], args=[self.node, self._ttl_ms]
                )
            except _REDIS_TROUBLE as exc:
                self._trouble("heartbeat", exc)
            else:
                if overdue and not self._resync:
                    logger.warning(
                        "presence: node %s missed its heartbeat; re-registering",
                        self.node,
                    )
                    self._resync = True
                if self._resync:
                    self._wake.set()
                self._recovered()
                if self._reap_from is None:
                    self._reap_from = loop.time() + self.ttl_s
            await asyncio.sleep(max(0.0, started + self.ttl_s / 3 - loop.time()))

    async def _reap_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            if self._reap_from is None or loop.time() < self._reap_from:
                continue
            try:
                await self._reap_dead()
            except _REDIS_TROUBLE as exc:
                self._trouble("reap", exc)

    async def _reap_dead(self) -> None:
        dead = await self._expired(keys=[self._nodes_key], args=[REAP_LOOK])
        for raw in dead:
            node = _text(raw)
            if node == self.node:
                continue  # late, not dead: the next beat says so
            lock = f"{self._keys}reap:{node}"
            if not await self._redis.set(lock, self.node, nx=True, px=self._ttl_ms):
                continue
            logger.info("presence: reaping node %s, which stopped beating", node)
            await self._reap(node)
            self.reaped_nodes += 1
            await self._redis.delete(lock)

    async def _reap(self, node: str) -> None:
        """Take the node's users offline, a batch per script, publishing for
        those who have no other node."""
        node_key = self._node_key(node)
        while True:
            # With a count, SRANDMEMBER answers a list.
            members = cast(
                "list[bytes]", await self._redis.srandmember(node_key, BATCH)
            )
            users = [_text(u) for u in members]
            out: list[Any] = await self._reap_batch(
                keys=[self._nodes_key, node_key, *map(self._user_key, users)],
                args=[node, SEEN_TTL_MS, *users],
            )
            for i in range(1, len(out), 2):
                self.reaped_users += 1
                user = uuid.UUID(_text(out[i]))
                await self._announce(user, _from_ms(int(out[i + 1])))
            if out[0] != 1:
                return

    # Trouble with Redis.

    def _trouble(self, what: str, exc: BaseException) -> None:
        self.redis_errors += 1
        # Whatever was written meanwhile may be lost; and the others may
        # not have heard from us either.
        self._resync = True
        self._reap_from = None
        if not self._failing:
            self._failing = True
            logger.warning(
                "presence: Redis %s failed (%s); answering from this node's view",
                what,
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("presence: Redis is back; re-registering this node's users")


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
