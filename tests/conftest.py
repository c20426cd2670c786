"""Shared fixtures: a real node on a real port, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
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

from .services import scratch_postgres, unavailable

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
    async with app.client() as http:
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


# A Redis server of a test's own, for tests that stop and restart it: the
# shared one on 6379 is never touched.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnRedis:
    """A redis-server on a spare loopback port, that a test may kill and
    start again on the same port."""

    binary: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A started :class:`OwnRedis`, stopped after the test whatever happens."""
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
        raise AssertionError("unreachable")
    server = OwnRedis(binary, free_port(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
