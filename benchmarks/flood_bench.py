#!/usr/bin/env python3
"""Tenant flood: the latency a well-behaved tenant sees while another tenant floods the server (issue 15, item 7).

bastion's real front end (API-key authentication, the tenancy policy and its limits, the audit log, admission)
over the fake engine of the gRPC tests, with a per-token delay like a small model's (``testkit.fake_server``,
started by ``testkit.launcher``). Two tenants:

* ``victim``: ``--victim-concurrency`` streams of normal requests (30-120-token prompts, 32 tokens out), one
  after the other in each stream; generous limits.
* ``flooder``: ``--flood-concurrency`` (200) streams of oversized requests (16,000-byte prompts, 1,024 tokens
  out), each sent again as soon as the last one ended, for the whole phase; a low request rate and burst and a
  few concurrent streams, so nearly every call is refused (RESOURCE_EXHAUSTED) before admission and
  tokenization. It runs in a process of its own, so its client work does not delay the victim's client.

Phase ``anchor``: the victim alone. Phase ``flood``: the victim again once the flood has run ``ramp_s``, while
it runs. Both in the same run, on the same server. The count-based checks are tests/grpc/test_tenant_limits_first.py.

    .venv/bin/python benchmarks/flood_bench.py --smoke    # CI: 4 victim requests per phase, ~10 s (mostly start-up)
    .venv/bin/python benchmarks/flood_bench.py --quick    # 100 victim requests per phase
    .venv/bin/python benchmarks/flood_bench.py            # 200 victim requests per phase, ~2 min on 2 cores

Writes benchmarks/results/flood_bench[-quick|-smoke].json (``--out`` to change). Exit status: 0 when the
measurement completed (whether or not the victim was refused: that is a result), 1 when the server or the
flood client failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]  # benchmarks/ and the repository root (testkit/)

import common  # noqa: E402 - after the sys.path insert above
import serve_bench  # noqa: E402 - after the sys.path insert above
from testkit.launcher import NO_HEALTH_LISTENER, BastionServer, ServerStartError, fake_server, free_port  # noqa: E402 - after the sys.path insert above

VICTIM, FLOODER = "victim", "flooder"
FLOODING = b"flooding"  # the flood client's first line: its streams are open
MAX_CONTEXT = 1 << 16  # the fake model's context: the oversized prompt fits, so only the tenant's limits refuse it
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Mode:
    victim_requests: int  # measured, per phase
    victim_warmup: int  # per phase, not measured
    victim_concurrency: int
    victim_max_tokens: int
    ramp_s: float  # the flood runs this long before the victim's phase starts


MODES = {
    "smoke": Mode(victim_requests=4, victim_warmup=1, victim_concurrency=1, victim_max_tokens=8, ramp_s=0.5),
    "quick": Mode(victim_requests=100, victim_warmup=4, victim_concurrency=2, victim_max_tokens=32, ramp_s=2.0),
    "full": Mode(victim_requests=200, victim_warmup=4, victim_concurrency=2, victim_max_tokens=32, ramp_s=3.0),
}

# The server: bastion's defaults for admission (128 admitted, half of them per tenant at most; the listener
# takes 2 x 128 + 64 concurrent RPCs, so 200 flood calls leave room for the victim's).
SERVER = {"max_inflight_requests": 128, "tenant_admission_share": 0.5, "stream_write_timeout_s": 30.0}
TENANTS: dict[str, dict[str, Any]] = {
    VICTIM: {
        "models": ["*"],
        "max_tokens_per_request": 4096,
        "max_concurrent_streams": 64,
        "requests_per_s": 1000.0,
        "request_burst": 1000,
        "tokens_per_min": 1 << 30,
        "token_burst": 1 << 30,
    },
    # Token limits that never bind (an oversized call is refused for its rate, not as invalid): what refuses
    # the flood is the request rate and burst and the stream limit, before admission and tokenization.
    FLOODER: {
        "models": ["*"],
        "max_tokens_per_request": 4096,
        "max_concurrent_streams": 8,
        "requests_per_s": 2.0,
        "request_burst": 4,
        "tokens_per_min": 1 << 30,
        "token_burst": 1 << 30,
    },
}


@dataclass(frozen=True)
class Sampling:
    """What serve_bench.BastionClient.send reads of its configuration."""

    max_tokens: int
    request_timeout_s: float = REQUEST_TIMEOUT_S
    stream_interval: int = 1


def status_of(r: common.RequestResult) -> str:
    """The gRPC status name of a finished call ("OK"; an error recorded as "CODE: details" gives CODE)."""
    return "OK" if r.error is None else r.error.split(":", 1)[0]


def status_counts(results: Sequence[common.RequestResult]) -> dict[str, int]:
    return dict(sorted(Counter(status_of(r) for r in results).items()))


# --------------------------------------------------------------------------------------------------
# The flood client (its own process: --flood-child)
# --------------------------------------------------------------------------------------------------


async def flood_child(args: argparse.Namespace) -> dict[str, Any]:
    """``--flood-concurrency`` streams of oversized calls until stdin closes (or ``--max-s``); prints FLOODING
    once they are started, then its counts as one JSON line. Calls still open at the end are cancelled and not
    counted."""
    key = Path(args.key_file).read_text(encoding="utf-8").strip()
    client = serve_bench.BastionClient(
        args.target, serve_bench.BastionAuth(api_key=key), Sampling(args.flood_max_tokens)
    )
    client.model = args.model
    filler = ("The flood asks for far more than its tenant may run. " * (args.flood_prompt_chars // 50 + 1))[
        : args.flood_prompt_chars
    ]
    counts: Counter[str] = Counter()
    samples: set[str] = set()
    tokens = 0

    async def stream(i: int) -> None:
        nonlocal tokens
        n = 0
        while True:
            r = await client.send(f"Flood {i:03d}-{n:06d}. {filler}")
            n += 1
            counts[status_of(r)] += 1
            tokens += r.tokens if r.ok else 0
            if r.error is not None and len(samples) < 5:
                samples.add(r.error[:160])

    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await asyncio.wait_for(client.channel.channel_ready(), 30)
    cpu0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    tasks = [asyncio.create_task(stream(i)) for i in range(args.flood_concurrency)]
    sys.stdout.buffer.write(FLOODING + b"\n")
    sys.stdout.flush()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stdin.read(), args.max_s)  # EOF: the parent is done
    wall = time.perf_counter() - t0
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await client.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    done = sum(counts.values())
    return {
        "streams": args.flood_concurrency,
        "calls": done,
        "calls_s": round(done / wall, 1) if wall > 0 else None,
        "by_status": dict(sorted(counts.items())),
        "admitted_tokens": tokens,
        "error_samples": sorted(samples),
        "wall_s": round(wall, 3),
        "client_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
        "client_failures": [repr(t.exception()) for t in failed][:3],
    }


async def start_flood(args: argparse.Namespace, target: str, model: str, workdir: Path, key: str) -> Any:
    """Starts the flood client and returns its process once its streams are open. The key goes in a 0600 file,
    never on the command line."""
    key_file = workdir / "flooder.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--flood-child",
        "--target",
        target,
        "--model",
        model,
        "--key-file",
        str(key_file),
        "--flood-concurrency",
        str(args.flood_concurrency),
        "--flood-prompt-chars",
        str(args.flood_prompt_chars),
        "--flood-max-tokens",
        str(args.flood_max_tokens),
        "--max-s",
        "900",
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
    except TimeoutError:
        line = b""
    if line.strip() != FLOODING:
        await stop_process(proc)
        raise RuntimeError(f"the flood client did not start (exit {proc.returncode}, said {line[:200]!r})")
    return proc


async def stop_flood(proc: Any) -> dict[str, Any]:
    """Closes the flood client's stdin (its signal to stop) and returns its counts."""
    proc.stdin.close()  # communicate() without input leaves it open (Python 3.11)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        await stop_process(proc)
        raise RuntimeError("the flood client did not stop within 60 s") from None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the flood client exited {proc.returncode}: {out[-500:]!r}")
    report: dict[str, Any] = json.loads(lines[-1])
    if report["client_failures"]:
        raise RuntimeError(f"flood streams failed in the client: {report['client_failures']}")
    return report


