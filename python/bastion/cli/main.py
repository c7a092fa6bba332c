"""``bastion`` command line (``bastion --version``): serve, generate, health, models fetch-default; config
check/print (``bastion.cli.configuration``); sealed models: keys create,
seal, verify, inspect, rekey (``bastion.cli.weights``); api-keys issue/revoke/list (``bastion.cli.apikeys``);
audit verify/keygen (``bastion.cli.audit``); admin (``bastion.cli.admin``); audit-isolation
(``bastion.cli.isolation``); eval (``bastion.cli.evaluate``); the Ray cluster's nodes, token and CA
(``bastion.cli.cluster``).

Exit codes and error messages come from one table, ``bastion.cli.errors``: 0 success; 1 a failed check,
call or server start; 2 bad usage or configuration; 130 interrupted. Errors are one line on stderr
(``error: ...``), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
from collections.abc import Sequence
from typing import Any

from bastion.cli import admin as admin_cli
from bastion.cli import apikeys as apikeys_cli
from bastion.cli import audit as audit_cli
from bastion.cli import cluster as cluster_cli
from bastion.cli import configuration as config_cli
from bastion.cli import errors as cli_errors
from bastion.cli import evaluate as evaluate_cli
from bastion.cli import isolation as isolation_cli
from bastion.cli import tenants as tenants_cli
from bastion.cli import weights as weights_cli
from bastion.config import Settings, load_settings


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bastion")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bastion", description="Hardened self-hosted LLM inference server (gRPC).")
    p.add_argument("--version", action="version", version=f"bastion {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the gRPC server")
    s.add_argument("--config", help="TOML config file (default: $BASTION_CONFIG)")
    s.add_argument("--listen", help="HOST:PORT or unix:PATH (non-loopback TCP needs TLS)")
    s.add_argument("--model", help='"default" or a model directory')
    s.add_argument("--device", choices=("auto", "cpu", "cuda"))
    s.add_argument(
        "--health-listen",
        metavar="ADDR",
        help='the health listener (grpc.health.v1 only, no credentials): HOST:PORT or unix:PATH; "" turns it off',
    )
    s.add_argument(
        "--http-listen",
        metavar="ADDR",
        help='the OpenAI-compatible HTTP API: HOST:PORT (non-loopback needs http.tls); "" turns it off',
    )
    s.add_argument(
        "--dev",
        action="store_true",
        help="local development profile: create (once) a CA, server and client certificates, an API "
        "key and a tenancy policy under ~/.config/bastion/dev, and serve with mutual TLS",
    )

    def client_args(c: argparse.ArgumentParser) -> None:
        c.add_argument("--config", help="TOML config file; the default target is its server.listen")
        c.add_argument("--target", help="HOST:PORT or unix:PATH")
        c.add_argument("--ca-file", help="CA bundle to verify the server (TLS)")
        c.add_argument("--client-cert", help="client certificate for mutual TLS")
        c.add_argument("--client-key", help="client key for mutual TLS")
        c.add_argument("--server-name", help="expected server certificate name, when it differs from the target")
        c.add_argument("--api-key-file", help="file holding an API key (or set BASTION_API_KEY)")
        c.add_argument("--token-file", help="file holding an OIDC/JWT bearer token")

    g = sub.add_parser("generate", help="stream a completion to stdout")
    client_args(g)
    g.add_argument("--model", help="served model name (default: the first listed)")
    g.add_argument("--max-tokens", type=int)
    g.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature (default 0: greedy, the same answer every time)",
    )
    g.add_argument("--system", help="system message (chat mode)")
    g.add_argument("--raw", action="store_true", help="send PROMPT as raw text, without the chat template")
    g.add_argument("prompt", metavar="PROMPT")

    h = sub.add_parser("health", help="print SERVING or NOT_SERVING (exit 0 or 1)")
    client_args(h)
    h.add_argument("--timeout", type=float, default=5.0)
    h.add_argument(
        "--service",
        default="",
        help='the health service: "" (overall), "readiness" or "liveness" (for probes; README "Health")',
    )
    h.add_argument(
        "--health-listener",
        action="store_true",
        help="ask the health listener ([health] listen; --target overrides) without credentials, not the main one",
    )

    m = sub.add_parser("models", help="model management")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    f = msub.add_parser(
        "fetch-default", help="fetch, convert and seal the default model; prints the converted directory"
    )
    f.add_argument("--config", help="TOML config file")
    f.add_argument("--sealed", action="store_true", help="print the sealed directory (what serve uses) instead")

    weights_cli.add_parsers(sub)
    apikeys_cli.add_parsers(sub)
    audit_cli.add_parsers(sub)
    tenants_cli.add_parsers(sub)
    admin_cli.add_parsers(sub, client_args)
    isolation_cli.add_parsers(sub, client_args)
    evaluate_cli.add_parsers(sub, client_args)
    cluster_cli.add_parsers(sub)
    config_cli.add_parsers(sub)
    return p


def _serve_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides.setdefault("server", {})["listen"] = args.listen
    if args.health_listen is not None:
        overrides.setdefault("health", {})["listen"] = args.health_listen
    if args.http_listen is not None:
        overrides.setdefault("http", {})["listen"] = args.http_listen
    if args.model:
        overrides.setdefault("model", {})["source"] = args.model
    if args.device:
        overrides.setdefault("model", {})["device"] = args.device
    return overrides


def _cmd_serve(args: argparse.Namespace) -> int:
    overrides = _serve_overrides(args)
    if args.dev:
        from bastion.cli.devprofile import ensure_profile, profile_dir, remember_listen, server_overrides
        from bastion.config import deep_merge

        overrides = deep_merge(server_overrides(ensure_profile()), overrides)
        print(f"bastion: development profile in {profile_dir()} (mutual TLS, API key, tenant dev)", file=sys.stderr)
    settings = load_settings(args.config, overrides)
    if args.dev:
        remember_listen(settings.server.listen)  # client commands then use the profile for this target
    if settings.cluster.replicas > 0:
        return _serve_replicas(settings)
    try:
        from bastion.engine.factory import build_pool  # heavy (vllm); only the serve command needs it
    except ImportError as exc:
        print(f"bastion: the inference engine is not installed ({exc.name or exc})", file=sys.stderr)
        return 1
    from bastion.server.app import run_server

    return run_server(settings, functools.partial(build_pool, settings))


def _serve_replicas(settings: Settings) -> int:
    """``[cluster] replicas`` > 0: the engine runs in Serve replicas on the cluster (bastion.cluster.pool), never
    silently in this process."""
    from bastion.cluster.pool import replica_pool_factory
    from bastion.cluster.spec import ReplicaSpec
    from bastion.models.resolve import served_name
    from bastion.server.app import run_server

    spec = ReplicaSpec(engine="vllm", model=served_name(settings), config_file=settings.cluster.replica_config_file)
    return run_server(settings, replica_pool_factory(settings, spec))


def _channel(args: argparse.Namespace, settings: Settings) -> Any:
    from bastion.cli import client
    from bastion.cli.devprofile import profile_for

    target = args.target or client.default_target(settings)
    # Each option resolves on its own, whichever others are given: the flag, else the config, else the
    # development profile's file, for the target `serve --dev` listens on (however it was named).
    dev = profile_for(target)
    options = client.resolve_client_files(
        ca_file=args.ca_file, client_cert=args.client_cert, client_key=args.client_key, settings=settings, dev=dev
    )
    return client.open_channel(
        target,
        settings,
        **options,
        server_name=args.server_name,
        bearer=client.bearer_from(args.api_key_file, args.token_file),
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    import grpc

    from bastion.cli import client

    settings = load_settings(args.config)

    async def go() -> int:
        channel = _channel(args, settings)
        try:
            await client.generate(
                channel,
                prompt=args.prompt,
                model=args.model,
                max_tokens=args.max_tokens,
                temperature=args.temperature,
                system=args.system,
                raw=args.raw,
            )
            return 0
        except grpc.aio.AioRpcError as exc:
            print(file=sys.stderr)  # ends the partial completion's line
            return cli_errors.report(exc)
        finally:
            await channel.close()

    return asyncio.run(go())


def _cmd_health(args: argparse.Namespace) -> int:
    import grpc

    from bastion.cli import client

    settings = load_settings(args.config)

    async def go() -> int:
        if args.health_listener:
            target = args.target or client.default_health_target(settings)
            channel = client.open_health_channel(target, settings, ca_file=args.ca_file, server_name=args.server_name)
        else:
            target = args.target or client.default_target(settings)
            channel = _channel(args, settings)
        try:
            status = await client.health(channel, args.timeout, args.service)
        except grpc.aio.AioRpcError as exc:
            # No answer is not an answer: a failed connection is reported as one, never as a status.
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                print(f"error: no answer from {target} ({exc.code().name}: {exc.details()})", file=sys.stderr)
                return cli_errors.FAILED
            return cli_errors.report(exc)
        finally:
            await channel.close()
        print(status)
        return 0 if status == "SERVING" else 1

    return asyncio.run(go())


def _cmd_models(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    from bastion.models.default import ensure_default_model
    from bastion.models.resolve import ensure_default_sealed

    sealed = ensure_default_sealed(settings.cache_dir)
    print(sealed.path if args.sealed else ensure_default_model(settings.cache_dir).path)
    return 0


_COMMANDS = {
    "serve": _cmd_serve,
    "generate": _cmd_generate,
    "health": _cmd_health,
    "models": _cmd_models,
    **weights_cli.COMMANDS,
    **apikeys_cli.COMMANDS,
    **audit_cli.COMMANDS,
    **tenants_cli.COMMANDS,
    **admin_cli.commands(_channel),
    **isolation_cli.commands(_channel),
    **evaluate_cli.commands(_channel),
    **cluster_cli.COMMANDS,
    **config_cli.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except cli_errors.HANDLED as exc:  # e.g. an unreadable certificate file given to a client command (OSError)
        return cli_errors.report(exc)


if __name__ == "__main__":
    sys.exit(main())
