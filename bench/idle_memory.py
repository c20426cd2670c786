"""Idle memory: what one authenticated, idle socket costs a node.

    .venv/bin/python bench/idle_memory.py            # 5,000 sockets
    .venv/bin/python bench/idle_memory.py --quick    # 300 sockets
    .venv/bin/python bench/idle_memory.py --probe    # and which objects

One node in its own process. Users are created (one per socket unless
``--users`` is smaller, then sockets go round-robin over them) and each is
put in ``--conversations`` group conversations of ``--group-size`` members
(every round of groups is a fresh shuffle of the users). The node's RSS
(``VmRSS`` of ``/proc/<pid>/status``) is read once that is done and the node
has settled, then receiver processes open the sockets (JSON codec, bearer
header; a socket counts once a ``ping`` is answered, which happens only
after the node has authenticated it and subscribed it to its
conversations), and RSS is read again after ``--settle-s`` idle seconds.

    per socket = (RSS after - RSS before) / sockets

``--probe`` runs the node under ``bench/nodeprobe.py`` and prints the
live objects that grew, by type, per socket (after a full collection;
shallow sizes); ``--tracemalloc`` adds allocation sites, at the price of a
slower, larger node (its RSS figures then overstate).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from harness import (
    Account,
    Node,
    NodeConfig,
    fmt_int,
    load_line,
    make_accounts,
    print_table,
    raise_nofile,
    scratch_dir,
    squall_node,
    status_kib,
)
from wsload import Receivers, connect

TARGET_KIB = 20.0
GROUP_CHUNK = 256


# Conversations.


def plan_groups(users: int, rounds: int, size: int, seed: int = 7) -> list[list[int]]:
    """``rounds`` partitions of the users into groups of ``size``: each user
    ends up in exactly ``rounds`` groups."""
    rng = random.Random(seed)  # noqa: S311 - a repeatable layout, not a secret
    groups = []
    for round_no in range(rounds):
        order = list(range(users))
        if round_no:
            rng.shuffle(order)
        chunks = [order[i : i + size] for i in range(0, users, size)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks[-2].extend(chunks.pop())
        groups.extend(chunks)
    return groups


async def create_groups(
    port: int, accounts: Sequence[Account], groups: list[list[int]], parallel: int = 8
) -> None:
    """Each group is created by its first member, over a socket of theirs."""
    started = time.monotonic()
    queue = iter(groups)

    async def worker() -> None:
        for group in queue:
            owner = await connect("127.0.0.1", port, accounts[group[0]].token)
            try:
                others = [accounts[i].user_id for i in group[1:]]
                conv = await owner.call(
                    "conversation.create",
                    {
                        "kind": "group",
                        "title": "idle",
                        "member_ids": others[:GROUP_CHUNK],
                    },
                    limit_s=120,
                )
                for start in range(GROUP_CHUNK, len(others), GROUP_CHUNK):
                    await owner.call(
                        "conversation.add_members",
                        {
                            "conversation_id": conv["id"],
                            "user_ids": others[start : start + GROUP_CHUNK],
                        },
                        limit_s=120,
                    )
            finally:
                owner.close()

    async with asyncio.timeout(1800):
        await asyncio.gather(*(worker() for _ in range(parallel)))
    took = time.monotonic() - started
    print(f"  {len(groups)} groups in {took:.1f}s", flush=True)


# Measuring.


async def settle(node: Node, seconds: float) -> list[int]:
    """RSS once a second for ``seconds``."""
    samples = []
    for _ in range(max(1, int(seconds))):
        await asyncio.sleep(1.0)
        samples.append(node.server.rss_kib())
    return samples


def probe_diff(before: Path, after: Path, sockets: int, limit: int = 25) -> str:
    old = orjson.loads(before.read_bytes())
    new = orjson.loads(after.read_bytes())
    rows = []
    for name, now in new["types"].items():
        was = old["types"].get(name, {"count": 0, "bytes": 0})
        grew = now["bytes"] - was["bytes"]
        if grew > 0:
            rows.append((grew, now["count"] - was["count"], name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [
        f"  gc-tracked objects grew {total / sockets:,.0f} B per socket "
        "(shallow sizes; str, bytes and ints not counted)",
        "  B/socket  objs/socket  type",
    ]
    lines += [
        f"  {grew / sockets:8,.0f}  {count / sockets:11.2f}  {name}"
        for grew, count, name in rows[:limit]
    ]
    if new["tracemalloc"]:
        for title in ("allocated at", "for Squall's"):
            lines += ["", *_sites(old, new, sockets, title, limit)]
    return "\n".join(lines)


def _sites(
    old: dict[str, Any], new: dict[str, Any], sockets: int, title: str, limit: int
) -> list[str]:
    """tracemalloc growth per socket, grouped as the probe grouped it."""
    was = old["tracemalloc"][title]
    now = new["tracemalloc"][title]
    grew = {k: now.get(k, 0) - was.get(k, 0) for k in now.keys() | was.keys()}
    total = sum(grew.values())
    rows = sorted(((b, w) for w, b in grew.items() if b > 0), reverse=True)
    return [
        f"  tracemalloc: {total / sockets:,.0f} B per socket more held, by {title}",
        f"  B/socket  {title}",
        *(f"  {b / sockets:8,.0f}  {w}" for b, w in rows[:limit]),
    ]


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    config = NodeConfig(
        database=args.database,
        log_level=args.log_level,
        probe=args.probe or args.tracemalloc,
        tracemalloc=args.tracemalloc,
    )
    async with squall_node(config, workdir) as node:
        print(f"squall node pid {node.pid} port {node.port}", flush=True)
        users = min(args.users or args.sockets, args.sockets)
        accounts = await make_accounts(node, users, args.accounts)
        groups = plan_groups(users, args.conversations, args.group_size)
        # SQLite has one writer at a time; under a node slowed by
        # tracemalloc, eight concurrent creates waited past its 5 s busy
        # timeout ("database is locked").
        parallel = 1 if args.database == "sqlite" else 8
        await create_groups(node.port, accounts, groups, parallel)

        # Before: everything but the sockets exists; let the node settle.
        await settle(node, 3)
        before = node.server.rss_kib()
        probe_before = node.memory_dump() if config.probe else None
        if probe_before is not None:
            before = node.server.rss_kib()
        cpu0 = node.server.cpu()

        tokens = [accounts[i % users].token for i in range(args.sockets)]
        receivers = Receivers(node.port, tokens, args.receivers, args.concurrency)
        try:
            ready = await receivers.ready()
            opened = node.server.rss_kib()
            print(
                f"  {ready['ok']} sockets open in {ready['seconds']:.1f}s "
                f"({ready['failed']} failed)",
                flush=True,
            )
            cpu_open = node.server.cpu()
            samples = await settle(node, args.settle_s)
            after = samples[-1]
            idle_cpu = node.server.cpu() - cpu_open
            counts = await receivers.counts()
            probe_after = node.memory_dump() if config.probe else None
        finally:
            await receivers.stop()

        return {
            "sockets": ready["ok"],
            "failed": ready["failed"],
            "first_failures": ready["first_failures"],
            "users": users,
            "groups": len(groups),
            "before_kib": before,
            "opened_kib": opened,
            "after_kib": after,
            "samples": samples,
            "hwm_kib": status_kib(node.pid, "VmHWM"),
            "open_cpu_s": cpu_open - cpu0,
            "idle_cpu_s": idle_cpu,
            "counts": counts,
            "probe": (
                probe_diff(probe_before, probe_after, max(1, ready["ok"]))
                if probe_before is not None and probe_after is not None
                else ""
            ),
        }


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="idle_memory.py")
    parser.add_argument("--sockets", type=int, default=5000, help="N (5000)")
    parser.add_argument(
        "--users", type=int, default=0, help="users behind them (default: N)"
    )
    parser.add_argument(
        "--conversations", type=int, default=5, help="groups per user (5)"
    )
    parser.add_argument("--group-size", type=int, default=100, help="members (100)")
    parser.add_argument("--settle-s", type=float, default=10.0, help="idle time (10)")
    parser.add_argument("--receivers", type=int, default=2, help="client processes (2)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="opens at once per process (50)"
    )
    parser.add_argument(
        "--accounts",
        choices=("direct", "rest"),
        default="direct",
        help="seed users into the database (direct) or register and log in "
        "over REST (rest: ~0.5 CPU-s of Argon2 per user)",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--log-level", default="WARNING", help="node's (WARNING)")
    parser.add_argument("--probe", action="store_true", help="objects by type")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="and allocation sites (slow)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 sockets, groups of 30, 5 s idle (options given still count)",
    )
    if "--quick" in argv:
        parser.set_defaults(sockets=300, group_size=30, settle_s=5.0)
    args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    print(
        f"idle memory: {args.sockets} sockets, {args.conversations} conversations "
        f"per user; {load_line()}",
        flush=True,
    )
    with scratch_dir("squall-idle-", keep=args.probe or args.tracemalloc) as tmp:
        r = asyncio.run(run(args, tmp))

    sockets = max(1, r["sockets"])
    grew = r["after_kib"] - r["before_kib"]
    per_socket = grew / sockets
    print(f"\nidle memory: {load_line()}")
    print_table(
        [
            ("sockets open", f"{fmt_int(r['sockets'])} ({r['failed']} failed)"),
            ("users, groups", f"{fmt_int(r['users'])}, {fmt_int(r['groups'])}"),
            ("RSS before", f"{r['before_kib'] / 1024:.1f} MiB"),
            ("RSS all open", f"{r['opened_kib'] / 1024:.1f} MiB"),
            ("RSS after idling", f"{r['after_kib'] / 1024:.1f} MiB"),
            ("RSS peak (VmHWM)", f"{r['hwm_kib'] / 1024:.1f} MiB"),
            ("per socket", f"{per_socket:.1f} KiB"),
            ("node CPU opening", f"{r['open_cpu_s']:.2f} s"),
            ("node CPU idling", f"{r['idle_cpu_s']:.2f} s over the settle time"),
            ("sockets still open", fmt_int(r["counts"]["open"])),
            ("events while idle", str(r["counts"]["other_events"] or "none")),
            (
                "target",
                f"<= {TARGET_KIB:.0f} KiB per socket: "
                + ("met" if per_socket <= TARGET_KIB else "MISSED")
                + f" ({per_socket / TARGET_KIB:.0%} of target)",
            ),
        ]
    )
    if r["first_failures"]:
        print("  first failures:", r["first_failures"])
    if r["probe"]:
        print("\nwhat grew (node probe)\n" + r["probe"])
    return 0 if r["failed"] == 0 and r["counts"]["open"] == r["sockets"] else 1


if __name__ == "__main__":
    sys.exit(main())
