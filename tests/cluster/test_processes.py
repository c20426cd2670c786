"""Nodes as real `squall serve` processes sharing PostgreSQL and Redis, with
reference clients spread over them: what one node stores reaches sockets
on the others, and no client loses, repeats or reorders a conversation's
events when a node is killed, drained, or cut off from Redis under load."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from protocol.client import Disconnected, RpcError, SquallClient
from protocol.close_codes import CloseCode
from tests.cluster.audit import Audit, Entry, audit
from tests.cluster.processes import Cluster, NodeProcess
from tests.services import RedisServer

pytestmark = pytest.mark.postgres

#: Sends acknowledged before a node or Redis is disturbed, and after.
BEFORE = 30
AFTER = 60
#: Most messages one sender sends, whatever happens.
SEND_LIMIT = 2000
#: Attempts of one send (with the same client_msg_id) before the test fails.
SEND_ATTEMPTS = 20
#: Longest wait for senders to finish, and for receivers to hold everything.
LOAD_LIMIT_S = 60.0
SETTLE_LIMIT_S = 30.0


class Load:
    """One group conversation of every user, one reference client per user
    spread over the nodes (each given all nodes, its own first), a receiver
    on every client, and senders that retry a failed send with the same
    client_msg_id until it is acknowledged."""

    def __init__(self, nodes: list[NodeProcess], database_url: str) -> None:
        self.nodes = nodes
        self.database_url = database_url
        self.clients: list[SquallClient] = []
        self.received: list[list[Entry]] = []
        self.acked: dict[str, int] = {}
        self.retries = 0
        self.conv_id = ""
        self._receivers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._senders: asyncio.Future[list[None]] | None = None

    async def open(self, cluster: Cluster, users: int) -> None:
        nodes = self.nodes
        accounts = await asyncio.gather(
            *(cluster.register(f"u{i}", nodes[i % len(nodes)]) for i in range(users))
        )
        conv = await cluster.rpc(
            accounts[0],
            "conversation.create",
            {
                "kind": "group",
                "title": "load",
                "member_ids": [u.id for u in accounts[1:]],
            },
            nodes[0],
        )
        self.conv_id = str(conv["id"])
        for i, user in enumerate(accounts):
            home = i % len(nodes)
            urls = [n.ws_url for n in nodes[home:] + nodes[:home]]
            # From seq 0: each client holds the whole conversation.
            client = SquallClient(urls, user.access, positions={self.conv_id: 0})
            self.clients.append(client)
            self.received.append([])
            await client.connect()
            self._receivers.append(asyncio.ensure_future(self._receive(i)))

    def acked_by(self, i: int) -> int:
        """Sends of client ``i`` acknowledged so far."""
        return sum(1 for msg_id in self.acked if msg_id.startswith(f"s{i}-"))

    def on_node(self, node: NodeProcess) -> list[int]:
        """The clients that started on ``node``."""
        index = self.nodes.index(node)
        return [i for i in range(len(self.clients)) if i % len(self.nodes) == index]

    async def _receive(self, i: int) -> None:
        channel = f"conv:{self.conv_id}"
        async for event in self.clients[i].events():
            if event.get("channel") != channel or "seq" not in event:
                continue
            msg_id = None
            if event["event"] == "message.new":
                msg_id = event["data"]["client_msg_id"]
            self.received[i].append((event["seq"], msg_id))

    def start_senders(self) -> None:
        """One sender on each node (clients 0..n-1 start on nodes 1..n),
        sending back to back until :meth:`stop_senders`."""
        self._stop = asyncio.Event()
        self._senders = asyncio.gather(*(self._send(i) for i in range(len(self.nodes))))

    async def stop_senders(self) -> None:
        self._stop.set()
        async with asyncio.timeout(LOAD_LIMIT_S):
            await self._senders

    async def _send(self, i: int) -> None:
        client = self.clients[i]
        for n in range(SEND_LIMIT):
            if self._stop.is_set():
                return
            msg_id = f"s{i}-{n}"
            params = {"conversation_id": self.conv_id, "client_msg_id": msg_id}
            for _ in range(SEND_ATTEMPTS):
                try:
                    result = await client.call(
                        "message.send", {**params, "text": msg_id}
                    )
                except (Disconnected, TimeoutError):
                    self.retries += 1  # the call waits for the reconnect
                    continue
                except RpcError as exc:
                    if not exc.body.get("temporary"):
                        raise
                    self.retries += 1
                    await asyncio.sleep(0.1)
                    continue
                self.acked[msg_id] = result["seq"]
                break
            else:
                raise AssertionError(f"{msg_id} unacknowledged after retries")

    async def until_acked(self, more: int) -> None:
        """Until ``more`` sends than now are acknowledged."""
        count = len(self.acked) + more
        async with asyncio.timeout(LOAD_LIMIT_S):
            while len(self.acked) < count:
                await asyncio.sleep(0.01)

    async def stored(self) -> dict[int, str | None]:
        """The conversation's log as storage holds it: seq -> client_msg_id."""
        conn = await asyncpg.connect(self.database_url)
        try:
            conv = uuid.UUID(self.conv_id)
            rows = await conn.fetch(
                "SELECT e.seq, m.client_msg_id FROM conversation_events e "
                "LEFT JOIN messages m ON e.type = 'message.new' "
                "AND m.conversation_id = e.conversation_id AND m.seq = e.seq "
                "WHERE e.conversation_id = $1 ORDER BY e.seq",
                conv,
            )
            head = await conn.fetchval(
                "SELECT last_seq FROM conversations WHERE id = $1", conv
            )
        finally:
            await conn.close()
        stored = {row["seq"]: row["client_msg_id"] for row in rows}
        assert sorted(stored) == list(range(1, head + 1)), "the log has a hole"
        return stored

    async def audit(self) -> dict[int, Audit]:
        """Once every client holds the head (or the wait is over): each
        client's stream against storage. Every acknowledged send is stored
        once, under the seq it was acknowledged with."""
        stored = await self.stored()
        head = max(stored)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_LIMIT_S):
                while any(not r or r[-1][0] < head for r in self.received):
                    await asyncio.sleep(0.05)
        # A moment for anything that would come twice.
        await asyncio.sleep(0.3)

        wrong_acks = {m: s for m, s in self.acked.items() if stored.get(s) != m}
        assert not wrong_acks, f"acknowledged, not stored as acknowledged: {wrong_acks}"
        twice = [m for m, n in Counter(stored.values()).items() if m and n > 1]
        assert not twice, f"stored twice: {twice}"
        return {i: audit(r, stored) for i, r in enumerate(self.received)}

    async def close(self) -> None:
        self._stop.set()
        if self._senders is not None:
            self._senders.cancel()
            with contextlib.suppress(BaseException):
                await self._senders
        for task in self._receivers:
            task.cancel()
        for task in self._receivers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(client.close() for client in self.clients))


