"""Fixtures for cluster tests: nodes sharing one PostgreSQL database and one
Redis, each test under a Redis prefix of its own that is deleted after it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from protocol.client import SquallClient
from realtime.settings import Settings
from tests.cluster.processes import Cluster, base_env, migrate
from tests.conftest import (
    TEST_SECRET,
    Running,
    User,
    _wipe,
    migrated_database,
    running_node,
)
from tests.services import REDIS_URL, require_redis, scratch_postgres


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


# Nodes in processes of their own.


@pytest.fixture(scope="session")
async def process_database(session_tmp: Path) -> AsyncIterator[str]:
    """A scratch PostgreSQL database migrated by `squall migrate`."""
    async with scratch_postgres() as url:
        migrate(base_env(url, "", "squall:"), session_tmp)
        yield url


@pytest.fixture
async def node_processes(
    process_database: str, redis_prefix: str, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """Start nodes with ``await node_processes.start(n)``; all are stopped
    after the test, whatever happened."""
    cluster = Cluster(base_env(process_database, REDIS_URL, redis_prefix), tmp_path)
    try:
        yield cluster
    finally:
        await cluster.stop()
    hung = [node.name for node in cluster.nodes if node.hung]
    assert not hung, f"nodes that did not exit on SIGTERM: {hung}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failure report quotes the stderr of the test's node processes."""
    report = yield
    cluster = getattr(item, "funcargs", {}).get("node_processes")
    if report.failed and isinstance(cluster, Cluster) and cluster.nodes:
        report.sections.append(("stderr of the squall nodes", cluster.logs()))
    return report


Connect = Callable[..., Awaitable[SquallClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``connect(where, user, **options)``: a connected reference client,
    closed after the test. ``where`` is a node (the client then does not
    reconnect, unless told to) or a list of URLs (it does, by default)."""
    clients: list[SquallClient] = []

    async def make(
        where: Running | list[str], user: User, **options: object
    ) -> SquallClient:
        if isinstance(where, Running):
            options.setdefault("reconnect", False)
            urls: str | list[str] = where.ws_url
        else:
            urls = where
        client = SquallClient(urls, user.access, **options)  # type: ignore[arg-type]
        clients.append(client)
        await client.connect()
        return client

    yield make
    for client in clients:
        await client.close()
