#!/usr/bin/env python3
"""What the security layer costs the front end, without engine noise: bastion's real gRPC server over the
fake engine of the gRPC tests (testkit.fake_server, instant tokens), security on against security off, same run.

On: mutual TLS, a JWT bearer token checked against a JWKS file, the tenancy policy with its token buckets,
and the audit log (record fsynced before each final message). Off: the pass-through of
benchmarks/open_server.py --engine fake on plaintext loopback. Each side is its own server process (started by
testkit.launcher); both run at once and are measured alternately, several times per level (medians reported);
the client is this process (grpc.aio, one channel per server).

    .venv/bin/python benchmarks/security_bench.py --quick    # CI
    .venv/bin/python benchmarks/security_bench.py            # concurrency 1, 16, 64
    .venv/bin/python benchmarks/security_bench.py --quick --profile /tmp/on.prof   # + where the on side's time goes

Writes benchmarks/results/security_bench[-quick].json. serve_bench.py measures the same comparison on the
real engine (bastion vs bastion-open), where engine noise is far larger than this layer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]  # benchmarks/ and the repository root (testkit/)

import common  # noqa: E402 - after the sys.path insert above
from testkit.launcher import NO_HEALTH_LISTENER, BastionServer, fake_server, free_port  # noqa: E402 - after the sys.path insert above


async def run_level(
    stub: Any,
    pb: Any,
    metadata: Any,
    c: int,
    n: int,
    max_tokens: int,
    server_pid: int | None = None,
    stream_interval: int = 1,
) -> dict[str, Any]:
    """One level: ``c`` warm-up calls, then ``n`` calls ``c`` at a time. With ``server_pid``, the server process's
    CPU time (user + system, from /proc) over the ``n`` calls, per call: steadier than throughput on a shared
    machine, and what the security layer adds to each call."""
    sem = asyncio.Semaphore(c)
    ttft: list[float] = []
    lat: list[float] = []
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with sem:
            req = pb.GenerateRequest(
                model="fake-model", prompt=f"Request {i:05d} hello", sampling=pb.SamplingParams(max_tokens=max_tokens)
            )
            if stream_interval > 1:
                req.sampling.stream_interval = stream_interval
            t0 = time.perf_counter()
            first = None
            async for m in stub.Generate(req, metadata=metadata, timeout=60):
                if first is None and m.token_ids:
                    first = time.perf_counter()
                tokens += len(m.token_ids)
            ttft.append(((first or time.perf_counter()) - t0) * 1000)
            lat.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*[one(i) for i in range(c)])  # warm-up
    ttft.clear()
    lat.clear()
    tokens = 0
    cpu0 = common.proc_cpu_s(server_pid) if server_pid is not None else None
    start = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    wall = time.perf_counter() - start
    cpu1 = common.proc_cpu_s(server_pid) if server_pid is not None else None
    q = statistics.quantiles(ttft, n=100)
    cpu_ms = None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) / n * 1000, 4)
    return {
        "server_cpu_ms_per_call": cpu_ms,
        "concurrency": c,
        "requests": n,
        "output_tok_s": round(tokens / wall, 1),
        "requests_s": round(n / wall, 1),
        "ttft_ms": {"p50": round(statistics.median(ttft), 3), "p99": round(q[98], 3)},
        "latency_ms": {"p50": round(statistics.median(lat), 3)},
    }


def median_level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of repeated runs of one level (throughput, TTFT p50/p99, latency p50)."""
    med = statistics.median
    return {
        "concurrency": runs[0]["concurrency"],
        "requests": runs[0]["requests"],
        "repeats": len(runs),
        "output_tok_s": round(med(r["output_tok_s"] for r in runs), 1),
        "requests_s": round(med(r["requests_s"] for r in runs), 1),
        "ttft_ms": {
            "p50": round(med(r["ttft_ms"]["p50"] for r in runs), 3),
            "p99": round(med(r["ttft_ms"]["p99"] for r in runs), 3),
        },
        "latency_ms": {"p50": round(med(r["latency_ms"]["p50"] for r in runs), 3)},
        "server_cpu_ms_per_call": _median_or_none([r.get("server_cpu_ms_per_call") for r in runs]),
        "runs": runs,
    }


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 4) if len(known) == len(values) and known else None


