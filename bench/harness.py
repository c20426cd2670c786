"""What the benchmarks share: a node in its own process, its CPU time and
memory read from ``/proc``, a scratch database, and the accounts a run
needs.

Every wait here is bounded; every process started here is stopped by the
same object that started it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import tornado.httpclient

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SQUALL = BIN / "squall"
NODE_PROBE = Path(__file__).resolve().parent / "nodeprobe.py"
PASSWORD = "bench password 0123456789"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Limits high enough that no benchmark is throttled by the node's abuse
#: protection; what is measured is the work, not the policy.
NO_LIMITS = {
    name: [1_000_000.0, 1_000_000.0]
    for name in ("default", "read", "write", "receipt", "typing")
}


# The machine.


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one; children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def load_line() -> str:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"load {one} {five} {fifteen} (1/5/15 min), {os.cpu_count()} cores"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5), counted from 1 with pid and comm first.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# A server process.


class ServerProcess:
    """A server in its own process, found by the WebSocket URL it prints.

    Squall prints ``WebSocket ws://host:port/v1/ws`` when it listens; the
    Tornado baseline prints the same line, so one class starts both.
    """

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], workdir: Path, name: str
    ) -> None:
        self.argv = list(argv)
        self.env = env
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> subprocess.Popen[bytes]:
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(  # noqa: S603 - our own argv
                self.argv, env=self.env, stdout=out, stderr=err, cwd=ROOT
            )
        return self.proc

    async def start(self, limit_s: float = 60.0) -> int:
        """Launch and wait until it listens and answers ``/healthz``."""
        proc = self.launch()
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            found = re.search(rb"ws://[^:\s]+:(\d+)/", self.out_path.read_bytes())
            if found:
                self.port = int(found.group(1))
                await self._wait_healthy(deadline)
                return self.port
            await asyncio.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.name} did not start in {limit_s}s: {self.tail()}")

    async def _wait_healthy(self, deadline: float) -> None:
        http = tornado.httpclient.AsyncHTTPClient()
        while time.monotonic() < deadline:
            try:
                await http.fetch(self.url("/healthz"), request_timeout=5)
                return
            except (OSError, tornado.httpclient.HTTPClientError):
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} never answered /healthz")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def tail(self, lines: int = 15) -> str:
        text = (
            self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        )
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGINT (a node drains and exits), then SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# Squall nodes.


@dataclass
class NodeConfig:
    """How to run the node under test."""

    database: str = "sqlite"  # or "postgres"
    log_level: str = "WARNING"
    #: Run under bench/nodeprobe.py: memory probe on SIGUSR1, cProfile
    #: toggled by SIGUSR2, tracemalloc when ``tracemalloc`` is set.
    probe: bool = False
    tracemalloc: bool = False
    extra_env: dict[str, str] | None = None


@dataclass
class Node:
    server: ServerProcess
    env: dict[str, str]
    workdir: Path

    @property
    def pid(self) -> int:
        return self.server.pid

    @property
    def port(self) -> int:
        return self.server.port

    def memory_dump(self) -> Path:
        """Objects by type (and allocation sites under tracemalloc)."""
        return self._dump("memory", signal.SIGUSR1)

    def start_profile(self) -> None:
        self.server.send_signal(signal.SIGUSR2)

    def stop_profile(self) -> Path:
        """The cProfile stats since :meth:`start_profile`."""
        return self._dump("profile", signal.SIGUSR2)

    def _dump(self, kind: str, sig: int, limit_s: float = 600.0) -> Path:
        out = Path(self.env["BENCH_PROBE_DIR"])
        before = set(out.glob(f"{kind}-*.done"))
        self.server.send_signal(sig)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            done = [p for p in out.glob(f"{kind}-*.done") if p not in before]
            if done:
                return done[0].with_suffix("")
            time.sleep(0.1)
        raise TimeoutError(f"no {kind} dump from the node")


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def migrate(env: dict[str, str]) -> None:
    migrated = subprocess.run(  # noqa: S603 - our own argv
        [str(SQUALL), "migrate"], env=env, capture_output=True, timeout=120, cwd=ROOT
    )
    if migrated.returncode != 0:
        raise RuntimeError(f"migrate failed: {migrated.stderr.decode()[-2000:]}")


def node_env(workdir: Path, name: str, log_level: str = "WARNING") -> dict[str, str]:
    """The environment of a node under test: a fresh data directory, a new
    secret, limits lifted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL_")}
    env.update(
        SQUALL_DATA_DIR=str(workdir / "data"),
        SQUALL_JWT_SECRET=secrets.token_urlsafe(48),
        SQUALL_AUTH_RATE_PER_MINUTE="1000000",
        SQUALL_WS_RATE_LIMITS=orjson.dumps(NO_LIMITS).decode(),
        SQUALL_ACCESS_TOKEN_TTL_S=str(24 * 3600),
        SQUALL_LOG_LEVEL=log_level,
        SQUALL_NODE_ID=name,
    )
    return env


