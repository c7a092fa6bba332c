#!/usr/bin/env python3
"""bastion with its security layer replaced by a pass-through: the "security off" side of serve_bench.

Every call is accepted as one anonymous principal in one unlimited tenant, and audit records are dropped
instead of written and fsynced. Plaintext, loopback only. This exists only to measure what
authentication, tenancy, rate limiting and the audit log cost; the ``bastion`` CLI has no such mode.

    python benchmarks/open_server.py --config FILE      # same TOML as `bastion serve --config FILE`
    python benchmarks/open_server.py --config FILE --engine fake   # over testkit's FakeEngine (security_bench)
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.auth.principal import Principal
from bastion.config import Settings, is_loopback, load_settings, parse_listen
from bastion.server.audit_recorder import AuditRecorder
from bastion.server.gate import SecurityGate
from bastion.server.interceptor import AuthInterceptor
from bastion.server.security import Security, partition_keys
from bastion.tenancy.guard import TenantGuard
from bastion.tenancy.policy import TenancyPolicy

ANONYMOUS = Principal(id="bench:anonymous", method="api_key", subject="anonymous")
OPEN_POLICY = b"""
[[principals]]
id = "bench:anonymous"
tenant = "open"
[tenants.open]
models = ["*"]
max_tokens_per_request = 1048576
max_concurrent_streams = 65536
requests_per_s = 1000000.0
request_burst = 1000000
tokens_per_min = 1099511627776
token_burst = 1099511627776
"""


class _Anyone:
    async def authenticate(self, metadata: Any, auth_context: Any) -> Principal:
        return ANONYMOUS


class _NoAudit:
    def __init__(self, directory: Path) -> None:
        # An empty log directory: no record, so no quarantine for the server to re-derive at start.
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory

    async def append(self, kind: str, fields: dict[str, Any]) -> int:
        return 0

    def content_hmac(self, tenant: str, text: str) -> str:
        return ""

    @property
    def accepting(self) -> bool:  # no log, no disk to run out of
        return True

    async def aclose(self) -> None:
        return None


def open_security(settings: Settings, on_failure: Callable[[], None], sink: Any = None) -> Security:
    guard = TenantGuard(TenancyPolicy.parse(OPEN_POLICY))
    audit = _NoAudit(settings.cache_dir / "open-server-no-audit")
    recorder = AuditRecorder(audit)
    gate = SecurityGate(_Anyone(), guard, recorder, public_health=True)
    # Tenant isolation stays on, exactly as with security on: requests carry a partition tag and the engine
    # process contract names the same partition key file, so the EngineCore runs the keyed block hasher and the
    # tenant scheduler. serve_bench's "security off" then measures authentication, tenancy and audit alone.
    return Security(audit, guard, recorder, gate, AuthInterceptor(gate), partition_keys(settings))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--engine", choices=("vllm", "fake"), default="vllm", help="fake: testkit's FakeEngine")
    args = p.parse_args()
    settings = load_settings(args.config)
    kind, host, _ = parse_listen(settings.server.listen)
    if kind == "tcp" and not is_loopback(host):
        print("open_server: loopback or unix socket only", file=sys.stderr)
        return 2
    if args.engine == "fake":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: testkit/
        from testkit.fake_server import serve_fake

        return serve_fake(settings, security_factory=open_security)
    from bastion.engine.factory import build_pool
    from bastion.observability.logs import setup_logging
    from bastion.server import event_loop
    from bastion.server.app import serve

    setup_logging(settings.observability.log_level)
    return event_loop.run(
        serve(settings, functools.partial(build_pool, settings), security_factory=open_security),
        settings.server.event_loop,
    )


if __name__ == "__main__":
    sys.exit(main())
