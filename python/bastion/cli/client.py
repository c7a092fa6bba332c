"""Client side of the CLI: channel setup and the generate / health calls."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.config import Settings, parse_listen
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def default_target(settings: Settings) -> str:
    """Where a local client reaches the configured listener (a wildcard bind means localhost)."""
    kind, host, port = parse_listen(settings.server.listen)
    if kind == "unix":
        return f"unix:{host}"
    host = _WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_channel(
    target: str,
    settings: Settings,
    *,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    server_name: str | None = None,
) -> grpc.aio.Channel:
    """TLS when a CA is given or the server config has TLS (its own certificate then serves as CA)."""
    tls = settings.server.tls
    ca = ca_file or (str(tls.cert_file) if tls.enabled and tls.cert_file else None)
    if ca is None:
        return grpc.aio.insecure_channel(target)
    chain = key = None
    if client_cert and client_key:
        chain, key = Path(client_cert).read_bytes(), Path(client_key).read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(), private_key=key, certificate_chain=chain
    )
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.aio.secure_channel(target, creds, options=options)


async def generate(
    channel: grpc.aio.Channel,
    *,
    prompt: str,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    system: str | None,
    raw: bool,
    out: TextIO = sys.stdout,
) -> None:
    """Streams the completion to ``out`` as it arrives; raises grpc.aio.AioRpcError on failure."""
    stub = pb_grpc.InferenceStub(channel)
    if not model:
        listing = await stub.ListModels(pb.ListModelsRequest(), timeout=10)
        if not listing.models:
            raise SystemExit("error: the server lists no models")
        model = listing.models[0].name
    sampling = pb.SamplingParams()
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if temperature is not None:
        sampling.temperature = temperature
    request = pb.GenerateRequest(model=model, sampling=sampling)
    if raw:
        request.prompt = (system + "\n\n" + prompt) if system else prompt
    else:
        if system:
            request.conversation.messages.add(role=pb.ROLE_SYSTEM, content=system)
        request.conversation.messages.add(role=pb.ROLE_USER, content=prompt)
    async for msg in stub.Generate(request):
        if msg.text:
            out.write(msg.text)
            out.flush()
    out.write("\n")
    out.flush()


async def health(channel: grpc.aio.Channel, timeout: float) -> str:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
