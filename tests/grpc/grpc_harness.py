"""An in-process bastion server on 127.0.0.1:0 (or a unix socket) over FakeEngine, for gRPC tests."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bastion.config import Settings, deep_merge
from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import EnginePool
from bastion.observability.telemetry import Telemetry
from bastion.server.app import PoolFactory, serve
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from identity import Identity, aio_bearer, make_identity


def make_settings(
    *,
    listen: str = "127.0.0.1:0",
    metrics_listen: str = "",
    server: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    identity: Identity | None = None,
    extra: dict[str, Any] | None = None,
) -> Settings:
    """Settings for a test server: API keys and a tenancy policy (a fresh identity in a temp dir unless
    one is given) and its own audit log directory. The health listener is off unless ``health`` sets its
    ``listen`` (``"127.0.0.1:0"``: a free port, then ``Running.health_address``)."""
    ident = identity or make_identity(Path(tempfile.mkdtemp(prefix="bastion-id-")))
    audit_dir = Path(tempfile.mkdtemp(prefix="bastion-audit-"))
    settings = Settings.model_validate(
        deep_merge(
            {
                "server": {"listen": listen, "grace_period_s": 5.0, **(server or {})},
                "limits": limits or {},
                "health": {"listen": "", **(health or {})},
                "observability": {"metrics_listen": metrics_listen},
                "cache_dir": str(audit_dir / "cache"),
                **ident.settings(audit_dir),
            },
            extra or {},
        )
    )
    _IDENTITIES[id(settings)] = ident
    return settings


def mtls_with_tls_health(pki: dict[str, Path]) -> Settings:
    """Mutual TLS on the main listener and server TLS (no client certificate asked) on the health listener, from
    ``certs.make_pki``'s files: the deployment an orchestrator's probes meet."""
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"])}
    return make_settings(
        server={"tls": {**tls, "client_ca_file": str(pki["ca"])}},
        health={"listen": "127.0.0.1:0", "tls": tls},
    )


# Which identity a Settings object was made with (settings are frozen; this keeps the test API small).
_IDENTITIES: dict[int, Identity] = {}


def identity_of(settings: Settings) -> Identity:
    return _IDENTITIES[id(settings)]


@dataclass
class Running:
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.InferenceStub
    health: health_pb2_grpc.HealthStub
    stop_event: asyncio.Event
    task: asyncio.Task[int]
    telemetry: Telemetry
    spans: InMemorySpanExporter
    identity: Identity
    audit_dir: Path
    logs: InMemoryLogRecordExporter
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the health listener ([health] listen) was bound; None when it is off.
    health_address: str | None = None
    # Where the HTTP API ([http] listen) was bound; None when it is off.
    http_address: str | None = None

    def channel_for(self, name: str | None) -> grpc.aio.Channel:
        """A plaintext channel with ``name``'s API key (None: no credentials)."""
        interceptors = None if name is None else aio_bearer(self.identity.keys[name])
        ch = grpc.aio.insecure_channel(self.address, interceptors=interceptors)
        self.extra.setdefault("channels", []).append(ch)  # kept alive (and closed) with the server
        return ch

    async def health_status(self, service: str = "") -> int:
        reply = await self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return reply.status

    async def wait_health(self, status: int, timeout: float = 5.0, service: str = "") -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while await self.health_status(service) != status:
            if loop.time() > end:
                raise AssertionError(f"health did not become {status}")
            await asyncio.sleep(0.02)

    async def stop(self, timeout: float = 15.0) -> int:
        self.stop_event.set()
        return await asyncio.wait_for(self.task, timeout)


def pool_of(*engines: Any) -> PoolFactory:
    async def factory(process: EngineProcessEnv) -> EnginePool:
        return EnginePool(list(engines))

    return factory


@asynccontextmanager
async def running_server(
    engines: Sequence[Any] = (),
    *,
    settings: Settings | None = None,
    pool_factory: PoolFactory | None = None,
    wait_ready: bool = True,
) -> AsyncIterator[Running]:
    settings = settings or make_settings()
    spans = InMemorySpanExporter()
    logs = InMemoryLogRecordExporter()
    # Audit records go to the in-memory exporter, unless the settings send them over OTLP (test_otlp_export.py).
    otlp_audit = settings.observability.audit_logs_exporter == "otlp"
    telemetry = Telemetry.from_settings(settings, span_exporter=spans, log_exporter=None if otlp_audit else logs)
    stop = asyncio.Event()
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    health_bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    http_bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(
        serve(
            settings,
            pool_factory or pool_of(*engines),
            stop_event=stop,
            on_bound=bound.set_result,
            on_health_bound=health_bound.set_result,
            on_http_bound=http_bound.set_result,
            telemetry=telemetry,
            watchdog_interval=0.05,
        )
    )
    wanted = (
        {bound}
        | ({health_bound} if settings.health.listen else set())
        | ({http_bound} if settings.http.listen else set())
    )
    while not all(f.done() for f in wanted):
        done, _ = await asyncio.wait({task, *wanted}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            raise AssertionError(f"server exited early with {task.result()}")
        if not done:
            raise AssertionError("server did not bind its listeners in 10 s")
    address = bound.result()
    ident = identity_of(settings)
    channel = grpc.aio.insecure_channel(address, interceptors=aio_bearer(ident.keys["alice"]))
    audit_dir = settings.audit.dir
    assert audit_dir is not None
    running = Running(
        address,
        channel,
        pb_grpc.InferenceStub(channel),
        health_pb2_grpc.HealthStub(channel),
        stop,
        task,
        telemetry,
        spans,
        ident,
        audit_dir,
        logs,
        health_address=health_bound.result() if health_bound.done() else None,
        http_address=http_bound.result() if http_bound.done() else None,
    )
    try:
        if wait_ready:
            await running.wait_health(health_pb2.HealthCheckResponse.SERVING)
        yield running
    finally:
        if not task.done():
            stop.set()
            try:
                await asyncio.wait_for(task, 20)
            except BaseException:
                task.cancel()
                raise
        await channel.close()
        for ch in running.extra.get("channels", []):
            await ch.close()
        telemetry.shutdown()


def prompt_request(prompt: str = "hello", model: str = "fake-model", **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(**sampling))


async def collect(call: Any) -> list[pb.GenerateResponse]:
    return [msg async for msg in call]