def assert_clean(audits: dict[int, Audit]) -> None:
    faults = {i: a.counts for i, a in audits.items() if not a.clean}
    details = {i: a for i, a in audits.items() if not a.clean}
    assert not faults, f"lost/duplicated/reordered per client: {faults}\n{details}"


async def _load(cluster: Cluster, nodes: list[NodeProcess], database_url: str) -> Load:
    load = Load(nodes, database_url)
    try:
        await load.open(cluster, users=2 * len(nodes))
    except BaseException:
        await load.close()
        raise
    return load


async def test_a_send_on_one_node_process_reaches_a_socket_on_another(
    node_processes: Cluster,
) -> None:
    """A message sent through node 1 reaches, live, a socket held by node 2."""
    n1, n2 = await node_processes.start(2)
    alice = await node_processes.register("alice", n1)
    bob = await node_processes.register("bob", n2)
    sender = SquallClient(n1.ws_url, alice.access, reconnect=False)
    receiver = SquallClient(n2.ws_url, bob.access, reconnect=False)
    try:
        await sender.connect()
        await receiver.connect()
        conv = await sender.call(
            "conversation.create",
            {"kind": "group", "title": "g", "member_ids": [bob.id]},
        )
        await receiver.next_event(10, lambda e: e["event"] == "member.added")
        params = {"conversation_id": conv["id"], "client_msg_id": "m1", "text": "hi"}
        sent = await sender.call("message.send", params)

        new = await receiver.next_event(10, lambda e: e["event"] == "message.new")
        assert (new["seq"], new["data"]["text"]) == (sent["seq"], "hi")
        assert new["data"]["sender_id"] == alice.id
    finally:
        await sender.close()
        await receiver.close()


