"""Run ``squall`` with two probes a benchmark can trigger by signal.

    BENCH_PROBE_DIR=/tmp/x python bench/nodeprobe.py serve --port 0

- SIGUSR1 writes ``memory-N.json``: live objects by type (count and
  shallow bytes, after a full collection) and, when the interpreter runs
  with ``-X tracemalloc=N``, the bytes held by allocating line and by
  innermost Squall frame.
- SIGUSR2 starts cProfile on the first signal and, on the second, stops it
  and writes ``profile-N.pstats``, so a profile covers only the phase a
  benchmark cares about. cProfile sees the main thread only (the event
  loop); database threads are not in it.

Each dump is followed by an empty ``<name>.done`` file. For benchmarks
only: a probe pauses the node while it runs.

``BENCH_EXPERIMENT=direct-send`` patches the node before it starts, to
measure a change without making it (see :func:`direct_send`).
"""

from __future__ import annotations

import cProfile
import gc
import os
import signal
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

OUT = Path(os.environ.get("BENCH_PROBE_DIR", "."))
_profiler: cProfile.Profile | None = None
_dumps = {"memory": 0, "profile": 0}


def _next(kind: str, suffix: str) -> Path:
    _dumps[kind] += 1
    return OUT / f"{kind}-{_dumps[kind]}{suffix}"


def _done(path: Path) -> None:
    Path(f"{path}.done").touch()


def memory(_sig: int = 0, _frame: FrameType | None = None) -> None:
    gc.collect()
    by_type: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        entry = by_type.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    report: dict[str, Any] = {
        "types": {k: {"count": c, "bytes": b} for k, (c, b) in by_type.items()},
        "tracemalloc": [],
    }
    if tracemalloc.is_tracing():
        report["tracemalloc"] = _sites()
    path = _next("memory", ".json")
    path.write_bytes(orjson.dumps(report))
    _done(path)


def _sites() -> dict[str, dict[str, int]]:
    """Bytes held, grouped two ways: by the line that allocated them, and
    by the innermost frame in Squall's own code (who asked for them)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__, all_frames=True),
        ]
    )
    by_line: dict[str, int] = {}
    by_squall: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        # Innermost first (tracemalloc keeps them oldest first).
        frames = list(reversed(stat.traceback))
        line = f"{Path(frames[0].filename).name}:{frames[0].lineno}"
        by_line[line] = by_line.get(line, 0) + stat.size
        owner = next(
            (
                f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno}"
                for f in frames
                if "/realtime/" in f.filename or "/protocol/" in f.filename
            ),
            f"(no Squall frame) {line}",
        )
        by_squall[owner] = by_squall.get(owner, 0) + stat.size
    return {"allocated at": by_line, "for Squall's": by_squall}


def profile(_sig: int = 0, _frame: FrameType | None = None) -> None:
    global _profiler
    if _profiler is None:
        _profiler = cProfile.Profile()
        _profiler.enable()
        return
    _profiler.disable()
    path = _next("profile", ".pstats")
    _profiler.dump_stats(path)
    _profiler = None
    _done(path)


# ``direct-send`` (one socket.send per delivery when nothing is queued)
# measured +45 % here and was then adopted by realtime/ws.py itself.
EXPERIMENTS: dict[str, Callable[[], None]] = {}


def main() -> int:
    from realtime.cli import main as squall

    for name in filter(None, os.environ.get("BENCH_EXPERIMENT", "").split(",")):
        EXPERIMENTS[name]()
    signal.signal(signal.SIGUSR1, memory)
    signal.signal(signal.SIGUSR2, profile)
    return squall(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
