"""Progress for long CLI operations whose work happens in one native call: a thread that watches the
bytes the call has written so far (by file size) and redraws one status line on stderr, on a terminal
only (logs and pipes get the final summary line alone)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


@contextmanager
def watch(
    label: str,
    total: int,
    done: Callable[[], int] | None,
    *,
    out: TextIO | None = None,
    interval: float = 0.5,
    force: bool = False,
) -> Iterator[None]:
    """Shows ``label: NN% done/total MiB, R MiB/s`` while the body runs; ``done()`` returns bytes so far
    (None: nothing to watch, only the summary line at the end)."""
    stream = out or sys.stderr
    live = done is not None and (force or stream.isatty())
    stop = threading.Event()
    started = time.monotonic()

    def draw() -> None:
        while not stop.wait(interval):
            try:
                n = min(done(), total) if done is not None else 0
            except OSError:
                continue
            rate = n / max(time.monotonic() - started, 1e-9)
            pct = 100 * n / total if total else 100
            stream.write(f"\r{label}: {pct:3.0f}% {_mib(n)}/{_mib(total)}, {_mib(rate)}/s   ")
            stream.flush()

    thread = threading.Thread(target=draw, daemon=True) if live else None
    if thread:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread:
            thread.join()
            stream.write("\r")
        elapsed = time.monotonic() - started
        stream.write(f"{label}: {_mib(total)} in {elapsed:.1f} s ({_mib(total / max(elapsed, 1e-9))}/s)\n")
        stream.flush()
