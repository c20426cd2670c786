"""A node is ready only while its bus reaches Redis: /readyz answers 503
while Redis is down and 200 again once the bus has reconnected, and
/metrics shows the outage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from realtime.settings import Settings
from tests.conftest import TEST_SECRET, Running, running_node
from tests.scrape import scrape, value
from tests.services import RedisServer


async def _ready(node: Running) -> tuple[int, dict[str, Any]]:
    async with node.client() as http:
        r = await http.get("/readyz")
    body: dict[str, Any] = r.json()
    return r.status_code, body


async def _until_ready(node: Running, status: int, timeout: float) -> dict[str, Any]:
    """Poll /readyz until it answers ``status``; its last body."""
    async with asyncio.timeout(timeout):
        while True:
            got, body = await _ready(node)
            if got == status:
                return body
            await asyncio.sleep(0.1)


async def test_ready_follows_the_bus(
    cluster_database: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=cluster_database,
        data_dir=tmp_path,
        jwt_secret=TEST_SECRET,
        redis_url=own_redis.url,
        node_id="solo",
    )
    async with running_node(settings) as node:
        body = await _until_ready(node, 200, 10)
        assert body["ready"] is True
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["bus"] == "ok"
        assert body["checks"]["draining"] == "no"
        assert value(await scrape(node), "squall_bus_up") == 1

        own_redis.kill()
        body = await _until_ready(node, 503, 10)
        assert body["ready"] is False
        assert body["checks"]["storage"] == "ok"
        assert body["checks"]["bus"] == "unreachable"
        # What is published meanwhile fails, and is counted.
        await node.node.hub.publish("cluster", {"event": "_probe", "data": {}})
        during = await scrape(node)
        assert value(during, "squall_bus_up") == 0
        assert value(during, "squall_bus_publish_failures_total") == 1
        assert value(during, "squall_bus_reconnects_total") == 0

        own_redis.start()
        await _until_ready(node, 200, 20)
        after = await scrape(node)
        assert value(after, "squall_bus_up") == 1
        assert value(after, "squall_bus_reconnects_total") == 1
        assert value(after, "squall_cluster_resyncs_total") == 1
