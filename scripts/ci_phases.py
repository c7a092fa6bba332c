#!/usr/bin/env python3
"""Prints the CI phase table from the file that scripts/phase and the pytest plugin append to, and fails
when the whole run passed its time guard, naming the slowest phases.

    scripts/ci_phases.py PHASES_FILE --total SECONDS --limit SECONDS

Rows are ``NAME<TAB>SECONDS<TAB>EXIT``; ``pytest:DIR`` rows (time inside each test directory: setup, call
and teardown of its tests) are shown indented under the ``pytest`` phase that contains them.
Exit status: 0 within the limit, 1 over it (or on an unreadable file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def read_rows(path: Path) -> list[tuple[str, float, int]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            rows.append((parts[0], float(parts[1]), int(parts[2])))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phases", type=Path)
    ap.add_argument("--total", type=float, required=True, help="wall time of the whole run, seconds")
    ap.add_argument("--limit", type=float, required=True, help="fail above this many seconds")
    args = ap.parse_args(argv)
    try:
        rows = read_rows(args.phases)
    except OSError as exc:
        print(f"ci_phases: cannot read {args.phases}: {exc.strerror}", file=sys.stderr)
        return 1
    top = [r for r in rows if not r[0].startswith("pytest:")]
    sub = sorted((r for r in rows if r[0].startswith("pytest:")), key=lambda r: -r[1])
    print(f"{'phase':<34}{'seconds':>9}{'share':>8}  exit")
    for name, secs, rc in top:
        print(f"{name:<34}{secs:9.1f}{100 * secs / max(args.total, 1e-9):7.1f}%  {rc}")
        if name == "pytest":
            for sname, ssecs, _ in sub:
                print(f"  {sname.removeprefix('pytest:'):<32}{ssecs:9.1f}{100 * ssecs / max(args.total, 1e-9):7.1f}%")
    other = args.total - sum(r[1] for r in top)
    print(f"{'(outside named phases)':<34}{other:9.1f}")
    print(f"{'total':<34}{args.total:9.1f}   limit {args.limit:.0f} s")
    if args.total > args.limit:
        slowest = sorted([*top, *sub], key=lambda r: -r[1])[:3]
        names = ", ".join(f"{n} ({s:.0f} s)" for n, s, _ in slowest)
        print(f"CI TIME GUARD: {args.total:.0f} s is over the {args.limit:.0f} s limit; slowest phases: {names}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
