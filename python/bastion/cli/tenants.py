"""``bastion tenants``: the tenancy policy from the command line.

``tenants check POLICY`` validates a policy file and prints its digest, tenants and principal count.
``tenants issue-key --policy POLICY --store STORE --tenant T [--role user|admin ...] [--expires-in 30d]``
issues an API key and adds its principal (``apikey:<key_id>``) to the tenant in the policy file, atomically
and under an exclusive ``flock`` on ``<policy>.lock`` (concurrent runs never lose each other's principal);
``tenants revoke-key --store STORE KEY_ID`` revokes it. A running server picks up a revocation on the next
call and a policy change on ``bastion admin reload-policy``.
Exit codes (``bastion.cli.errors``): 0 success; 1 an unknown key id; 2 bad usage or a bad policy file.
Errors are one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.files import atomic_write, exclusive_lock


def add_parsers(sub: Any) -> None:
    t = sub.add_parser("tenants", help="tenancy policy: check it, issue and revoke tenants' API keys")
    tsub = t.add_subparsers(dest="tenants_command", required=True, metavar="SUBCOMMAND")
    c = tsub.add_parser("check", help="validate a tenancy policy file")
    c.add_argument("policy", metavar="POLICY")
    i = tsub.add_parser("issue-key", help="issue an API key for a tenant and add it to the policy")
    i.add_argument("--policy", required=True, metavar="FILE")
    i.add_argument("--store", required=True, metavar="FILE", help="the API key store (auth.api_keys.file)")
    i.add_argument("--tenant", required=True)
    i.add_argument("--role", action="append", choices=("user", "admin"), help="repeatable (default: user)")
    i.add_argument("--label", help="the key's label (default: the tenant)")
    i.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d, 12h (default: no expiry)")
    r = tsub.add_parser("revoke-key", help="revoke a tenant's API key by id")
    r.add_argument("--store", required=True, metavar="FILE")
    r.add_argument("key_id", metavar="KEY_ID")


def _cmd(args: argparse.Namespace) -> int:
    from bastion.tenancy.policy import TenancyPolicy

    if args.tenants_command == "check":
        policy = TenancyPolicy.load(Path(args.policy))
        print(
            json.dumps(
                {"digest": policy.digest, "tenants": sorted(policy.tenants), "principals": policy.principal_count},
                indent=2,
            )
        )
        return 0
    if args.tenants_command == "revoke-key":
        from bastion.cli.apikeys import COMMANDS as api

        ns = argparse.Namespace(api_keys_command="revoke", store=args.store, key_id=args.key_id)
        return api["api-keys"](ns)
    return _issue_key(args)


def _issue_key(args: argparse.Namespace) -> int:
    from bastion.auth.api_keys import issue, revoke
    from bastion.auth.principal import api_key_principal_id
    from bastion.cli.apikeys import parse_duration
    from bastion.tenancy.policy import TenancyPolicy

    path = Path(args.policy)
    expires = parse_duration(args.expires_in) if args.expires_in else None
    roles = sorted(set(args.role or ["user"]))
    # Read, append and write the policy under its lock: two issue-key runs at once both end up in it (without
    # the lock, each read the same old policy and the later write dropped the other's principal).
    TenancyPolicy.load(path)  # a missing or malformed policy fails here, before a lock file is made beside it
    with exclusive_lock(path):
        old = path.read_bytes()
        policy = TenancyPolicy.parse(old)
        if args.tenant not in policy.tenants:
            raise ConfigError(f"--tenant: the policy has no [tenants.{args.tenant}] section")
        key_id, key = issue(Path(args.store), args.label or args.tenant, expires, f"tenant {args.tenant}")
        principal_id = api_key_principal_id(key_id)
        block = (
            f"\n[[principals]]\nid = {json.dumps(principal_id)}\ntenant = {json.dumps(args.tenant)}\n"
            f"roles = {json.dumps(roles)}\n"
        )
        new = old + block.encode()
        try:
            TenancyPolicy.parse(new, source=str(path))  # never write a policy the server would refuse
            atomic_write(path, new, mode=0o600)
        except BaseException:
            revoke(Path(args.store), key_id)  # no key without its policy entry
            raise
    print(f"key id: {key_id}\nprincipal id: {principal_id}\ntenant: {args.tenant}\nkey: {key}")
    print("the key is shown only this once; run `bastion admin reload-policy` on a running server", file=sys.stderr)
    return 0


COMMANDS = {"tenants": _cmd}