async def stop_process(proc: Any) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


async def victim_phase(
    server: BastionServer, client: serve_bench.BastionClient, warm: list[str], measured: list[str], c: int
) -> dict[str, Any]:
    """The victim's requests (serve_bench.run_level: warm-up, then ``c`` in flight) and the server's CPU."""
    cpu0, t0 = common.proc_cpu_s(server.pid), time.perf_counter()
    summary, results = await serve_bench.run_level(client.send, warm, measured, c)
    cpu1, wall = common.proc_cpu_s(server.pid), time.perf_counter() - t0
    if server.exited() is not None:
        raise RuntimeError(f"the server exited with status {server.exited()} during the phase")
    summary["by_status"] = status_counts(results)
    summary["refusals"] = summary["errors"] + summary["warmup_errors"]
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    rss = common.proc_memory_kb(server.pid)
    return {
        "victim": summary,
        "server": {
            "cpu_s": None if cpu is None else round(cpu, 3),
            "cpu_cores_busy": None if cpu is None else round(cpu / wall, 3),
            "rss_mib": round(rss.get("VmRSS", 0) / 1024, 1),
            "peak_rss_mib": round(rss.get("VmHWM", 0) / 1024, 1),
        },
    }


def print_phase(name: str, phase: dict[str, Any]) -> None:
    v = phase["victim"]
    print(
        f"[{name}] victim {v['ok']}/{v['requests']} ok, refusals {v['refusals']}; "
        f"TTFT p50 {v['ttft_ms']['p50']} ms p99 {v['ttft_ms']['p99']} ms; "
        f"latency p50 {v['latency_ms']['p50']} ms p99 {v['latency_ms']['p99']} ms; "
        f"server {phase['server']['cpu_cores_busy']} cores busy",
        flush=True,
    )
    if "flooder" in phase:
        f = phase["flooder"]
        print(f"[{name}] flooder {f['calls']} calls ({f['calls_s']}/s): {f['by_status']}", flush=True)


