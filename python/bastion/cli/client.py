"""Client side of the CLI: channel setup and the generate / health calls.

Credentials never travel in clear: a channel without TLS is opened only to a target that stays on this
machine (:func:`is_local_target`: a unix socket, or a loopback literal or ``localhost``); any other target
without a CA (``--ca-file``, or the server's own certificate from ``server.tls`` / ``health.tls``) is refused
with a ConfigError before anything connects (exit 2).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.config import Settings, parse_listen
from bastion.errors import ConfigError
from bastion.urls import is_loopback_host
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
# gRPC's retry policy for the Inference calls of client commands: a call the server refused for load
# (RESOURCE_EXHAUSTED: a tenant's rate limit, a full server) is tried again after the delay the server sent
# (grpc-retry-pushback-ms), else after the backoff; never once its first response came. UNAVAILABLE is not
# retried: a failed connection or handshake is reported at once. Admin calls are not retried.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "bastion.v1.Inference"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "1s",
                    "maxBackoff": "10s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
)


def default_target(settings: Settings) -> str:
    """Where a local client reaches the configured listener (a wildcard bind means localhost)."""
    return local_target(settings.server.listen)


def default_health_target(settings: Settings) -> str:
    """Where a local client reaches the health listener; ConfigError when it is off."""
    if not settings.health.listen:
        raise ConfigError("health.listen is empty: the health listener is off (ask the main listener)")
    return local_target(settings.health.listen)


def local_target(listen: str) -> str:
    """The client target of a ``listen`` setting on this machine (a wildcard bind means localhost)."""
    kind, host, port = parse_listen(listen)
    if kind == "unix":
        return f"unix:{host}"
    host = _WILDCARDS.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _target_host(target: str) -> str | None:
    """The host of a ``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or bare IPv6 target; None for any other
    form (a gRPC naming scheme such as ``dns:``, ``ipv4:``, ``xds:``, or something malformed)."""
    if target.startswith("["):
        host, sep, rest = target[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdecimal())):
            return None
        return host
    try:
        ipaddress.IPv6Address(target)
        return target  # a bare IPv6 literal
    except ValueError:
        pass
    host, sep, port = target.partition(":")
    if sep and not port.isdecimal():
        return None
    return host or None


def is_local_target(target: str) -> bool:
    """Whether a gRPC client target stays on this machine: ``unix:PATH``, ``unix://ABS_PATH``,
    ``unix-abstract:NAME``, or a loopback host (an address in 127.0.0.0/8, ``::1``, the exact name
    ``localhost``: :func:`bastion.urls.is_loopback_host`) with or without a port. Everything else is not —
    other names (``localhost.evil.com``), numeric shorthands (``127.1``), the wildcards and every other gRPC
    naming scheme (``dns:///localhost:1``, ``ipv4:127.0.0.1:1``): they fail closed to "needs TLS"."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = _target_host(target)
    return host is not None and is_loopback_host(host)


def _refuse_plaintext(target: str, tls_setting: str) -> None:
    """ConfigError, before any channel exists, unless a channel without TLS to ``target`` stays on this host."""
    if not is_local_target(target):
        raise ConfigError(
            f"--target {target} is not a loopback address or a unix socket: refusing a connection without TLS "
            f"(it would send credentials and prompts in clear); pass --ca-file (with --client-cert/--client-key "
            f"for mutual TLS) or set {tls_setting} in --config"
        )


class _Bearer:
    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: Any) -> Any:
        md = grpc.aio.Metadata(*(list(d.metadata or ()) + [self._md]))
        return grpc.aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)


class _BearerUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return await continuation(self._details(d), request)


class _BearerStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], d: Any, request: Any) -> Any:
        return await continuation(self._details(d), request)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <token>`` (API key or JWT) to every unary and
    server-streaming call. One object per kind: grpc.aio files an interceptor under one kind only."""
    return [_BearerUnary(token), _BearerStream(token)]


def bearer_from(api_key_file: str | None, token_file: str | None) -> str | None:
    """The bearer credential: --api-key-file, --token-file, then $BASTION_API_KEY; None when none is given."""
    for path in (api_key_file, token_file):
        if path:
            text = Path(path).read_text(encoding="ascii").strip()
            if not text:
                raise OSError(0, "empty credential file", path)
            return text
    return os.environ.get("BASTION_API_KEY") or None


def resolve_client_files(
    *,
    ca_file: str | None,
    client_cert: str | None,
    client_key: str | None,
    settings: Settings,
    dev: dict[str, Path] | None,
) -> dict[str, str | None]:
    """The CA and the client certificate a client command uses, each on its own: the option, else (the CA)
    the server's certificate from ``server.tls``, else the development profile's file (``dev``, or None).
    ConfigError when only one of ``--client-cert`` and ``--client-key`` is given."""
    if (client_cert is None) != (client_key is None):
        raise ConfigError("--client-cert and --client-key go together: give both or neither")
    tls = settings.server.tls
    ca = ca_file or (str(tls.cert_file) if tls.enabled and tls.cert_file else None)
    if ca is None and dev is not None:
        ca = str(dev["ca"])
    if client_cert is None and dev is not None:
        client_cert, client_key = str(dev["client_cert"]), str(dev["client_key"])
    return {"ca_file": ca, "client_cert": client_cert, "client_key": client_key}


def open_channel(
    target: str,
    settings: Settings,
    *,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    server_name: str | None = None,
    bearer: str | None = None,
) -> grpc.aio.Channel:
    """TLS when a CA is given or the server config has TLS (its own certificate then serves as CA); without
    either, only to a local target (:func:`is_local_target`; ConfigError otherwise, before connecting).
    ``bearer`` (an API key or a JWT) is sent as ``authorization`` metadata on every call."""
    tls = settings.server.tls
    ca = ca_file or (str(tls.cert_file) if tls.enabled and tls.cert_file else None)
    interceptors = bearer_interceptors(bearer) if bearer else None
    options: list[tuple[str, Any]] = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
    if ca is None:
        _refuse_plaintext(target, "server.tls")
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    chain = key = None
    if client_cert and client_key:
        chain, key = Path(client_cert).read_bytes(), Path(client_key).read_bytes()
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(), private_key=key, certificate_chain=chain
    )
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)


def open_health_channel(
    target: str, settings: Settings, *, ca_file: str | None = None, server_name: str | None = None
) -> grpc.aio.Channel:
    """A channel to the health listener: no client certificate and no bearer credential; TLS when a CA is
    given or health.tls is set (its own certificate then serves as CA); without either, only to a local
    target (a remote answer without TLS could be anyone's)."""
    tls = settings.health.tls
    ca = ca_file or (str(tls.cert_file) if tls.enabled and tls.cert_file else None)
    if ca is None:
        _refuse_plaintext(target, "health.tls")
        return grpc.aio.insecure_channel(target)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    creds = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
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


async def health(channel: grpc.aio.Channel, timeout: float, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False)
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return name
