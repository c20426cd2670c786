"""Reaching the real PostgreSQL and Redis of the machine, per the CI rule:
locally a service that is down skips its tests with the reason; with
CI=true it fails them, since CI always has both."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

PG_ADMIN_URL = os.environ.get(
    "SQUALL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: services must be up)")
    pytest.skip(reason)


@asynccontextmanager
async def scratch_postgres() -> AsyncIterator[str]:
    """A fresh database for this test run, dropped afterwards."""
    name = f"squall_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}")
        raise AssertionError("unreachable") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


REDIS_URL = os.environ.get("SQUALL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def require_redis() -> None:
    """Skip locally, fail in CI, when the Redis service is not there."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:  # type: ignore[attr-defined]
        unavailable(f"Redis unreachable at {REDIS_URL}: {exc}")
    finally:
        await client.aclose()


def free_port() -> int:
    """A loopback port nobody listens on (as of now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of one test's own, on a spare loopback port, for the
    tests that kill and restart Redis (never the shared one). Without
    persistence: a restart comes back empty, as after losing the data."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
            raise AssertionError("unreachable")
        self._binary = binary
        self._dir = directory
        self.port = free_port()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._procs.append(
            subprocess.Popen(
                [
                    self._binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self._dir),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    async def ready(self, limit_s: float = 10.0) -> None:
        """Until it answers a PING (bounded)."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + limit_s
        try:
            while True:
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.RedisError):  # type: ignore[attr-defined]
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def kill(self) -> None:
        """Stop it the hard way, as a crash would."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
