"""Test identities: an API key store, a tenancy policy and the client side (bearer metadata) for servers
under test. Real keys through the real store; nothing is mocked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bastion.auth.api_keys import issue
from bastion.auth.principal import api_key_principal_id
from bastion.cli.client import bearer_interceptors

# name → (tenant, roles); "mallory" has a key but no policy entry.
PEOPLE: dict[str, tuple[str | None, list[str]]] = {
    "alice": ("tenant-a", ["user", "admin"]),
    "bob": ("tenant-b", ["user"]),
    "carol": ("tenant-a", ["user"]),
    "mallory": (None, ["user"]),
    "erin": ("assurance", ["evaluator"]),  # bastion eval's principal
    "dave": ("tenant-c", ["user"]),  # a tenant whose KV reservation oversubscribes the pool (e2e/test_kv_budgets.py)
}
DEFAULT_TENANT = {
    "models": ["*"],
    "max_tokens_per_request": 4096,
    "max_concurrent_streams": 256,
    "requests_per_s": 10000.0,
    "request_burst": 10000,
    "tokens_per_min": 1 << 30,
    "token_burst": 1 << 30,
}


# The drift canaries of the e2e servers (in their [assurance.drift] table): fewer and shorter than the
# defaults, so the baseline each server takes at start costs the real engine seconds, not a minute. Servers
# that share a baseline (tests/e2e/test_assurance.py) must use the same set.
E2E_DRIFT_CANARIES = "canaries = 8\nchat_canaries = 4\ncanary_words = 48\n"


@dataclass
class Identity:
    dir: Path
    policy_file: Path
    api_key_store: Path
    keys: dict[str, str] = field(default_factory=dict)  # name → plaintext API key
    key_ids: dict[str, str] = field(default_factory=dict)
    principals: dict[str, str] = field(default_factory=dict)  # name → principal id
    # People beyond PEOPLE (make_identity's ``people``), same form; their tenants need a ``tenants`` entry.
    people: dict[str, tuple[str | None, list[str]]] = field(default_factory=dict)

    def settings(self, audit_dir: Path | None = None) -> dict[str, Any]:
        return {
            "auth": {"api_keys": {"file": str(self.api_key_store)}},
            "tenancy": {"policy_file": str(self.policy_file)},
            "audit": {"dir": str(audit_dir or self.dir / "audit"), "commit_max_delay_ms": 0.5},
            # The go-live gate is tested where it is the subject (tests/assurance, tests/e2e/test_assurance.py);
            # elsewhere models are released without an attestation.
            "assurance": {"require_attestation": False, "redteam": {"enabled": False}},
        }

    def toml(self, audit_dir: Path | None = None, assurance: str | None = None) -> str:
        """The [auth]/[tenancy]/[audit] tables and ``assurance`` (an [assurance] table; default: off)."""
        s = self.settings(audit_dir)
        return (
            f'[auth.api_keys]\nfile = "{s["auth"]["api_keys"]["file"]}"\n'
            f'[tenancy]\npolicy_file = "{s["tenancy"]["policy_file"]}"\n'
            f'[audit]\ndir = "{s["audit"]["dir"]}"\ncommit_max_delay_ms = 0.5\n'
            + (
                assurance
                if assurance is not None
                else f'[assurance]\nrequire_attestation = false\n[assurance.drift]\ndir = "{self.dir / "drift"}"\n'
                + E2E_DRIFT_CANARIES
                + "[assurance.redteam]\nenabled = false\n"
            )
        )

    def write_policy(
        self,
        tenants: dict[str, dict[str, Any]] | None = None,
        extra_principals: list[dict[str, Any]] | None = None,
        public_prefixes: dict[str, str] | None = None,
    ) -> None:
        lines: list[str] = []
        for name, (tenant, roles) in {**PEOPLE, **self.people}.items():
            if tenant is None:
                continue
            lines += [
                "[[principals]]",
                f"id = {json.dumps(self.principals[name])}",
                f'tenant = "{tenant}"',
                f"roles = {json.dumps(roles)}",
                "",
            ]
        for p in extra_principals or []:
            lines += [
                "[[principals]]",
                f"id = {json.dumps(p['id'])}",
                f'tenant = "{p["tenant"]}"',
                f"roles = {json.dumps(p.get('roles', ['user']))}",
                "",
            ]
        tenants = tenants or {}
        for t in sorted({"tenant-a", "tenant-b", "tenant-c", "assurance", *tenants}):
            lines.append(f'[tenants."{t}"]')
            for k, v in {**DEFAULT_TENANT, **tenants.get(t, {})}.items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        for name, text in (public_prefixes or {}).items():
            digest = hashlib.sha256(text.encode()).hexdigest()
            lines += [
                "[[public_prefixes]]",
                f'name = "{name}"',
                f"text = {json.dumps(text)}",
                f'sha256 = "{digest}"',
                "",
            ]
        self.policy_file.write_text("\n".join(lines))


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def make_identity(
    d: Path,
    tenants: dict[str, dict[str, Any]] | None = None,
    public_prefixes: dict[str, str] | None = None,
    people: dict[str, tuple[str | None, list[str]]] | None = None,
) -> Identity:
    """Keys and a policy for PEOPLE and ``people`` (more names, same form: name → (tenant, roles)); a tenant
    not among tenant-a, -b, -c and assurance is written only when ``tenants`` names it."""
    d.mkdir(parents=True, exist_ok=True)
    ident = Identity(d, d / "tenants.toml", d / "api-keys.json", people=dict(people or {}))
    for name in {**PEOPLE, **ident.people}:
        key_id, key = issue(ident.api_key_store, name)
        ident.keys[name], ident.key_ids[name] = key, key_id
        ident.principals[name] = api_key_principal_id(key_id)
    ident.write_policy(tenants, public_prefixes=public_prefixes)
    return ident


def bearer_channel(target: str, key: str) -> grpc.Channel:
    """A synchronous channel sending ``key`` as the bearer credential."""

    class _Sync(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
        def _d(self, d: Any) -> Any:
            md = list(d.metadata or ()) + [("authorization", f"Bearer {key}")]
            return d._replace(metadata=md) if hasattr(d, "_replace") else _Details(d, md)

        def intercept_unary_unary(self, cont: Any, d: Any, req: Any) -> Any:
            return cont(self._d(d), req)

        def intercept_unary_stream(self, cont: Any, d: Any, req: Any) -> Any:
            return cont(self._d(d), req)

    return grpc.intercept_channel(grpc.insecure_channel(target), _Sync())


class _Details(grpc.ClientCallDetails):
    def __init__(self, d: Any, md: list[tuple[str, str]]) -> None:
        self.method, self.timeout, self.metadata = d.method, d.timeout, md
        self.credentials, self.wait_for_ready = d.credentials, d.wait_for_ready
        self.compression = getattr(d, "compression", None)


def aio_bearer(key: str) -> list[grpc.aio.ClientInterceptor]:
    return bearer_interceptors(key)


def make_many_tenants(d: Path, n: int, tenant: dict[str, Any] | None = None) -> tuple[Path, Path, list[str]]:
    """n tenants ``t0..t{n-1}``, one API key each; returns (store, policy file, keys in tenant order)."""
    d.mkdir(parents=True, exist_ok=True)
    store, policy = d / "api-keys.json", d / "tenants.toml"
    keys: list[str] = []
    lines: list[str] = []
    for i in range(n):
        key_id, key = issue(store, f"load-{i}")
        keys.append(key)
        lines += ["[[principals]]", f"id = {json.dumps(api_key_principal_id(key_id))}", f'tenant = "t{i}"', ""]
    for i in range(n):
        lines.append(f'[tenants."t{i}"]')
        lines += [f"{k} = {json.dumps(v)}" for k, v in {**DEFAULT_TENANT, **(tenant or {})}.items()]
        lines.append("")
    policy.write_text("\n".join(lines))
    return store, policy, keys
