"""Squall nodes in processes of their own, for tests that kill, drain or cut
them off: each runs `squall serve` on a port of its own, all share one
database migrated with `squall migrate` and one Redis under the test's
prefix.

Every wait here is bounded. Whatever starts a process stops it (SIGTERM,
then SIGKILL), and each node's stderr goes to a file that failure reports
quote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import TEST_SECRET, User, register_at

_SCRIPT = Path(sys.executable).with_name("squall")
#: The installed command where there is one, as an operator runs it.
SQUALL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "realtime.cli"]
PASSWORD = "correct horse battery"

START_LIMIT_S = 60.0
STOP_LIMIT_S = 20.0
POLL_S = 0.05

#: High enough that no test here is throttled: what is tested is delivery,
#: not the abuse limits.
NO_LIMITS = (
    '{"default": [10000, 10000], "read": [10000, 10000], "write": [10000, 10000],'
    ' "receipt": [10000, 10000], "typing": [10000, 10000]}'
)


def base_env(database_url: str, redis_url: str, prefix: str) -> dict[str, str]:
    """The environment every node of a test shares."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env.update(
        SQUALL_DATABASE_URL=database_url,
        SQUALL_JWT_SECRET=TEST_SECRET,
        SQUALL_REDIS_URL=redis_url,
        SQUALL_REDIS_PREFIX=prefix,
        SQUALL_AUTH_RATE_PER_MINUTE="100000",
        SQUALL_WS_RATE_LIMITS=NO_LIMITS,
        SQUALL_DRAIN_S="0.5",
        SQUALL_LOG_LEVEL="INFO",
        # A node that hangs is sent SIGABRT: its stacks go to stderr.
        PYTHONFAULTHANDLER="1",
    )
    return env


def migrate(env: dict[str, str], workdir: Path) -> None:
    """`squall migrate`, once, before any node starts."""
    out = subprocess.run(
        [*SQUALL, "migrate"],
        env={**env, "SQUALL_DATA_DIR": str(workdir / "migrate")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


async def _poll_exit(proc: subprocess.Popen[bytes], limit_s: float) -> int | None:
    deadline = time.monotonic() + limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
    return proc.poll()


class NodeProcess:
    """One `squall serve`, found by the WebSocket URL it prints."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = {**env, "SQUALL_DATA_DIR": str(workdir / name)}
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        #: It did not exit on SIGTERM.
        self.hung = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*SQUALL, "serve", "--port", "0", "--node-id", self.name],
                env=self.env,
                stdout=out,
                stderr=err,
            )

    async def wait_healthy(self, limit_s: float = START_LIMIT_S) -> None:
        """Until it listens and ``/healthz`` answers; raise with its stderr
        if it exits or takes too long."""
        assert self.proc is not None
        deadline = time.monotonic() + limit_s
        async with httpx.AsyncClient(timeout=5) as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
                if not self.port:
                    found = re.search(
                        rb"ws://127\.0\.0\.1:(\d+)/v1/ws", self.out_path.read_bytes()
                    )
                    if found:
                        self.port = int(found.group(1))
                if self.port:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await http.get(self.base_url + "/healthz")).is_success:
                            return
                await asyncio.sleep(POLL_S * 2)
        raise TimeoutError(f"{self.name} not healthy in {limit_s}s:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait_exit(self, limit_s: float = STOP_LIMIT_S) -> int | None:
        """Its exit status, or None if it is still running after ``limit_s``."""
        assert self.proc is not None
        return await _poll_exit(self.proc, limit_s)

    async def stop(self) -> None:
        """SIGTERM (the node drains), then SIGKILL if it hangs; before that,
        SIGABRT makes it write every thread's stack to its stderr."""
        if not self.running:
            return
        self.signal(signal.SIGTERM)
        if await self.wait_exit() is None:
            self.hung = True
            self.signal(signal.SIGABRT)
            if await self.wait_exit(5) is None:
                self.signal(signal.SIGKILL)
                await self.wait_exit(5)

    def tail(self, lines: int = 40) -> str:
        if not self.err_path.exists():
            return "(no stderr)"
        text = self.err_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """The node processes of one test, and the accounts it needs."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.nodes: list[NodeProcess] = []
        #: Added to usernames: tests share one database.
        self.tag = uuid.uuid4().hex[:8]

    async def start(self, count: int, **env: str) -> list[NodeProcess]:
        """Start ``count`` nodes at once (``env`` added to theirs) and wait
        until each answers."""
        started = [
            NodeProcess(
                f"n{len(self.nodes) + i + 1}", {**self.env, **env}, self.workdir
            )
            for i in range(count)
        ]
        self.nodes.extend(started)
        for node in started:
            node.launch()
        await asyncio.gather(*(node.wait_healthy() for node in started))
        return started

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    def logs(self) -> str:
        return "\n".join(
            f"--- {node.name} (exit {node.proc.poll() if node.proc else None}) ---\n"
            f"{node.tail()}"
            for node in self.nodes
        )

    async def register(self, username: str, node: NodeProcess | None = None) -> User:
        """A registered, logged-in user, through a node's REST API."""
        base = (node or self.nodes[0]).base_url
        return await register_at(base, f"{username}-{self.tag}", PASSWORD)

    async def rpc(
        self, user: User, method: str, params: dict[str, Any], node: NodeProcess
    ) -> Any:
        """A method over REST (``POST /v1/rpc/{method}``)."""
        async with httpx.AsyncClient(
            base_url=node.base_url,
            timeout=30,
            headers={"Authorization": f"Bearer {user.access}"},
        ) as http:
            r = await http.post(f"/v1/rpc/{method}", json=params)
        assert r.status_code == 200, r.text
        return r.json()
