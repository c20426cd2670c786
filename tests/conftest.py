"""Shared fixtures: a real node on a real port, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tornado.httpserver
import tornado.netutil
from sqlalchemy import delete

from realtime.node import Node, build_node
from realtime.server import make_app
from realtime.settings import Settings
from realtime.storage.migrate import upgrade_async
from realtime.storage.models import Base

from .services import RedisServer, scratch_postgres

ENGINES = ["sqlite", "postgres"]
TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
_names = itertools.count()


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("squall")


@asynccontextmanager
async def migrated_database(engine: str, tmp: Path) -> AsyncIterator[str]:
    """A fresh, migrated database of ``engine``; its ``SQUALL_DATABASE_URL``."""
    if engine == "sqlite":
        url = f"sqlite:///{tmp}/squall-{next(_names)}.db"
        await upgrade_async(Settings(database_url=url).sqlalchemy_url)
        yield url
        return
    async with scratch_postgres() as url:
        await upgrade_async(
            Settings(database_url=url, jwt_secret=TEST_SECRET).sqlalchemy_url
        )
        yield url


@pytest.fixture(scope="session", params=ENGINES)
async def database_url(
    request: pytest.FixtureRequest, session_tmp: Path
) -> AsyncIterator[str]:
    async with migrated_database(request.param, session_tmp) as url:
        yield url


@dataclass
class Running:
    node: Node
    base_url: str

    @property
    def settings(self) -> Settings:
        return self.node.settings

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1) + "/v1/ws"

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=10, **kwargs
        )


@asynccontextmanager
async def running_node(settings: Settings) -> AsyncIterator[Running]:
    """Start a node in this event loop on a free loopback port."""
    node = await build_node(settings)
    server = tornado.httpserver.HTTPServer(make_app(node))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        yield Running(node, f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        await server.close_all_connections()
        await node.close()


@pytest.fixture(scope="session")
async def shared_node(database_url: str, session_tmp: Path) -> AsyncIterator[Running]:
    data_dir = session_tmp / f"data-{next(_names)}"
    settings = Settings(
        database_url=database_url, data_dir=data_dir, jwt_secret=TEST_SECRET
    )
    async with running_node(settings) as running:
        yield running


async def _wipe(node: Node) -> None:
    async with node.db.transaction() as session:
        for table in reversed(Base.metadata.sorted_tables):
            await session.execute(delete(table))


@pytest.fixture
async def app(shared_node: Running) -> Running:
    """The shared node of this engine, with empty tables and fresh limits."""
    await _wipe(shared_node.node)
    shared_node.node.auth_limiter._buckets.clear()
    shared_node.node._rpc_limiters.clear()
    return shared_node


@dataclass
class User:
    id: str
    username: str
    password: str
    access: str
    refresh: str
    session_id: str


async def register_and_login(
    app: Running, username: str, password: str = "correct horse battery"
) -> User:
    return await register_at(app.base_url, username, password)


async def register_at(base_url: str, username: str, password: str) -> User:
    """A registered, logged-in user, through the REST API at ``base_url``."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        r = await http.post(
            "/v1/auth/register", json={"username": username, "password": password}
        )
        assert r.status_code == 201, r.text
        r = await http.post(
            "/v1/auth/login", json={"username": username, "password": password}
        )
        assert r.status_code == 200, r.text
        body = r.json()
    return User(
        id=body["user"]["id"],
        username=username,
        password=password,
        access=body["access_token"],
        refresh=body["refresh_token"],
        session_id=body["session_id"],
    )


@pytest.fixture
async def alice(app: Running) -> User:
    return await register_and_login(app, "alice")


@pytest.fixture
async def bob(app: Running) -> User:
    return await register_and_login(app, "bob")


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "details", "temporary"} <= set(body["error"])
    code: str = body["error"]["code"]
    return code


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started redis-server of the test's own, stopped after the test
    whatever happens."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
