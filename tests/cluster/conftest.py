"""Fixtures for cluster tests: nodes sharing one PostgreSQL database and one
Redis, each test under a Redis prefix of its own that is deleted after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from realtime.settings import Settings
from tests.conftest import TEST_SECRET, Running, _wipe, migrated_database, running_node
from tests.services import REDIS_URL, require_redis


@pytest.fixture(scope="session")
async def cluster_database(session_tmp: Path) -> AsyncIterator[str]:
    async with migrated_database("postgres", session_tmp) as url:
        yield url


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    await require_redis()
    prefix = f"squall-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def cluster_settings(
    database_url: str, prefix: str, data_dir: Path, node_id: str, **extra: object
) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=data_dir,
        jwt_secret=TEST_SECRET,
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        node_id=node_id,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
async def two_nodes(
    cluster_database: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Running, Running]]:
    """Nodes a and b in this test's event loop, both on the bus."""
    a_settings = cluster_settings(cluster_database, redis_prefix, tmp_path, "a")
    b_settings = cluster_settings(cluster_database, redis_prefix, tmp_path, "b")
    async with running_node(a_settings) as a, running_node(b_settings) as b:
        await _wipe(a.node)
        for running in (a, b):
            bus = running.node.hub.bus
            await running.node.hub.bus.connected.wait()  # type: ignore[attr-defined]
            assert bus.healthy
        yield a, b
