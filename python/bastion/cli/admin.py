"""``bastion admin``: the Admin service from the command line (needs a principal with the admin role).

``admin tenants`` lists tenants with limits and usage, ``admin reload-policy`` re-reads the tenancy
policy and API key store, ``admin revoke-key KEY_ID`` revokes an API key, ``admin models`` shows model
status and release, ``admin reload-attestations`` re-reads the security attestations, ``admin check-drift``
runs a drift check now, ``admin lift-quarantine MODEL --reason TEXT`` ends a model's quarantine (audited
with the reason; the only way to end one), ``admin reset-drift-baseline MODEL --reason TEXT`` takes a new
drift baseline on the served weights (audited with the reason; the way out of a drift integrity alarm). Output is JSON. Exit 1 when the call fails (``error: STATUS:
message`` on stderr, through ``bastion.cli.errors``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

from google.protobuf.json_format import MessageToDict

from bastion.config import load_settings


def add_parsers(sub: Any, client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser("admin", help="administration calls (tenants, policy reload, key revocation, models)")
    asub = a.add_subparsers(dest="admin_command", required=True, metavar="SUBCOMMAND")
    for name, text in (
        ("tenants", "list tenants with their limits and usage"),
        ("reload-policy", "re-read the tenancy policy (the running one stays if the new one is bad)"),
        ("models", "served models with digest, state and release (attestation)"),
        ("reload-attestations", "re-read assurance.attestations_dir and re-decide which models are released"),
        ("check-drift", "run a log-prob drift check now against the go-live baseline"),
    ):
        client_args(asub.add_parser(name, help=text))
    r = asub.add_parser("revoke-key", help="revoke an API key by id")
    client_args(r)
    r.add_argument("key_id", metavar="KEY_ID")
    q = asub.add_parser("lift-quarantine", help="end a model's quarantine (audited, with the reason)")
    client_args(q)
    q.add_argument("model", metavar="MODEL")
    q.add_argument("--reason", required=True, help="why it may be served again (recorded in the audit log)")
    d = asub.add_parser("reset-drift-baseline", help="take a new drift baseline now (audited, with the reason)")
    client_args(d)
    d.add_argument("model", metavar="MODEL")
    d.add_argument("--reason", required=True, help="why the baseline is reset (recorded in the audit log)")


def commands(channel_for: Callable[[argparse.Namespace, Any], Any]) -> dict[str, Callable[[argparse.Namespace], int]]:
    def run(args: argparse.Namespace) -> int:
        import grpc

        from bastion.cli.errors import report
        from bastion.v1 import admin_pb2 as apb
        from bastion.v1 import admin_pb2_grpc as apb_grpc

        settings = load_settings(args.config)

        async def go() -> int:
            channel = channel_for(args, settings)
            stub = apb_grpc.AdminStub(channel)
            calls = {
                "tenants": lambda: stub.ListTenants(apb.ListTenantsRequest(), timeout=10),
                "reload-policy": lambda: stub.ReloadPolicy(apb.ReloadPolicyRequest(), timeout=10),
                "models": lambda: stub.ModelStatus(apb.ModelStatusRequest(), timeout=10),
                "reload-attestations": lambda: stub.ReloadAttestations(apb.ReloadAttestationsRequest(), timeout=30),
                "check-drift": lambda: stub.CheckDrift(apb.CheckDriftRequest(), timeout=300),
                "revoke-key": lambda: stub.RevokeApiKey(apb.RevokeApiKeyRequest(key_id=args.key_id), timeout=10),
                "lift-quarantine": lambda: stub.LiftQuarantine(
                    apb.LiftQuarantineRequest(model=args.model, reason=args.reason), timeout=10
                ),
                "reset-drift-baseline": lambda: stub.ResetDriftBaseline(
                    apb.ResetDriftBaselineRequest(model=args.model, reason=args.reason), timeout=300
                ),
            }
            try:
                reply = await calls[args.admin_command]()
            except grpc.aio.AioRpcError as exc:
                return report(exc)
            finally:
                await channel.close()
            print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2, sort_keys=True))
            return 0

        return asyncio.run(go())

    return {"admin": run}
