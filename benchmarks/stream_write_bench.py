#!/usr/bin/env python3
"""What the stream write timeout costs per streamed message (issue 19, front-end CPU per token).

Every message of a Generate stream is written under ``server.stream_write_timeout_s``. Three ways of awaiting a
write that completes at once (what HTTP/2 flow control does for a client that reads), CPU time per write,
interleaved rounds, best and median of the rounds:

* ``bare``: the write alone (the anchor);
* ``asyncio_timeout``: ``async with asyncio.timeout(t)`` around each write (bastion before this benchmark);
* ``write_deadline``: ``bastion.server.write_deadline.WriteDeadline`` (one timer per stream).

    .venv/bin/python benchmarks/stream_write_bench.py [--quick]   # -> results/stream_write_bench[-quick].json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import common  # noqa: E402 - after the sys.path insert above
from bastion.server.write_deadline import WriteDeadline  # noqa: E402


class _Written:
    """An awaitable that completes at once, as a write the client's flow-control window admits."""

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())


async def bare(n: int) -> None:
    for _ in range(n):
        await _Written()


async def asyncio_timeout(n: int) -> None:
    for _ in range(n):
        async with asyncio.timeout(30):
            await _Written()


async def write_deadline(n: int) -> None:
    deadline = WriteDeadline(30)
    for _ in range(n):
        await deadline.write(_Written())
    deadline.close()


WAYS: dict[str, Callable[[int], Coroutine[Any, Any, None]]] = {
    "bare": bare,
    "asyncio_timeout": asyncio_timeout,
    "write_deadline": write_deadline,
}


async def measure(n: int, rounds: int) -> dict[str, list[float]]:
    per_write: dict[str, list[float]] = {k: [] for k in WAYS}
    for _ in range(rounds):
        for name, way in WAYS.items():
            t0 = time.process_time()
            await way(n)
            per_write[name].append((time.process_time() - t0) / n * 1e6)
    return per_write


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer writes (CI smoke)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/stream_write_bench[-quick].json)")
    args = ap.parse_args()
    n, rounds = (20_000, 3) if args.quick else (200_000, 7)
    per_write = asyncio.run(measure(n, rounds))
    anchor = statistics.median(per_write["bare"])
    result: dict[str, Any] = {
        "benchmark": "stream_write_bench",
        "quick": args.quick,
        "machine": common.machine_info(),
        "writes_per_round": n,
        "rounds": rounds,
        "us_per_write": {
            k: {"median": round(statistics.median(v), 3), "best": round(min(v), 3)} for k, v in per_write.items()
        },
        "added_us_per_write_over_bare": {
            k: round(statistics.median(v) - anchor, 3) for k, v in per_write.items() if k != "bare"
        },
    }
    print(json.dumps(result["us_per_write"]), flush=True)
    common.save_report(result, args.out, HERE / "results" / f"stream_write_bench{'-quick' if args.quick else ''}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
