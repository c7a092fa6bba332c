"""``bastion api-keys issue``, ``revoke``, ``list``: the API key store (``auth.api_keys.file``).

``issue`` prints the new key once (it is stored only as a SHA-256 hash) and its id; the tenancy policy
names the key as the principal ``apikey:<key_id>``. ``revoke`` takes effect on a running server's next
call (it re-reads the store). ``list`` prints ids, principals and dates, never hashes.
Exit codes (``bastion.cli.errors``): 0 success; 2 bad usage or an unusable store file; 1 anything else
(an unknown key id). Errors are one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError, NotFound

_DURATION_RE = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_EXPIRY = dt.timedelta(days=3660)


def parse_duration(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s`` → timedelta (at most about ten years)."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m is None:
        raise ConfigError("--expires-in: a positive number followed by s, m, h or d (e.g. 30d)")
    d = dt.timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])
    if d > MAX_EXPIRY:
        raise ConfigError(f"--expires-in: at most {MAX_EXPIRY.days}d")
    return d


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("api-keys", help="API keys for bearer authentication (auth.api_keys.file)")
    asub = a.add_subparsers(dest="api_keys_command", required=True, metavar="SUBCOMMAND")
    i = asub.add_parser("issue", help="create a key; prints it once (the store keeps only its hash)")
    i.add_argument("--store", required=True, metavar="FILE", help="the API key store (created 0600 if missing)")
    i.add_argument(
        "--principal",
        required=True,
        metavar="NAME",
        help="a label for the key's holder; the tenancy policy names the key as apikey:<key_id>",
    )
    i.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d, 12h, 90m (default: no expiry)")
    i.add_argument("--description", default="", metavar="TEXT")
    r = asub.add_parser("revoke", help="revoke a key by id (a running server refuses it on the next call)")
    r.add_argument("--store", required=True, metavar="FILE")
    r.add_argument("key_id", metavar="KEY_ID")
    ls = asub.add_parser("list", help="list key ids, principals and dates (never hashes or keys)")
    ls.add_argument("--store", required=True, metavar="FILE")
    ls.add_argument("--json", action="store_true", help="one JSON array")


def _cmd_issue(args: argparse.Namespace) -> int:
    from bastion.auth.api_keys import issue
    from bastion.auth.principal import api_key_principal_id

    expires = parse_duration(args.expires_in) if args.expires_in else None
    key_id, key = issue(Path(args.store), args.principal, expires, args.description)
    print(f"key id: {key_id}\nprincipal id: {api_key_principal_id(key_id)}\nkey: {key}")
    print("the key is shown only this once; store it as a secret", file=sys.stderr)
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from bastion.auth.api_keys import KEY_ID_RE, revoke

    if not KEY_ID_RE.fullmatch(args.key_id):
        raise ConfigError("KEY_ID: 12 characters of [a-z2-7] (see bastion api-keys list)")
    store = Path(args.store)
    if not store.is_file():
        raise ConfigError(f"no API key store at {store}")
    try:
        revoke(store, args.key_id)
    except KeyError:
        raise NotFound(f"no key {args.key_id} in {store}") from None
    print(f"revoked {args.key_id}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from bastion.auth.api_keys import list_keys

    store = Path(args.store)
    if not store.is_file():
        raise ConfigError(f"no API key store at {store}")
    rows = [
        {
            "key_id": r.key_id,
            "principal": r.principal,
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "revoked_at": r.revoked_at,
            "description": r.description,
        }
        for r in list_keys(store)
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        state = (
            f"revoked {row['revoked_at']}"
            if row["revoked_at"]
            else (f"expires {row['expires_at']}" if row["expires_at"] else "no expiry")
        )
        print(f"{row['key_id']}  {row['principal']!r}  created {row['created_at']}  {state}  {row['description']!r}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "issue": _cmd_issue,
    "revoke": _cmd_revoke,
    "list": _cmd_list,
}


def _run(args: argparse.Namespace) -> int:
    """Runs one ``api-keys`` subcommand; errors propagate to bastion.cli.main's table (bastion.cli.errors)."""
    return _HANDLERS[args.api_keys_command](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"api-keys": _run}