def add_intervals(comparison: list[dict[str, Any]], servers: dict[str, Any]) -> None:
    """95 % bootstrap intervals (runs resampled per side) of each level's throughput ratio (on / off, medians) and
    TTFT p50 delta (on - off, medians of the runs' p50s), beside the point figures."""
    med = statistics.median
    for cmp, on, off in zip(comparison, servers["on"]["levels"], servers["off"]["levels"], strict=True):
        tput_on, tput_off = [r["output_tok_s"] for r in on["runs"]], [r["output_tok_s"] for r in off["runs"]]
        ttft_on, ttft_off = [r["ttft_ms"]["p50"] for r in on["runs"]], [r["ttft_ms"]["p50"] for r in off["runs"]]
        lo, hi = common.bootstrap_interval(lambda a, b: med(a) / med(b), tput_on, tput_off)
        cmp["throughput_ratio_ci95"] = [round(lo, 4), round(hi, 4)]
        lo, hi = common.bootstrap_interval(lambda a, b: med(a) - med(b), ttft_on, ttft_off)
        cmp["ttft_p50_delta_ms_ci95"] = [round(lo, 3), round(hi, 3)]
        cpu_on, cpu_off = (
            [r.get("server_cpu_ms_per_call") for r in on["runs"]],
            [r.get("server_cpu_ms_per_call") for r in off["runs"]],
        )
        if None in cpu_on or None in cpu_off:
            continue
        cmp["server_cpu_ms_per_call"] = {"on": on["server_cpu_ms_per_call"], "off": off["server_cpu_ms_per_call"]}
        cmp["server_cpu_ratio"] = round(med(cpu_on) / med(cpu_off), 4)
        lo, hi = common.bootstrap_interval(lambda a, b: med(a) / med(b), cpu_on, cpu_off)
        cmp["server_cpu_ratio_ci95"] = [round(lo, 4), round(hi, 4)]


def fake_servers(configs: dict[str, str], targets: dict[str, str], logdir: Path) -> dict[str, BastionServer]:
    """Security on: bastion's server over the fake engine; off: benchmarks/open_server.py over the same engine."""
    return {
        "on": fake_server(
            logdir, configs["on"], target=targets["on"], name="on", config_name="on.toml", log_name="on.log"
        ),
        "off": BastionServer(
            logdir,
            configs["off"],
            target=targets["off"],
            program=[sys.executable, str(HERE / "open_server.py"), "--engine", "fake"],
            name="off",
            config_name="off.toml",
            log_name="off.log",
        ),
    }


async def bench_pair(
    servers: dict[str, BastionServer],
    auths: dict[str, Any],
    levels: list[int],
    n: int,
    max_tokens: int,
    repeats: int,
    stream_interval: int = 1,
) -> dict[str, Any]:
    """Both servers up at once (the fake engine is light); per level, on and off measured alternately
    ``repeats`` times, so drift on a shared machine hits both sides alike; medians reported."""
    from bastion.v1 import inference_pb2 as pb
    from bastion.v1 import inference_pb2_grpc as pb_grpc

    for server in servers.values():
        server.start()
    try:
        stubs, channels = {}, {}
        for m, server in servers.items():
            await asyncio.to_thread(server.wait_serving, 60, channel=auths[m].sync_channel, poll_s=0.05)
            channels[m] = auths[m].channel(server.target)
            stubs[m] = pb_grpc.InferenceStub(channels[m])
        out: dict[str, Any] = {"on": {"levels": []}, "off": {"levels": []}}
        for c in levels:
            runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
            for _ in range(repeats):
                for m in ("on", "off"):
                    runs[m].append(
                        await run_level(
                            stubs[m],
                            pb,
                            auths[m].metadata(),
                            c,
                            max(n, 4 * c),
                            max_tokens,
                            servers[m].pid,
                            stream_interval,
                        )
                    )
            for m in ("on", "off"):
                lv = median_level(runs[m])
                out[m]["levels"].append(lv)
                print(
                    f"[{m}] c={c:<3} {lv['output_tok_s']:>9} tok/s  TTFT p50 {lv['ttft_ms']['p50']:.3f} ms "
                    f"(median of {repeats})",
                    flush=True,
                )
        for ch in channels.values():
            await ch.close()
        return out
    finally:
        for server in servers.values():
            await asyncio.to_thread(server.stop)


