#!/usr/bin/env python3
"""Assurance on the real engine: how long the CI evaluation and a drift check take, against their budgets
(issue 6: CI profile <= 5 min on 2 cores, a log-prob drift check <= 30 s), in the same run as an anchor:
the same CI suite driven one probe at a time, as garak drives a generator by default (parallel_attempts 1).

    .venv/bin/python benchmarks/assurance_bench.py        # ~8 min on 2 cores (engine start ~4)

Starts `bastion serve` (default model, an evaluator principal, drift baselines in a temp dir); runs
`bastion eval MODEL --profile ci` at --concurrency 8 (ours) and 1 (the anchor), then Admin.CheckDrift three
times; writes benchmarks/results/assurance_bench.json. Not part of `make bench-quick` (it needs an engine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402 - after the sys.path insert above
from isolation_live import live_config, live_server  # noqa: E402 - after the sys.path insert above

MODEL = "smollm2-135m-instruct"
CI_BUDGET_S = 300.0
DRIFT_BUDGET_S = 30.0


def setup(d: Path) -> tuple[str, str, str]:
    from bastion.auth.api_keys import issue

    store = d / "api-keys.json"
    eval_id, eval_key = issue(store, "evaluator")
    admin_id, admin_key = issue(store, "admin")
    (d / "tenants.toml").write_text(
        f'[[principals]]\nid = "apikey:{eval_id}"\ntenant = "assurance"\nroles = ["evaluator"]\n\n'
        f'[[principals]]\nid = "apikey:{admin_id}"\ntenant = "ops"\nroles = ["admin"]\n\n'
        '[tenants.assurance]\nmodels = ["*"]\nrequests_per_s = 1000.0\nrequest_burst = 1000\n'
        "tokens_per_min = 100000000\ntoken_burst = 10000000\n\n[tenants.ops]\nmodels = []\n"
    )
    cfg = live_config(d, store, drift_dir=d / "drift")
    key_file = d / "eval.key"
    key_file.write_text(eval_key)
    key_file.chmod(0o600)
    return cfg, str(key_file), admin_key


def run_eval(target: str, key_file: str, out: Path, concurrency: int) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.cli.main",
            "eval",
            MODEL,
            "--target",
            target,
            "--api-key-file",
            key_file,
            "--profile",
            "ci",
            "--gate-policy",
            str(HERE.parent / "python/bastion/assurance/data/gate/ci.toml"),
            "--out",
            str(out),
            "--concurrency",
            str(concurrency),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"bastion eval failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "run_s": summary["elapsed_s"],
        "probes": len(summary["probe_hits"]),
        "verdict": summary["gate"]["verdict"],
        "hits": {f: f"{v['hits']}/{v['n']}" for f, v in summary["figures"].items()},
    }


def drift_checks(target: str, admin_key: str, n: int = 3) -> list[dict[str, Any]]:
    import grpc

    from bastion.v1 import admin_pb2 as apb
    from bastion.v1 import admin_pb2_grpc as apb_grpc

    rows = []
    with grpc.insecure_channel(target) as ch:
        stub = apb_grpc.AdminStub(ch)
        for _ in range(n):
            t0 = time.monotonic()
            m = stub.CheckDrift(
                apb.CheckDriftRequest(), metadata=(("authorization", f"Bearer {admin_key}"),), timeout=300
            ).models[0]
            rows.append(
                {
                    "wall_s": round(time.monotonic() - t0, 2),
                    "check_s": round(m.seconds, 2),
                    "status": m.status,
                    "delta": m.delta,
                    "tolerance": m.tolerance,
                    "noise_floor": m.noise_floor,
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "assurance_bench.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bastion-assurance-") as tmp:
        d = Path(tmp)
        cfg, key_file, admin_key = setup(d)
        with live_server(d, cfg) as target:
            ours = run_eval(target, key_file, d / "eval8", 8)
            anchor = run_eval(target, key_file, d / "eval1", 1)
            drift = drift_checks(target, admin_key)
    worst_drift = max(r["wall_s"] for r in drift)
    res = {
        "benchmark": "assurance_bench",
        "machine": common.machine_info(),
        "eval_ci": ours,
        "anchor_sequential": anchor,
        "speedup_vs_sequential": round(anchor["run_s"] / ours["run_s"], 2),
        "eval_budget_s": CI_BUDGET_S,
        "eval_within_budget": ours["wall_s"] <= CI_BUDGET_S,
        "drift_checks": drift,
        "drift_budget_s": DRIFT_BUDGET_S,
        "drift_within_budget": worst_drift <= DRIFT_BUDGET_S,
    }
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