def ratios(anchor: dict[str, Any], flood: dict[str, Any]) -> dict[str, float | None]:
    """flood / anchor for the victim's TTFT and total latency (p50, p99, mean)."""
    return {
        f"{metric}_{q}": common.ratio(flood[f"{metric}_ms"][q], anchor[f"{metric}_ms"][q])
        for metric in ("ttft", "latency")
        for q in ("p50", "p99", "mean")
    }


def audit_summary(audit_dir: Path) -> dict[str, Any]:
    """The audit log after the run: its bytes, its records by kind and status, and how many refused calls its
    coalesced records stand for (refusals are recorded in full once per key and window, then counted)."""
    records: Counter[str] = Counter()
    coalesced = 0
    size = 0
    for seg in sorted(audit_dir.glob("audit-*.jsonl")):
        size += seg.stat().st_size
        for line in seg.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            records[f"{rec.get('kind')}/{rec.get('status', '-')}"] += 1
            if rec.get("reason") == "coalesced":
                coalesced += int(rec.get("count", 0))
    return {"bytes": size, "records": dict(sorted(records.items())), "refusals_in_coalesced_records": coalesced}


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    c = args.victim_concurrency or mode.victim_concurrency
    n = args.victim_requests or mode.victim_requests
    workdir = Path(tempfile.mkdtemp(prefix="flood_bench."))
    security, keys = common.api_key_tenants(workdir / "identity", TENANTS)
    port = free_port()
    target = f"127.0.0.1:{port}"
    toml = (
        security
        + common.QUIET_SERVER_TOML
        + NO_HEALTH_LISTENER
        + f'[server]\nlisten = "{target}"\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in SERVER.items())
    )
    prompts = common.make_prompts(2 * (n + mode.victim_warmup), seed=0, tag="Victim")
    split = [prompts[i * (n + mode.victim_warmup) : (i + 1) * (n + mode.victim_warmup)] for i in range(2)]
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"flood_bench{'' if mode_name == 'full' else '-' + mode_name}.json"
    )
    report: dict[str, Any] = {
        "benchmark": "flood_bench",
        "mode": mode_name,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(),
        "config": {
            "engine": "testkit/fakes.py FakeEngine served by testkit/fake_server.py (one token per UTF-8 byte)",
            "token_delay_s": args.token_delay,
            "max_context": MAX_CONTEXT,
            "server": SERVER,
            "tenants": TENANTS,
            "victim": {
                "requests_per_phase": n,
                "warmup_per_phase": mode.victim_warmup,
                "concurrency": c,
                "max_tokens": mode.victim_max_tokens,
                "prompts": "common.make_prompts (raw text, about 30-120 tokens), a distinct one per call",
            },
            "flood": {
                "concurrency": args.flood_concurrency,
                "ramp_s": mode.ramp_s,
                "prompt_bytes": args.flood_prompt_chars,
                "max_tokens": args.flood_max_tokens,
                "client": "its own process; each stream sends its next call as soon as the last one ended",
            },
            "auth": "API keys (bearer), tenancy policy, audit log (fsync before each final message), plaintext loopback",
            "server_toml": toml,
        },
        "phases": {},
        "errors": [],
    }
    server = fake_server(
        workdir, toml, target=target, token_delay=args.token_delay, max_context=MAX_CONTEXT, verbose=True
    )
    client = serve_bench.BastionClient(
        target, serve_bench.BastionAuth(api_key=keys[VICTIM]), Sampling(mode.victim_max_tokens)
    )
    flood_proc: Any = None
    try:
        server.start()
        await client.wait_ready(server, 180)
        w = mode.victim_warmup
        anchor = await victim_phase(server, client, split[0][:w], split[0][w:], c)
        report["phases"]["anchor"] = anchor
        print_phase("anchor", anchor)
        flood_proc = await start_flood(args, target, client.model, workdir, keys[FLOODER])
        await asyncio.sleep(mode.ramp_s)
        flood = await victim_phase(server, client, split[1][:w], split[1][w:], c)
        flood["flooder"] = await stop_flood(flood_proc)
        report["phases"]["flood"] = flood
        print_phase("flood", flood)
    except Exception as exc:  # noqa: BLE001 - recorded, the JSON still written; exit 1
        report["errors"].append(exc.reason if isinstance(exc, ServerStartError) else f"{type(exc).__name__}: {exc}")
        print(f"flood_bench: FAILED: {report['errors'][-1]}\n--- server log ---\n{server.tail()}", file=sys.stderr)
    finally:
        if flood_proc is not None:
            await stop_process(flood_proc)
        with contextlib.suppress(Exception):
            await client.close()
        await asyncio.to_thread(server.stop)
    phases = report["phases"]
    if "anchor" in phases and "flood" in phases:
        report["ratios_flood_over_anchor"] = ratios(phases["anchor"]["victim"], phases["flood"]["victim"])
        report["victim_refusals"] = {p: phases[p]["victim"]["refusals"] for p in ("anchor", "flood")}
        report["goal_met"] = {"victim_zero_refusals": sum(report["victim_refusals"].values()) == 0}
    report["audit"] = audit_summary(workdir / "identity" / "audit")
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if "ratios_flood_over_anchor" in report:
        print(f"victim flood/anchor: {json.dumps(report['ratios_flood_over_anchor'])}")
        print(f"victim refusals: {report['victim_refusals']}")
    print(f"saved {out}")
    if report["errors"] or args.keep_logs:
        print(f"server log, config and audit log: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # the throwaway keys too
    return 1 if report["errors"] else 0


def positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="100 victim requests per phase")
    size.add_argument("--smoke", action="store_true", help="4 victim requests per phase (CI)")
    p.add_argument("--token-delay", type=positive(float), default=0.005, help="seconds per generated token (0.005)")
    p.add_argument("--victim-requests", type=positive(int), help="measured victim requests per phase")
    p.add_argument("--victim-concurrency", type=positive(int), help="victim requests in flight")
    p.add_argument("--flood-concurrency", type=positive(int), default=200, help="flood calls in flight (200)")
    p.add_argument("--flood-prompt-chars", type=positive(int), default=16000, help="flood prompt bytes (16000)")
    p.add_argument("--flood-max-tokens", type=positive(int), default=1024, help="flood max_tokens (1024)")
    p.add_argument("--keep-logs", action="store_true", help="keep the server's log, config and audit log")
    p.add_argument("--out", help="the JSON report (default: benchmarks/results/flood_bench[-quick|-smoke].json)")
    p.add_argument("--flood-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--target", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--key-file", help=argparse.SUPPRESS)
    p.add_argument("--max-s", type=float, default=900.0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.flood_child:
        print(json.dumps(asyncio.run(flood_child(args))), flush=True)
        return 0
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
