"""``bastion config``: check a configuration before a deployment, and show what a server would run with.

``config check FILE`` loads FILE as ``bastion serve --config FILE`` does and runs the checks a start makes
before any engine loads: every field (an error names the field and the limit), an authentication method
configured, the tenancy policy and the API key store readable and valid, and every listener's TLS
certificate and key loadable (and the client CA). It prints ``OK: FILE`` and what it checked, exit 0; any
error is one line, exit 2 (``bastion.cli.errors``).

``config print [--config FILE]`` prints the effective settings — the defaults, the ``BASTION_*`` environment
and FILE, as a server would merge them — as JSON in ``Settings.redacted()`` form (no secret value, URLs
without their user information and query).
"""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path
from typing import Any

from bastion.config import Settings, TlsSettings, load_settings
from bastion.errors import ConfigError


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("config", help="check a configuration file; print the effective settings")
    csub = c.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    k = csub.add_parser("check", help="validate FILE as `bastion serve --config FILE` would before it starts")
    k.add_argument("file", metavar="FILE")
    p = csub.add_parser("print", help="print the effective settings as JSON, secrets redacted")
    p.add_argument("--config", help="TOML config file (default: $BASTION_CONFIG)")


def _check_tls(tls: TlsSettings, section: str) -> str | None:
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{section}.cert_file/key_file: cannot load them ({type(exc).__name__})") from None
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{section}.client_ca_file: cannot load it ({type(exc).__name__})") from None
        return f"{section}: certificate, key and client CA (mutual TLS)"
    return f"{section}: certificate and key"


def check(settings: Settings) -> list[str]:
    """What a start checks before the engine, in order; the lines of what was checked. ConfigError names the
    setting at fault."""
    from bastion.auth.api_keys import ApiKeyStore
    from bastion.server.security import check_auth_configured
    from bastion.tenancy.policy import TenancyPolicy

    done = ["settings: every field"]
    check_auth_configured(settings)
    assert settings.tenancy.policy_file is not None
    policy = TenancyPolicy.load(settings.tenancy.policy_file)
    done.append(f"tenancy.policy_file: {len(policy.tenants)} tenant(s)")
    if settings.auth.api_keys.file is not None:
        ApiKeyStore(settings.auth.api_keys.file)
        done.append("auth.api_keys.file: readable")
    for tls, section in (
        (settings.server.tls, "server.tls"),
        (settings.health.tls, "health.tls"),
        (settings.http.tls, "http.tls"),
    ):
        line = _check_tls(tls, section)
        if line:
            done.append(line)
    return done


def _cmd(args: argparse.Namespace) -> int:
    if args.config_command == "check":
        path = Path(args.file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        lines = check(load_settings(path))
        print(f"OK: {path}")
        for line in lines:
            print(f"  {line}")
        return 0
    print(json.dumps(load_settings(args.config).redacted(), indent=2, sort_keys=True))
    return 0


COMMANDS = {"config": _cmd}
