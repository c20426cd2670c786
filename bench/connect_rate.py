"""Connect rate: sockets per second one node takes from connect to a first
answered ``sync``.

    .venv/bin/python bench/connect_rate.py                    # 2,000 per K
    .venv/bin/python bench/connect_rate.py --concurrency 1,10,100
    .venv/bin/python bench/connect_rate.py --quick            # 300 per K

One node in its own process; ``--users`` users with no conversations (a
socket goes to user ``i % users``, so several sockets share a user, as
several devices do). For each K in ``--concurrency``, K clients in this
process open ``--connections`` sockets between them, each: TCP connect,
WebSocket upgrade with ``Authorization: Bearer``, then ``sync`` with
``{"positions": {}}`` and its reply. The sockets stay open until the round
ends (a reconnect storm, not a churn), then all close and the node settles
before the next K.

Per round: sockets per wall-second, the node's CPU per socket (user+system
from ``/proc/<pid>/stat``), the node's CPU share of the wall time (near
1.0 means the node is the bottleneck), and latency percentiles from
connect to the ``sync`` reply.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    Node,
    NodeConfig,
    PySpy,
    collapsed_report,
    fmt_int,
    load_line,
    make_accounts,
    print_table,
    raise_nofile,
    scratch_dir,
    squall_node,
)
from wsload import close_all, open_many

EMPTY_SYNC = ("sync", {"positions": {}})


async def settle(node: Node, quiet_cpu_s: float = 0.02, limit_s: float = 60) -> None:
    """Wait until the node spends under ``quiet_cpu_s`` per half second."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        cpu = node.server.cpu()
        await asyncio.sleep(0.5)
        if node.server.cpu() - cpu < quiet_cpu_s:
            return


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def one_round(
    node: Node, tokens: list[str], concurrency: int, spy: PySpy | None
) -> dict[str, Any]:
    await settle(node)
    if spy is not None:
        spy.start()
    cpu0 = node.server.cpu()
    client0 = time.process_time()
    opened = await open_many(
        "127.0.0.1", node.port, tokens, concurrency, ready=EMPTY_SYNC
    )
    node_cpu = node.server.cpu() - cpu0
    client_cpu = time.process_time() - client0
    report = ""
    if spy is not None:
        report = collapsed_report(spy.stop())
    ok = len(opened.clients)
    close_all(opened.clients)
    await asyncio.sleep(0.5)
    lat = opened.latencies
    return {
        "concurrency": concurrency,
        "ok": ok,
        "failed": len(opened.failures),
        "first_failures": opened.failures[:3],
        "seconds": opened.seconds,
        "rate": ok / opened.seconds if opened.seconds else 0.0,
        "node_cpu_s": node_cpu,
        "client_cpu_s": client_cpu,
        "p50_ms": 1000 * statistics.median(lat) if lat else 0.0,
        "p90_ms": 1000 * percentile(lat, 0.90),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "max_ms": 1000 * max(lat, default=0.0),
        "load": load_line(),
        "profile": report,
    }


async def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    config = NodeConfig(database=args.database, log_level=args.log_level)
    async with squall_node(config, workdir) as node:
        print(f"squall node pid {node.pid} port {node.port}", flush=True)
        accounts = await make_accounts(node, args.users, args.accounts)
        tokens = [accounts[i % len(accounts)].token for i in range(args.connections)]
        # One warm-up socket per user: the first connect of a user pays for
        # caches and code paths that a running node has long since warmed.
        warm = await open_many(
            "127.0.0.1",
            node.port,
            [a.token for a in accounts],
            concurrency=10,
            ready=EMPTY_SYNC,
        )
        close_all(warm.clients)
        rounds = []
        for concurrency in args.concurrency:
            spy = None
            if args.profile:
                spy = PySpy(node.pid, workdir / f"pyspy-k{concurrency}.txt")
            result = await one_round(node, tokens, concurrency, spy)
            print(
                f"  K={concurrency}: {result['ok']} sockets in "
                f"{result['seconds']:.1f}s = {result['rate']:.0f}/s",
                flush=True,
            )
            rounds.append(result)
        return rounds


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="connect_rate.py")
    parser.add_argument(
        "--connections", type=int, default=2000, help="sockets per round (2000)"
    )
    parser.add_argument(
        "--concurrency",
        default="1,10,100",
        help="K, clients connecting at once; a comma list runs one round "
        "each (1,10,100)",
    )
    parser.add_argument("--users", type=int, default=200, help="users (200)")
    parser.add_argument(
        "--accounts",
        choices=("direct", "rest"),
        default="direct",
        help="seed users into the database (direct) or register and log in "
        "over REST (rest: ~0.5 CPU-s of Argon2 per user)",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--log-level", default="WARNING", help="node's (WARNING)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy each round (pip install py-spy into .venv)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 sockets, 50 users, K=1,10,50 (options given still count)",
    )
    if "--quick" in argv:
        parser.set_defaults(connections=300, users=50, concurrency="1,10,50")
    args = parser.parse_args(argv)
    args.concurrency = [int(k) for k in str(args.concurrency).split(",") if k]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    print(
        f"connect rate: {args.connections} sockets per round, K in "
        f"{args.concurrency}; {load_line()}",
        flush=True,
    )
    with scratch_dir("squall-connect-", keep=args.profile) as tmp:
        rounds = asyncio.run(run(args, tmp))

    failed = 0
    for r in rounds:
        failed += r["failed"]
        print(f"\nK={r['concurrency']}: {r['load']}")
        print_table(
            [
                ("sockets", f"{fmt_int(r['ok'])} ({r['failed']} failed)"),
                ("wall", f"{r['seconds']:.2f} s"),
                ("sockets per second", fmt_int(r["rate"])),
                (
                    "node CPU per socket",
                    f"{1000 * r['node_cpu_s'] / max(1, r['ok']):.2f} ms",
                ),
                ("node CPU / wall", f"{r['node_cpu_s'] / r['seconds']:.2f}"),
                ("sockets per node CPU-s", fmt_int(r["ok"] / r["node_cpu_s"])),
                ("client CPU / wall", f"{r['client_cpu_s'] / r['seconds']:.2f}"),
                (
                    "latency p50/p90/p99/max",
                    f"{r['p50_ms']:.1f} / {r['p90_ms']:.1f} / {r['p99_ms']:.1f} / "
                    f"{r['max_ms']:.1f} ms",
                ),
            ]
        )
        if r["first_failures"]:
            print("  first failures:", r["first_failures"])
        if r["profile"]:
            print(r["profile"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