async def test_kill_9_of_a_node_under_load_loses_and_repeats_nothing(
    node_processes: Cluster, process_database: str
) -> None:
    """When one of three nodes is killed with SIGKILL while senders on every
    node send, each client ends holding exactly the stored events, once
    each and in seq order, and every acknowledged send is among them."""
    nodes = await node_processes.start(3)
    victim = nodes[1]
    load = await _load(node_processes, nodes, process_database)
    try:
        load.start_senders()
        await load.until_acked(BEFORE)
        victim.signal(signal.SIGKILL)
        assert await victim.wait_exit(10) == -signal.SIGKILL
        # The sender that was on the dead node goes on through another.
        sender = nodes.index(victim)
        before = load.acked_by(sender)
        await load.until_acked(AFTER)
        await load.stop_senders()

        assert load.acked_by(sender) > before
        assert_clean(await load.audit())
        for i in load.on_node(victim):
            client = load.clients[i]
            assert client.url != victim.ws_url, f"client {i} still on the dead node"
            assert client.connects >= 2
    finally:
        await load.close()


async def test_sigterm_drains_a_node_process_to_the_others(
    node_processes: Cluster, process_database: str
) -> None:
    """When a node gets SIGTERM under load, its sockets are closed with 1012,
    their clients go on through the other nodes without losing, repeating
    or reordering an event, and the process exits 0."""
    nodes = await node_processes.start(3, SQUALL_DRAIN_S="1")
    victim = nodes[2]
    load = await _load(node_processes, nodes, process_database)
    try:
        load.start_senders()
        await load.until_acked(BEFORE)
        victim.signal(signal.SIGTERM)
        assert await victim.wait_exit(30) == 0, victim.tail()
        sender = nodes.index(victim)
        before = load.acked_by(sender)
        await load.until_acked(AFTER)
        await load.stop_senders()

        assert load.acked_by(sender) > before
        assert_clean(await load.audit())
        for i in load.on_node(victim):
            client = load.clients[i]
            assert client.close_code == CloseCode.SERVER_RESTARTING.code
            assert client.url != victim.ws_url
            assert client.connects >= 2
    finally:
        await load.close()


async def _until_ready(nodes: list[NodeProcess]) -> None:
    """Until every node answers ``/readyz`` with 200: its bus is back."""
    async with asyncio.timeout(LOAD_LIMIT_S), httpx.AsyncClient(timeout=5) as http:
        for node in nodes:
            while (await http.get(node.base_url + "/readyz")).status_code != 200:
                await asyncio.sleep(0.05)


async def _readiness(node: NodeProcess, seconds: float) -> list[tuple[int, Any]]:
    """``/readyz`` of ``node`` every 100 ms: status and checks."""
    seen: list[tuple[int, Any]] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    async with httpx.AsyncClient(timeout=5) as http:
        while loop.time() < end:
            r = await http.get(node.base_url + "/readyz")
            seen.append((r.status_code, r.json().get("checks", {})))
            await asyncio.sleep(0.1)
    return seen


async def test_a_redis_restart_under_load_loses_and_repeats_nothing(
    node_processes: Cluster, process_database: str, tmp_path: Path
) -> None:
    """When the nodes' Redis stops and comes back on the same port while
    senders on every node send, each client ends holding exactly the stored
    events, once each and in seq order."""
    redis = RedisServer(tmp_path)
    redis.start()
    await redis.ready()
    try:
        nodes = await node_processes.start(3, SQUALL_REDIS_URL=redis.url)
        load = await _load(node_processes, nodes, process_database)
        try:
            load.start_senders()
            await load.until_acked(BEFORE)
            redis.stop()
            # Sends go on without Redis; each node delivers to its own
            # sockets and the others catch up from storage later.
            watching = asyncio.ensure_future(_readiness(nodes[0], 1.0))
            await load.until_acked(BEFORE)
            readiness = await watching
            redis.start()
            await redis.ready()
            await _until_ready(nodes)
            await load.until_acked(AFTER)
            await load.stop_senders()

            assert_clean(await load.audit())
        finally:
            await load.close()
    finally:
        await node_processes.stop()
        redis.stop()

    # While Redis was away the node said it should get no new clients.
    assert any(status == 503 for status, _ in readiness), readiness
