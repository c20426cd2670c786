"""Cluster: sustained messages per second through one conversation whose
members are spread over the nodes, with end-to-end latency.

    .venv/bin/python bench/cluster.py                  # 1 node, then 2
    .venv/bin/python bench/cluster.py --nodes 2 --duration 30
    .venv/bin/python bench/cluster.py --quick          # 10 s runs

Each run gets a fresh PostgreSQL database, a Redis key prefix of its own
(on the Redis at ``--redis``) and N ``squall serve`` processes sharing
them. One group conversation of M members (200); member i's receiving
socket is on node i mod N, held by a receiver process per node. S senders
(4; second sockets of the first S members, sender j on node j mod N) send
for ``--duration`` seconds, each keeping ``--window`` sends unanswered
(closed loop: the sustained rate), or at ``--rate`` messages per second
in all (open loop: the latency at a given load). A
message's text starts with the sender's ``time.monotonic_ns()`` (one
clock for every process of the machine); ``--samplers`` receiving sockets
read it back and record the latency from the send to their receipt.

    messages per second = acknowledged sends in the window / window
    latency             = receipt at a sampling socket - send, p50/p99/max

After the window the senders stop and every receiving socket must count
every acknowledged message (the run fails otherwise). The nodes' CPU over
the window is read from ``/proc``. Everything runs on this machine's
cores, PostgreSQL and Redis included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from fanout import create_group
from harness import (
    SQUALL,
    Account,
    ServerProcess,
    drop_postgres,
    fmt_int,
    load_line,
    migrate,
    node_env,
    print_table,
    raise_nofile,
    scratch_dir,
    scratch_postgres,
    seed_accounts,
)
from wsload import Receivers, WsClient, connect

TEXT = "t={t} cluster benchmark message {i}"


@dataclass
class Result:
    nodes: int
    members: int
    sent: int
    seconds: float
    latencies_ms: list[float]
    node_cpu_s: list[float]
    complete: bool

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# Load.


async def send_for(
    sender: WsClient,
    conversation_id: str,
    tag: str,
    window: int,
    until: float,
    counted: list[int],
    rate: float = 0.0,
    phase: float = 0.0,
) -> None:
    """Send until ``until`` (monotonic), at most ``window`` in flight, and
    at ``rate`` per second when given (else as fast as replies come); the
    number acknowledged is added to ``counted``. ``phase`` (a fraction of
    one interval) staggers senders that share a rate."""
    acked = 0
    pending: set[asyncio.Future[dict[str, object]]] = set()
    i = 0
    started = time.monotonic() + (phase / rate if rate else 0.0)
    while time.monotonic() < until:
        if rate and not pending:
            # Open loop: the i-th send is due at started + i / rate.
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        while len(pending) < window and (
            not rate or time.monotonic() >= started + i / rate
        ):
            pending.add(
                sender.call_nowait(
                    "message.send",
                    {
                        "conversation_id": conversation_id,
                        "client_msg_id": f"{tag}-{i}",
                        "text": TEXT.format(t=time.monotonic_ns(), i=i),
                    },
                )
            )
            i += 1
        if not pending:
            continue
        timeout = 30.0
        if rate:
            timeout = max(0.0, started + i / rate - time.monotonic())
        done, pending = await asyncio.wait(
            pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done and rate:
            continue
        if not done:
            raise TimeoutError("no reply to message.send in 30 s")
        for future in done:
            reply = future.result()
            if "error" in reply:
                raise RuntimeError(f"message.send failed: {reply['error']}")
            acked += 1
    for future in asyncio.as_completed(pending, timeout=30):
        reply = await future
        if "error" in reply:
            raise RuntimeError(f"message.send failed: {reply['error']}")
        acked += 1
    counted.append(acked)


# One run.


async def run(nodes: int, args: argparse.Namespace, workdir: Path) -> Result:
    database, url = await scratch_postgres()
    prefix = f"squall-bench-{uuid.uuid4().hex[:8]}:"
    base = node_env(workdir, "n0", args.log_level)
    base.update(
        SQUALL_DATABASE_URL=url, SQUALL_REDIS_URL=args.redis, SQUALL_REDIS_PREFIX=prefix
    )
    servers: list[ServerProcess] = []
    receivers: list[Receivers] = []
    senders: list[WsClient] = []
    try:
        migrate(base)
        for i in range(nodes):
            env = dict(
                base, SQUALL_NODE_ID=f"n{i}", SQUALL_DATA_DIR=str(workdir / f"d{i}")
            )
            server = ServerProcess(
                [str(SQUALL), "serve", "--port", "0"], env, workdir, f"n{i}"
            )
            servers.append(server)
            await server.start()
        print(
            f"{nodes} node(s) on ports {[s.port for s in servers]}; "
            f"Redis prefix {prefix}",
            flush=True,
        )
        accounts = await seed_accounts(base, args.members)
        owner = await connect("127.0.0.1", servers[0].port, accounts[0].token)
        conversation_id = await create_group(owner, [a.user_id for a in accounts[1:]])
        owner.close()
        receivers = await open_receivers(servers, accounts, args)
        senders = [
            await connect("127.0.0.1", servers[j % nodes].port, accounts[j].token)
            for j in range(args.senders)
        ]

        # Warm up (caches, connections, JIT-free Python all the same), then
        # the measured window.
        warm: list[int] = []
        await asyncio.gather(
            *(
                send_for(s, conversation_id, f"w{j}", 1, time.monotonic() + 1.0, warm)
                for j, s in enumerate(senders)
            )
        )
        await expect_all(receivers, sum(warm), args)
        for r in receivers:
            await r.reset_latencies()
        cpu0 = [s.cpu() for s in servers]
        started = time.monotonic()
        counted: list[int] = []
        until = started + args.duration
        per_sender = args.rate / len(senders) if args.rate else 0.0
        await asyncio.gather(
            *(
                send_for(
                    s,
                    conversation_id,
                    f"s{j}",
                    args.window,
                    until,
                    counted,
                    per_sender,
                    j / len(senders),
                )
                for j, s in enumerate(senders)
            )
        )
        seconds = time.monotonic() - started
        cpu = [s.cpu() - c for s, c in zip(servers, cpu0, strict=True)]
        total = sum(warm) + sum(counted)
        counts = await expect_all(receivers, total, args)
        complete = all(c["marked_min"] >= total for c in counts)
        latencies = [n / 1e6 for c in counts for n in c["latencies_ns"]]
        return Result(
            nodes, args.members, sum(counted), seconds, latencies, cpu, complete
        )
    finally:
        for sender in senders:
            sender.close()
        for r in receivers:
            await r.stop()
        for server in servers:
            code = server.stop()
            if code not in (0, None):
                print(
                    f"[{server.name}] exited {code}: {server.tail()}", file=sys.stderr
                )
        await drop_postgres(database)
        await delete_prefix(args.redis, prefix)


async def open_receivers(
    servers: Sequence[ServerProcess],
    accounts: Sequence[Account],
    args: argparse.Namespace,
) -> list[Receivers]:
    nodes = len(servers)
    receivers = []
    for i, server in enumerate(servers):
        tokens = [a.token for a in accounts[i::nodes]]
        r = Receivers(
            server.port,
            tokens,
            processes=max(1, args.receivers // nodes),
            samplers=max(1, args.samplers // nodes),
        )
        receivers.append(r)
    for r in receivers:
        ready = await r.ready()
        if ready["failed"]:
            raise RuntimeError(f"receiving sockets failed: {ready}")
    return receivers


async def expect_all(
    receivers: Sequence[Receivers], count: int, args: argparse.Namespace
) -> list[dict[str, object]]:
    return list(
        await asyncio.gather(*(r.expect(count, args.drain_s) for r in receivers))
    )


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.from_url(url)
    with contextlib.suppress(OSError, aioredis.RedisError):  # type: ignore[attr-defined]
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


# Output.


def report(results: Sequence[Result]) -> None:
    rows = []
    for r in results:
        rows.append(
            (
                f"{r.nodes} node(s), {r.members} members",
                f"{fmt_int(r.per_second)} messages/s "
                f"({fmt_int(r.per_second * r.members)} deliveries/s); latency "
                f"p50 {r.percentile(0.5):.1f} ms, p99 {r.percentile(0.99):.1f} ms, "
                f"max {max(r.latencies_ms, default=float('nan')):.1f} ms "
                f"({len(r.latencies_ms)} samples); node CPU "
                + ", ".join(f"{c / r.seconds:.2f}" for c in r.node_cpu_s)
                + " s/s"
                + ("" if r.complete else "  INCOMPLETE"),
            )
        )
    print(f"\nsummary ({load_line()})")
    print_table(rows)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cluster.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--nodes", default="1,2", help="node counts to run (1,2)")
    parser.add_argument("--members", type=int, default=200, help="M (200)")
    parser.add_argument("--senders", type=int, default=4, help="S (4)")
    parser.add_argument(
        "--window", type=int, default=4, help="sends in flight per sender (4)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds (20)")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="messages per second offered, all senders together; default: as "
        "fast as the window allows (closed loop)",
    )
    parser.add_argument("--samplers", type=int, default=20, help="latency sockets (20)")
    parser.add_argument(
        "--receivers", type=int, default=2, help="receiver processes in all (2)"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--drain-s", type=float, default=120.0)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--quick", action="store_true", help="10 s runs")
    if "--quick" in argv:
        parser.set_defaults(duration=10.0)
    args = parser.parse_args(argv)
    args.node_counts = [int(n) for n in str(args.nodes).split(",") if n]
    return args


async def main_async(args: argparse.Namespace) -> list[Result]:
    results = []
    with scratch_dir("squall-cluster-") as tmp:
        for nodes in args.node_counts:
            result = await run(nodes, args, tmp / f"nodes-{nodes}")
            results.append(result)
            print(
                f"  {nodes} node(s): {fmt_int(result.per_second)} messages/s, "
                f"p50 {result.percentile(0.5):.1f} ms, "
                f"p99 {result.percentile(0.99):.1f} ms",
                flush=True,
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    print(f"cluster: nodes {args.node_counts}, {args.members} members; {load_line()}")
    results = asyncio.run(main_async(args))
    report(results)
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