async def scratch_postgres() -> tuple[str, str]:
    """A new PostgreSQL database: its name (to drop) and its URL."""
    database = f"squall_bench_{uuid.uuid4().hex[:10]}"
    await _pg_admin(f'CREATE DATABASE "{database}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return database, f"{base}/{database}"


async def drop_postgres(database: str) -> None:
    await _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def squall_node(
    config: NodeConfig, workdir: Path, name: str = "squall"
) -> AsyncIterator[Node]:
    """Migrate a fresh database and run ``squall serve`` on a free port."""
    env = node_env(workdir, name, config.log_level)
    env.update(config.extra_env or {})
    database = None
    if config.database == "postgres":
        database, env["SQUALL_DATABASE_URL"] = await scratch_postgres()
    server = None
    try:
        migrate(env)
        argv = [str(SQUALL), "serve", "--port", "0"]
        if config.probe:
            probe_dir = workdir / "probe"
            probe_dir.mkdir(exist_ok=True)
            env["BENCH_PROBE_DIR"] = str(probe_dir)
            argv = [sys.executable]
            if config.tracemalloc:
                argv += ["-X", "tracemalloc=12"]
            argv += [str(NODE_PROBE), "serve", "--port", "0"]
        server = ServerProcess(argv, env, workdir, name)
        await server.start()
        yield Node(server, env, workdir)
    finally:
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                print(f"[{name}] exited {code}: {server.tail()}", file=sys.stderr)
        if database is not None:
            await drop_postgres(database)


# Accounts.


@dataclass(frozen=True)
class Account:
    user_id: str
    username: str
    token: str


async def seed_accounts(node_env: dict[str, str], count: int) -> list[Account]:
    """Write ``count`` users and one session each straight into the node's
    database, and sign their access tokens with the node's secret.

    The rows are the ones ``POST /v1/auth/register`` and ``/login`` store
    (the same ORM models, one real Argon2 hash of :data:`PASSWORD` shared
    by all), so the node cannot tell these sessions from logged-in ones;
    only the ~0.25 CPU-second Argon2 hash and verify per user are skipped.
    """
    from realtime.security.passwords import hash_password
    from realtime.security.tokens import TokenCodec, TokenType
    from realtime.settings import Settings
    from realtime.storage.database import Database
    from realtime.storage.models import RefreshFamily, User

    settings = Settings(
        data_dir=Path(node_env["SQUALL_DATA_DIR"]),
        database_url=node_env.get("SQUALL_DATABASE_URL", ""),
        jwt_secret=node_env["SQUALL_JWT_SECRET"],  # type: ignore[arg-type]
        access_token_ttl_s=int(node_env["SQUALL_ACCESS_TOKEN_TTL_S"]),
    )
    codec = TokenCodec.from_settings(settings)
    password_hash = hash_password(PASSWORD)
    tag = secrets.token_hex(3)
    rows = []
    for i in range(count):
        user = User(
            id=uuid.uuid4(),
            username=f"b{tag}{i}",
            display_name=f"Bench {i}",
            password_hash=password_hash,
        )
        rows.append((user, RefreshFamily(id=uuid.uuid4(), user_id=user.id)))
    db = Database(settings.sqlalchemy_url)
    try:
        for start in range(0, count, 1000):
            chunk = rows[start : start + 1000]
            async with db.transaction() as session:
                session.add_all([user for user, _ in chunk])
                await session.flush()
                session.add_all([family for _, family in chunk])
    finally:
        await db.close()
    return [
        Account(
            str(user.id),
            user.username,
            codec.issue(TokenType.ACCESS, user.id, family.id).token,
        )
        for user, family in rows
    ]


async def register_accounts(
    base_url: str, count: int, concurrency: int = 4, limit_s: float = 600.0
) -> list[Account]:
    """Create users through ``POST /v1/auth/register`` and ``/login``.

    Each costs the node two Argon2 operations (~0.25 CPU-second each), so
    this is slow for more than a few hundred users."""
    http = tornado.httpclient.AsyncHTTPClient(max_clients=concurrency)
    tag = secrets.token_hex(3)
    sem = asyncio.Semaphore(concurrency)

    async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await http.fetch(
            base_url + path,
            method="POST",
            body=orjson.dumps(body),
            headers={"Content-Type": "application/json"},
            request_timeout=120,
        )
        value: dict[str, Any] = orjson.loads(response.body)
        return value

    async def one(i: int) -> Account:
        name = f"r{tag}{i}"
        async with sem:
            await post("/v1/auth/register", {"username": name, "password": PASSWORD})
            pair = await post(
                "/v1/auth/login", {"username": name, "password": PASSWORD}
            )
        return Account(pair["user"]["id"], name, pair["access_token"])

    async with asyncio.timeout(limit_s):
        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def make_accounts(node: Node, count: int, how: str) -> list[Account]:
    started = time.monotonic()
    if how == "rest":
        accounts = await register_accounts(node.server.url(""), count)
    else:
        accounts = await seed_accounts(node.env, count)
    took = time.monotonic() - started
    print(f"  {count} accounts ({how}) in {took:.1f}s", flush=True)
    return accounts


# Output.


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def print_table(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


# Sampling profiles with py-spy (optional: `pip install py-spy` into .venv).


class PySpy:
    """``py-spy record`` of one process for one phase, as collapsed stacks.

    Sampling, with ``--nonblocking``, barely slows the process, unlike
    cProfile; py-spy is not a dependency of Squall, only of profiling."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        self.out = out
        self.argv = [
            str(BIN / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--nonblocking",
            "--output",
            str(out),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return (BIN / "py-spy").exists()

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        time.sleep(0.5)

    def stop(self) -> Path:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.out


#: Leaf frames of a thread that waits rather than works. py-spy's own idle
#: detection does not see these as idle on every kernel, so they are
#: dropped here: the event loop's select, aiosqlite's queue wait, thread
#: pools waiting for work.
IDLE_LEAVES = (
    "(selectors.py:",
    "_connection_worker_thread (core.py:59)",
    "(threading.py:",
    "(queue.py:",
    "(thread.py:",
)


def collapsed_report(path: Path, limit: int = 25) -> str:
    """Self and inclusive shares of the busiest functions in a collapsed-
    stack file (``a;b;c count`` a line), idle waits left out; and how the
    busy samples split between the event-loop thread and the others (the
    database threads, which cProfile does not see)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = idle = other_threads = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        if any(marker in frames[-1] for marker in IDLE_LEAVES):
            idle += n
            continue
        total += n
        if "_bootstrap (threading.py" in frames[0]:
            other_threads += n
        functions = [_function(f) for f in frames]
        own[functions[-1]] += n
        for function in set(functions):
            inclusive[function] += n
    if not total:
        return "  (no busy samples)"
    lines = [
        f"  {total} busy samples ({idle} idle ones left out); "
        f"{100 * other_threads / total:.0f}% of the busy ones on threads other "
        "than the event loop",
        "  self%   function",
    ]
    lines += [f"  {100 * n / total:5.1f}   {f}" for f, n in own.most_common(limit)]
    lines += ["", "  incl%   function"]
    lines += [
        f"  {100 * n / total:5.1f}   {f}" for f, n in inclusive.most_common(limit)
    ]
    return "\n".join(lines)


def _function(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``: lines of one function
    counted together."""
    return frame.rsplit(":", 1)[0] + ")" if frame.endswith(")") else frame


def _short(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py:123)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    return f"{name} ({where.rsplit('/', 1)[-1]}"


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temporary directory, kept afterwards when ``keep`` (profiles)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", flush=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
