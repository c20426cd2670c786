"""Fan-out: how many socket deliveries one node makes per CPU-second.

    .venv/bin/python bench/fanout.py                  # 1,000 members, 1,000 messages
    .venv/bin/python bench/fanout.py --with-baseline  # and plain Tornado, same run
    .venv/bin/python bench/fanout.py --with-floor     # and one send() per socket
    .venv/bin/python bench/fanout.py --members 100,1000  # cost per message/delivery
    .venv/bin/python bench/fanout.py --profile py-spy    # where the node's CPU goes
    .venv/bin/python bench/fanout.py --quick          # 100 members, 200 messages

One node in its own process; one group conversation of N members; one
authenticated JSON socket per member, held by receiver processes that only
count ``message.new`` frames; S senders (``--senders``, default 4: second
sockets of the first S members, as in a group where several people talk)
send M messages between them, each at most ``--window`` unanswered at a
time. Every receiving socket must count every message. The node's user+system CPU time
(``/proc/<pid>/stat``, all threads) is read before the first send and after
the last socket has counted the last message; the figure is

    deliveries per CPU-second = M x N / (node CPU seconds of the send phase)

The senders' own copies of each event (the node writes M x (N + S) frames)
are not counted. The node's CPU includes storing each message (SQLite by
default) and answering the senders.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import pstats
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    Node,
    NodeConfig,
    PySpy,
    ServerProcess,
    collapsed_report,
    fmt_int,
    load_line,
    make_accounts,
    print_table,
    raise_nofile,
    scratch_dir,
    squall_node,
)
from wsload import Receivers, WsClient, connect

TARGET = 100_000
TEXT = "The quick brown fox jumps over the lazy dog, message {i:06d}."
GROUP_CHUNK = 256
BASELINE = Path(__file__).resolve().parent / "baseline_tornado.py"


@dataclass
class Result:
    name: str
    sockets: int
    messages: int
    deliveries: int
    expected: int
    node_cpu_s: float
    wall_s: float
    send_wall_s: float
    receivers_cpu_s: float
    idle_cpu_per_s: float
    counts: dict[str, Any]
    profile: str = ""

    @property
    def per_cpu_s(self) -> float:
        return self.deliveries / self.node_cpu_s if self.node_cpu_s else 0.0


# Sending.


async def send_messages(
    senders: Sequence[WsClient], conversation_id: str, count: int, window: int
) -> None:
    """``count`` messages split over the senders, all sending at once."""
    share, extra = divmod(count, len(senders))
    await asyncio.gather(
        *(
            send_from(sender, conversation_id, share + (i < extra), window, f"s{i}")
            for i, sender in enumerate(senders)
        )
    )


async def send_from(
    sender: WsClient, conversation_id: str, count: int, window: int, tag: str
) -> None:
    pending: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()

    async def settle(future: asyncio.Future[dict[str, Any]]) -> None:
        reply = await asyncio.wait_for(future, 60)
        if "error" in reply:
            raise RuntimeError(f"message.send failed: {reply['error']}")

    for i in range(count):
        if len(pending) >= window:
            await settle(pending.popleft())
        pending.append(
            sender.call_nowait(
                "message.send",
                {
                    "conversation_id": conversation_id,
                    "client_msg_id": f"bench-{tag}-{i}",
                    "text": TEXT.format(i=i),
                },
            )
        )
    while pending:
        await settle(pending.popleft())


# One measurement, Squall or baseline alike.


class Profiler:
    """Profiles the server during the send phase only: cProfile inside it
    (``cprofile``; exact calls, but slows Python code about twofold) or
    py-spy from outside (``py-spy``; sampled, barely slows it)."""

    def __init__(self, how: str, node: Node) -> None:
        self.how = how
        self.node = node
        self.spy: PySpy | None = None

    def start(self) -> None:
        if self.how == "cprofile":
            self.node.start_profile()
        else:
            out = self.node.workdir / f"pyspy-{self.node.pid}.txt"
            self.spy = PySpy(self.node.pid, out)
            self.spy.start()

    def stop(self) -> str:
        if self.spy is not None:
            path = self.spy.stop()
            return f"py-spy samples: {path}\n{collapsed_report(path)}"
        path = self.node.stop_profile()
        return f"cProfile stats: {path}\n{top_functions(path)}"


async def measure(
    name: str,
    port: int,
    tokens: Sequence[str],
    senders: Sequence[WsClient],
    conversation_id: str,
    args: argparse.Namespace,
    node_cpu: Callable[[], float],
    profile: Profiler | None = None,
) -> Result:
    receivers = Receivers(port, tokens, args.receivers)
    try:
        ready = await receivers.ready()
        if ready["failed"]:
            raise RuntimeError(f"{ready['failed']} sockets failed: {ready}")
        print(
            f"  {ready['ok']} receiving sockets open in {ready['seconds']:.1f}s",
            flush=True,
        )

        # Settle, and see what the node burns doing nothing.
        await asyncio.sleep(1.0)
        idle0 = node_cpu()
        await asyncio.sleep(2.0)
        idle_per_s = (node_cpu() - idle0) / 2.0

        # The send phase: first send to the last count.
        before = await receivers.counts()
        if profile is not None:
            profile.start()
        cpu0 = node_cpu()
        started = time.perf_counter()
        await send_messages(senders, conversation_id, args.messages, args.window)
        sent = time.perf_counter()
        after = await receivers.expect(args.messages, args.drain_s)
        wall = time.perf_counter() - started
        cpu = node_cpu() - cpu0
        report = profile.stop() if profile is not None else ""
    finally:
        for sender in senders:
            sender.close()
        await receivers.stop()

    deliveries = after["marked_total"] - before["marked_total"]
    return Result(
        name=name,
        sockets=len(tokens),
        messages=args.messages,
        deliveries=deliveries,
        expected=args.messages * len(tokens),
        node_cpu_s=cpu,
        wall_s=wall,
        send_wall_s=sent - started,
        receivers_cpu_s=after["cpu"] - before["cpu"],
        idle_cpu_per_s=idle_per_s,
        counts=after,
        profile=report,
    )


# Squall.


async def run_squall(
    args: argparse.Namespace, workdir: Path, experiment: str = ""
) -> Result:
    config = NodeConfig(
        database=args.database,
        log_level=args.log_level,
        probe=args.profile == "cprofile" or bool(experiment),
        extra_env={"BENCH_EXPERIMENT": experiment} if experiment else None,
    )
    async with squall_node(config, workdir / "squall") as node:
        print(f"squall node pid {node.pid} port {node.port}", flush=True)
        accounts = await make_accounts(node, args.members, args.accounts)
        owner = await connect("127.0.0.1", node.port, accounts[0].token)
        conversation_id = await create_group(owner, [a.user_id for a in accounts[1:]])
        senders = [owner] + [
            await connect("127.0.0.1", node.port, a.token)
            for a in accounts[1 : args.senders]
        ]
        profile = Profiler(args.profile, node) if args.profile else None
        result = await measure(
            f"squall+{experiment}" if experiment else "squall",
            node.port,
            [a.token for a in accounts],
            senders,
            conversation_id,
            args,
            node.server.cpu,
            profile,
        )
        print_result(result, node)
        return result


async def create_group(owner: WsClient, others: list[str]) -> str:
    """``conversation.create`` with the first 256, then ``add_members``."""
    started = time.monotonic()
    conv = await owner.call(
        "conversation.create",
        {"kind": "group", "title": "fan-out", "member_ids": others[:GROUP_CHUNK]},
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
    took = time.monotonic() - started
    print(f"  group of {len(others) + 1} members in {took:.1f}s", flush=True)
    return str(conv["id"])


# Baseline.


def baseline_env(args: argparse.Namespace, workdir: Path) -> dict[str, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.profile == "cprofile":
        probe_dir = workdir / "probe"
        probe_dir.mkdir(exist_ok=True)
        env["BENCH_PROBE_DIR"] = str(probe_dir)
    return env


async def run_baseline(
    args: argparse.Namespace, workdir: Path, name: str = "baseline"
) -> Result:
    argv = [sys.executable, str(BASELINE), "serve", "--port", "0"]
    if name == "floor":
        argv.append("--raw-send")
    env = baseline_env(args, workdir)
    server = ServerProcess(argv, env, workdir, name)
    try:
        await server.start()
        print(f"{name} pid {server.pid} port {server.port}", flush=True)
        node = Node(server, env, workdir)
        senders = [
            await connect("127.0.0.1", server.port, "none") for _ in range(args.senders)
        ]
        profile = Profiler(args.profile, node) if args.profile else None
        result = await measure(
            name,
            server.port,
            ["none"] * args.members,
            senders,
            "00000000-0000-0000-0000-00000000c0de",
            args,
            server.cpu,
            profile,
        )
        print_result(result, node)
        return result
    finally:
        server.stop()


# Output.


def print_result(result: Result, node: Node) -> None:
    complete = result.deliveries == result.expected
    counts = result.counts
    print(f"\n{result.name}: {load_line()}")
    print_table(
        [
            ("receiving sockets", fmt_int(result.sockets)),
            ("messages", fmt_int(result.messages)),
            (
                "deliveries counted",
                f"{fmt_int(result.deliveries)} of {fmt_int(result.expected)}"
                + ("" if complete else "  INCOMPLETE"),
            ),
            ("fewest on one socket", fmt_int(counts["marked_min"])),
            ("node CPU, send phase", f"{result.node_cpu_s:.2f} s"),
            ("node idle CPU before", f"{result.idle_cpu_per_s:.3f} s/s"),
            (
                "wall, send phase",
                f"{result.wall_s:.2f} s (sending {result.send_wall_s:.2f} s)",
            ),
            ("node CPU / wall", f"{result.node_cpu_s / result.wall_s:.2f}"),
            ("receivers CPU", f"{result.receivers_cpu_s:.2f} s"),
            ("deliveries per node CPU-s", fmt_int(result.per_cpu_s)),
            ("deliveries per wall-s", fmt_int(result.deliveries / result.wall_s)),
            ("node RSS", f"{node.server.rss_kib() / 1024:.0f} MiB"),
            ("other events", str(counts["other_events"] or "none")),
            ("close codes", str(counts["close_codes"] or "none")),
        ]
    )
    if result.profile:
        print(f"\n  profile of the send phase, {result.profile}")
    sys.stdout.flush()


def top_functions(path: Path, limit: int = 30) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    return out.getvalue()


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fanout.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument(
        "--members",
        default="1000",
        help="N (1000); a comma list (100,1000) runs each size and splits the "
        "node's CPU into a cost per message and a cost per delivery",
    )
    parser.add_argument("--messages", type=int, default=1000, help="M (1000)")
    parser.add_argument(
        "--senders",
        type=int,
        default=4,
        help="sockets sending at once, each of another member (4)",
    )
    parser.add_argument(
        "--window", type=int, default=4, help="sends in flight per sender (4)"
    )
    parser.add_argument(
        "--receivers", type=int, default=2, help="receiver processes (2)"
    )
    parser.add_argument(
        "--accounts",
        choices=("direct", "rest"),
        default="direct",
        help="seed users into the database (direct, default) or go through "
        "/v1/auth/register and /login (rest: ~0.5 CPU-s of Argon2 each)",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--log-level", default="WARNING", help="node's (WARNING)")
    parser.add_argument(
        "--drain-s",
        type=float,
        default=300.0,
        help="longest wait for the receivers after the last reply (300)",
    )
    parser.add_argument("--with-baseline", action="store_true")
    parser.add_argument("--baseline-only", action="store_true")
    parser.add_argument(
        "--with-floor",
        action="store_true",
        help="also the floor: encode once, one socket.send per socket "
        "(baseline_tornado.py serve --raw-send)",
    )
    parser.add_argument(
        "--experiment",
        choices=(),
        help="also run the node with a change patched in by bench/nodeprobe.py "
        "(none at present: direct-send was adopted by the server)",
    )
    parser.add_argument(
        "--profile",
        choices=("cprofile", "py-spy"),
        help="profile the server's send phase: cProfile inside it (via "
        "bench/nodeprobe.py) or py-spy from outside (pip install py-spy)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 members, 200 messages (options given still count)",
    )
    if "--quick" in argv:
        parser.set_defaults(members="100", messages=200)
    args = parser.parse_args(argv)
    args.sizes = [int(n) for n in str(args.members).split(",") if n]
    args.members = args.sizes[-1]
    return args


async def run(args: argparse.Namespace) -> list[Result]:
    results = []
    with scratch_dir("squall-fanout-", keep=bool(args.profile)) as tmp:
        for members in args.sizes:
            sized = argparse.Namespace(**{**vars(args), "members": members})
            if not args.baseline_only:
                results.append(await run_squall(sized, tmp / f"squall-{members}"))
            if args.experiment:
                results.append(
                    await run_squall(
                        sized, tmp / f"experiment-{members}", args.experiment
                    )
                )
            if args.with_baseline or args.baseline_only:
                results.append(await run_baseline(sized, tmp / f"baseline-{members}"))
            if args.with_floor:
                results.append(
                    await run_baseline(sized, tmp / f"floor-{members}", "floor")
                )
    return results


def split_costs(results: Sequence[Result]) -> str:
    """Least squares of CPU per message against sockets: the intercept is
    what a message costs whatever its audience (storing it, answering the
    sender), the slope what each delivery costs."""
    points = [(r.sockets, r.node_cpu_s / r.messages) for r in results]
    if len({n for n, _ in points}) < 2:
        return ""
    mean_n = sum(n for n, _ in points) / len(points)
    mean_c = sum(c for _, c in points) / len(points)
    slope = sum((n - mean_n) * (c - mean_c) for n, c in points) / sum(
        (n - mean_n) ** 2 for n, _ in points
    )
    fixed = mean_c - slope * mean_n
    return (
        f"{1000 * fixed:.2f} ms per message + {1e6 * slope:.1f} us per delivery "
        f"(so at most {fmt_int(1 / slope) if slope > 0 else '-'} per CPU-s)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    raise_nofile()
    print(f"fan-out: {args.sizes} sockets, {args.messages} messages; {load_line()}")
    results = asyncio.run(run(args))

    print("\nsummary")
    rows = []
    for result in results:
        ok = result.deliveries == result.expected
        rows.append(
            (
                f"{result.name}, {result.sockets} sockets",
                f"{fmt_int(result.per_cpu_s)} deliveries per node CPU-second"
                + ("" if ok else " (INCOMPLETE)"),
            )
        )
    for name in ("squall", f"squall+{args.experiment}", "baseline", "floor"):
        split = split_costs([r for r in results if r.name == name])
        if split:
            rows.append((f"{name} CPU", split))
    largest = {r.name: r for r in results if r.sockets == args.members}
    if "squall" in largest:
        squall = largest["squall"]
        verdict = "met" if squall.per_cpu_s >= TARGET else "MISSED"
        rows.append(
            (
                "target",
                f">= {fmt_int(TARGET)} at {squall.sockets} sockets: {verdict} "
                f"({squall.per_cpu_s / TARGET:.0%} of target)",
            )
        )
        for other in (f"squall+{args.experiment}", "baseline", "floor"):
            if other in largest and largest[other].per_cpu_s:
                ratio = squall.per_cpu_s / largest[other].per_cpu_s
                rows.append((f"squall / {other}", f"{ratio:.2f}x"))
    print_table(rows)
    return 0 if all(r.deliveries == r.expected for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
