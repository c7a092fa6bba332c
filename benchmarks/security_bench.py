#!/usr/bin/env python3
"""What the security layer costs the front end, without engine noise: bastion's real gRPC server over the
fake engine of the gRPC tests (testkit.fake_server, instant tokens), security on against security off, same run.

On: mutual TLS, a JWT bearer token checked against a JWKS file, the tenancy policy with its token buckets,
and the audit log (record fsynced before each final message). Off: the pass-through of
benchmarks/open_server.py --engine fake on plaintext loopback. Between them, "tls": the same pass-through behind
the same mutual TLS, so the layer's cost splits in the same run into TLS (tls / off, ``comparison_split``) and the
controls above it (on / tls). Each side is its own server process (started by testkit.launcher); all run at once
and are measured in turn, several times per level (medians reported); the client is this process (grpc.aio, one
channel per server). After the calls, ``audit_commit_floor`` times one durable audit record at concurrency 1 on
the same disk: two per call bound the concurrency-1 ratio (``comparison[0].audit_floor``).

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


# Issue 19's goals for the layer's throughput on/off (none set at concurrency 16).
THROUGHPUT_GOALS = {1: 0.90, 64: 0.95}


async def audit_commit_floor(workdir: Path, n: int) -> dict[str, Any]:
    """Wall time of one durable audit record at concurrency 1: ``AuditLog`` with the default settings (what the
    secured server runs) on the same disk, ``n`` sequential appends of a ``begin``-sized record. With an engine
    that answers at once a secured Generate call waits for two such records in turn (its ``begin`` record before
    the first token, its ``request`` record before the final message), so at concurrency 1 the layer's throughput
    ratio cannot exceed off / (off + 2 x this) whatever the rest of it costs. Measured with the servers stopped
    (a quieter machine than during the calls): the bound it gives is, if anything, too generous."""
    from bastion.audit.keys import keygen
    from bastion.audit.log import AuditLog
    from bastion.audit.settings import AuditSettings

    _, signing, public, content = keygen(workdir / "keys")  # keys and witness outside the log, as deployed
    settings = AuditSettings(
        dir=workdir / "audit",
        signing_key_file=signing,
        public_key_file=public,
        content_key_file=content,
        witness_file=workdir / "witness.json",
    )
    log = AuditLog.open(settings, workdir)
    fields = {
        "method": "/bastion.v1.Inference/Generate",
        "peer": "ipv4:127.0.0.1:50000",
        "principal": "spiffe://bench/tenant-a/client",
        "auth_method": "jwt",
        "tenant": "tenant-a",
        "decision": "allow",
        "event": "begin",
        "model": "fake-model",
        "model_digest": "sha256:" + "0" * 64,
        "prompt_tokens": 4,
    }
    times: list[float] = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            await log.append("decision", {**fields, "request_id": f"floor-{i:06d}"})
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        await log.aclose()
    q = statistics.quantiles(times, n=10)
    return {
        "appends": n,
        "commit_ms": {"p10": round(q[0], 4), "p50": round(statistics.median(times), 4), "p90": round(q[8], 4)},
    }


def add_audit_floor(comparison: list[dict[str, Any]], servers: dict[str, Any], floor: dict[str, Any]) -> None:
    """At concurrency 1: the throughput ratio the two durable records per call alone would allow (see
    :func:`audit_commit_floor`), beside the measured one."""
    off = {lv["concurrency"]: lv for lv in servers["off"]["levels"]}.get(1)
    cmp = next((c for c in comparison if c["concurrency"] == 1), None)
    if off is None or cmp is None:
        return
    off_call_ms = 1000 / off["requests_s"]
    waits_ms = 2 * floor["commit_ms"]["p50"]
    cmp["audit_floor"] = {
        "off_call_ms": round(off_call_ms, 4),
        "durable_records_per_call": 2,
        "commit_ms_p50": floor["commit_ms"]["p50"],
        "throughput_ratio_bound": round(off_call_ms / (off_call_ms + waits_ms), 4),
    }


def fake_servers(configs: dict[str, str], targets: dict[str, str], logdir: Path) -> dict[str, BastionServer]:
    """Security on: bastion's server over the fake engine; off (and tls, when configured): benchmarks/open_server.py
    over the same engine."""
    servers = {
        "on": fake_server(
            logdir, configs["on"], target=targets["on"], name="on", config_name="on.toml", log_name="on.log"
        )
    }
    for m in ("tls", "off"):
        if m in configs:
            servers[m] = BastionServer(
                logdir,
                configs[m],
                target=targets[m],
                program=[sys.executable, str(HERE / "open_server.py"), "--engine", "fake"],
                name=m,
                config_name=f"{m}.toml",
                log_name=f"{m}.log",
            )
    return servers


async def bench_pair(
    servers: dict[str, BastionServer],
    auths: dict[str, Any],
    levels: list[int],
    n: int,
    max_tokens: int,
    repeats: int,
    stream_interval: int = 1,
) -> dict[str, Any]:
    """All servers up at once (the fake engine is light); per level, the sides measured in turn ``repeats`` times,
    so drift on a shared machine hits them alike; medians reported."""
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
        out: dict[str, Any] = {m: {"levels": []} for m in servers}
        for c in levels:
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in servers}
            for _ in range(repeats):
                for m in servers:
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
            for m in servers:
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
    ports = {m: free_port() for m in ("on", "tls", "off")}
    base = common.QUIET_SERVER_TOML + f"{NO_HEALTH_LISTENER}[server]\nmax_inflight_requests = 1024\n"
    configs = {
        "on": security + base + f'listen = "127.0.0.1:{ports["on"]}"\n',
        "tls": serve_bench.server_tls_toml(logdir / "secure") + base + f'listen = "127.0.0.1:{ports["tls"]}"\n',
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
            "tls": "the same pass-through behind the same mutual TLS (client certificate required): what TLS costs",
            "off": "benchmarks/open_server.py --engine fake pass-through, plaintext loopback",
        },
        "servers": {},
    }
    repeats = 3 if args.quick else 7
    report["config"]["repeats"] = repeats
    report["servers"] = await bench_pair(
        fake_servers(configs, targets, logdir),
        {
            "on": auth,
            "tls": serve_bench.BastionAuth(
                None, ca_file=auth.ca_file, client_cert=auth.client_cert, client_key=auth.client_key
            ),
            "off": serve_bench.BastionAuth(),
        },
        levels,
        n,
        args.max_tokens,
        repeats,
        args.stream_interval,
    )
    report["comparison"] = common.compare_security(
        report["servers"]["on"]["levels"], report["servers"]["off"]["levels"], THROUGHPUT_GOALS
    )
    common.add_on_off_intervals(
        report["comparison"], report["servers"]["on"]["levels"], report["servers"]["off"]["levels"]
    )
    # The layer split in two, same run: mutual TLS alone (tls / off) and the controls above it (on / tls).
    servers = report["servers"]
    report["comparison_split"] = {}
    for name, a, b in (("tls_vs_off", "tls", "off"), ("on_vs_tls", "on", "tls")):
        part = common.compare_security(servers[a]["levels"], servers[b]["levels"], {})
        common.add_on_off_intervals(part, servers[a]["levels"], servers[b]["levels"])
        report["comparison_split"][name] = part
    report["audit_commit_floor"] = await audit_commit_floor(logdir / "floor", 200 if args.quick else 1000)
    add_audit_floor(report["comparison"], report["servers"], report["audit_commit_floor"])
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
    for name, part in report["comparison_split"].items():
        print(
            f"{name}: throughput "
            + ", ".join(
                f"c={c['concurrency']} {c['throughput_ratio'] or 0:.3f} "
                f"[{c['throughput_ratio_ci95'][0]:.3f}, {c['throughput_ratio_ci95'][1]:.3f}]"
                for c in part
            )
            + "; server CPU "
            + ", ".join(f"{c.get('server_cpu_ratio') or 0:.3f}" for c in part)
        )
    fl = next((c["audit_floor"] for c in report["comparison"] if "audit_floor" in c), None)
    if fl is not None:
        print(
            f"one durable audit record at c=1: {fl['commit_ms_p50']:.3f} ms (p50); two per call on a "
            f"{fl['off_call_ms']:.3f} ms call bound the c=1 throughput ratio at {fl['throughput_ratio_bound']:.3f}"
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