async def amain(args: argparse.Namespace) -> int:
    import serve_bench

    if args.profile:  # read by testkit.fake_server's main() in the security-on server (the off side is another program)
        from testkit.fake_server import PROFILE_ENV

        os.environ[PROFILE_ENV] = str(Path(args.profile).resolve())
    levels = [1, 16] if args.quick else [1, 16, 64]
    n = 64 if args.quick else 600  # 600: the server CPU per call resolves 1/60 ms (/proc counts 10 ms ticks)
    logdir = Path(tempfile.mkdtemp(prefix="security_bench."))
    security, auth = serve_bench.secure_setup(logdir / "secure")
    ports = {m: free_port() for m in ("on", "off")}
    base = common.QUIET_SERVER_TOML + f"{NO_HEALTH_LISTENER}[server]\nmax_inflight_requests = 1024\n"
    configs = {
        "on": security + base + f'listen = "127.0.0.1:{ports["on"]}"\n',
        "off": base + f'listen = "127.0.0.1:{ports["off"]}"\n',
    }
    targets = {m: f"127.0.0.1:{port}" for m, port in ports.items()}
    report: dict[str, Any] = {
        "benchmark": "security_bench",
        "mode": "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(),
        "config": {
            "engine": "testkit/fakes.py FakeEngine (no delay)",
            "max_tokens": args.max_tokens,
            "stream_interval": args.stream_interval,
            "concurrency": levels,
            "requests_per_level": n,
            "on": "mTLS + JWT (ES256, JWKS file) + tenancy/rate limits + audit log (fsync per call, group commit)",
            "off": "benchmarks/open_server.py --engine fake pass-through, plaintext loopback",
        },
        "servers": {},
    }
    repeats = 3 if args.quick else 7
    report["config"]["repeats"] = repeats
    report["servers"] = await bench_pair(
        fake_servers(configs, targets, logdir),
        {"on": auth, "off": serve_bench.BastionAuth()},
        levels,
        n,
        args.max_tokens,
        repeats,
        args.stream_interval,
    )
    report["comparison"] = common.compare_security(
        report["servers"]["on"]["levels"], report["servers"]["off"]["levels"]
    )
    add_intervals(report["comparison"], report["servers"])
    audit = logdir / "secure" / "audit"
    report["audit_records"] = sum(
        1 for seg in audit.glob("audit-*.jsonl") for line in seg.read_text().splitlines() if '"kind":"request"' in line
    )
    out = Path(args.out) if args.out else HERE / "results" / f"security_bench{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n{'conc':>4} {'tput on/off':>12} {'(95 % interval)':>18} {'TTFT p50 on-off':>16} {'(95 % interval)':>18}"
        f" {'server CPU/call on, off':>24} {'ratio':>6} {'(95 % interval)':>18}"
    )
    for c in report["comparison"]:
        t, d = c["throughput_ratio_ci95"], c["ttft_p50_delta_ms_ci95"]
        cpu, k = c.get("server_cpu_ms_per_call"), c.get("server_cpu_ratio_ci95") or [0, 0]
        cpu_txt = f"{cpu['on']:.3f}, {cpu['off']:.3f} ms" if cpu else "n/a"
        print(
            f"{c['concurrency']:>4} {c['throughput_ratio'] or 0:>12.3f} [{t[0]:.3f}, {t[1]:.3f}]"
            f" {c['ttft_p50_delta_ms'] or 0:>13.3f} ms [{d[0]:.2f}, {d[1]:.2f}] ms"
            f" {cpu_txt:>24} {c.get('server_cpu_ratio') or 0:>6.3f} [{k[0]:.3f}, {k[1]:.3f}]"
        )
    print(f"audit records written (security on): {report['audit_records']}\nsaved {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", help="write a cProfile of the security-on server's event loop to this file")
    p.add_argument("--max-tokens", type=int, default=16)
    common.add_stream_interval(p, "both sides")
    p.add_argument("--out")
    args = p.parse_args()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
