#!/usr/bin/env python3
"""Time to first token on the real engine for N tenants sharing one system prompt: declared as a public
prefix (prefilled once for all tenants) against an equally long undeclared one (prefilled once per tenant,
because every tenant has its own partition). Both in the same run on the same server, interleaved.

    .venv/bin/python benchmarks/isolation_live.py [--tenants 8]     # ~7 min on 2 cores (engine start ~4)

Starts `bastion serve` (default model, API keys, a tenancy policy with N tenants) on a Unix socket; writes
benchmarks/results/isolation_live.json. Not part of `make bench-quick` (it needs an engine start).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # benchmarks/ and the repository root (testkit/)

import common  # noqa: E402 - after the sys.path insert above
from testkit.launcher import NO_HEALTH_LISTENER, BastionServer  # noqa: E402 - after the sys.path insert above

WORDS = [
    "orders",
    "deliveries",
    "returns",
    "invoices",
    "refunds",
    "parcels",
    "warehouses",
    "carriers",
    "addresses",
    "payments",
    "customers",
    "claims",
    "tracking",
    "windows",
    "partners",
    "summaries",
]


def system_prompt(seed: int, words: int) -> str:
    import random

    rng = random.Random(seed)
    return "You are the assistant of Example Corp. " + " ".join(rng.choice(WORDS) for _ in range(words))


def setup(d: Path, tenants: int, public: str) -> tuple[str, list[str]]:
    from bastion.auth.api_keys import issue

    store = d / "api-keys.json"
    keys, lines = [], []
    for i in range(tenants):
        key_id, key = issue(store, f"t{i}")
        keys.append(key)
        lines += ["[[principals]]", f'id = "apikey:{key_id}"', f'tenant = "t{i}"', ""]
    for i in range(tenants):
        lines += [
            f"[tenants.t{i}]",
            'models = ["*"]',
            "requests_per_s = 1000.0",
            "request_burst = 1000",
            "tokens_per_min = 100000000",
            "token_burst = 10000000",
            "",
        ]
    digest = hashlib.sha256(public.encode()).hexdigest()
    lines += ["[[public_prefixes]]", 'name = "system"', f"text = {json.dumps(public)}", f'sha256 = "{digest}"']
    (d / "tenants.toml").write_text("\n".join(lines) + "\n")
    return live_config(d, store), keys


def live_config(d: Path, store: Path, drift_dir: Path | None = None) -> str:
    """The TOML for a benchmark server in ``d``: the default model on a Unix socket, API keys from ``store``,
    the policy ``d/tenants.toml``, no go-live gate and no red team; drift checks only with ``drift_dir``."""
    drift = f'dir = "{drift_dir}"' if drift_dir is not None else "enabled = false"
    return f"""
[server]
listen = "unix:{d / "bastion.sock"}"
[model]
source = "default"
cpu_kv_cache_gib = 1
max_num_seqs = 16
[observability]
metrics_listen = ""
{NO_HEALTH_LISTENER}[auth.api_keys]
file = "{store}"
[tenancy]
policy_file = "{d / "tenants.toml"}"
[audit]
dir = "{d / "audit"}"
[assurance]
require_attestation = false
[assurance.drift]
{drift}
[assurance.redteam]
enabled = false
"""


@contextlib.contextmanager
def live_server(d: Path, config_toml: str) -> Iterator[str]:
    """`bastion serve` with ``config_toml`` (d/bastion.toml, log d/server.log; testkit.launcher) until SERVING;
    yields its target; stopped at the end (SIGTERM, up to 120 s, then SIGKILL to its process group)."""
    server = BastionServer(d, config_toml, target=f"unix:{d / 'bastion.sock'}").start()
    try:
        server.wait_serving(900)
        yield server.target
    finally:
        server.stop(grace_s=120)


def ttft(target: str, key: str, model: str, prompt: str) -> tuple[float, int, int]:
    import grpc

    from bastion.v1 import inference_pb2 as pb
    from bastion.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.InferenceStub(ch)
        req = pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(max_tokens=1))
        t0 = time.perf_counter()
        first = None
        usage = None
        for msg in stub.Generate(req, metadata=(("authorization", f"Bearer {key}"),), timeout=300):
            first = first or time.perf_counter() - t0
            if msg.HasField("usage"):
                usage = msg.usage
    assert first is not None and usage is not None
    return first, usage.cached_prompt_tokens, usage.prompt_tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tenants", type=int, default=8)
    ap.add_argument("--system-words", type=int, default=600)
    ap.add_argument("--out", default=str(HERE / "results" / "isolation_live.json"))
    args = ap.parse_args()
    public, private = system_prompt(1, args.system_words), system_prompt(2, args.system_words)
    with tempfile.TemporaryDirectory(prefix="bastion-isolive-") as tmp:
        d = Path(tmp)
        cfg, keys = setup(d, args.tenants, public)
        with live_server(d, cfg) as target:
            model = "smollm2-135m-instruct"
            ttft(target, keys[0], model, "Warm-up: hello.")
            rows: dict[str, list[tuple[float, int, int]]] = {"public": [], "per_tenant": []}
            for i, key in enumerate(keys):  # interleaved: each tenant sends both kinds
                q = f" Question {i}: where is order {1000 + i}?"
                for kind, system in (("public", public), ("per_tenant", private))[:: 1 if i % 2 else -1]:
                    rows[kind].append(ttft(target, key, model, system + q))

    def summary(rs: list[tuple[float, int, int]]) -> dict[str, Any]:
        later = rs[1:]  # the first tenant fills the cache in both cases
        return {
            "ttft_ms": [round(1000 * r[0], 1) for r in rs],
            "cached_tokens": [r[1] for r in rs],
            "prompt_tokens": rs[0][2],
            "median_ttft_ms_after_first": round(1000 * statistics.median(r[0] for r in later), 1),
        }

    res = {
        "benchmark": "isolation_live",
        "tenants": args.tenants,
        "machine": common.machine_info(),
        "public_prefix": summary(rows["public"]),
        "per_tenant": summary(rows["per_tenant"]),
    }
    a, b = res["public_prefix"]["median_ttft_ms_after_first"], res["per_tenant"]["median_ttft_ms_after_first"]
    res["ttft_ratio_public_vs_per_tenant"] = round(a / b, 3)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
