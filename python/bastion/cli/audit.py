"""``bastion audit verify``, ``keygen`` and ``resume``: the audit-log commands.

Exit codes (``bastion.cli.errors``): 0 the log verifies; 1 a problem was found (one line naming segment, line
and seq); 2 bad usage or an unusable file (missing or insecure key, unreadable directory). Errors never print
key material or a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError


def add_parsers(sub: Any) -> None:
    a = sub.add_parser("audit", help="the tamper-evident audit log: verify it, create its keys")
    asub = a.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    v = asub.add_parser("verify", help="check every record, chain link and checkpoint signature of a log directory")
    v.add_argument("dir", metavar="DIR", help="the audit log directory (audit-NNNNNNNN.jsonl segments)")
    v.add_argument("--public-key", required=True, metavar="FILE", help="the checkpoint public key (ed25519:<hex>)")
    v.add_argument(
        "--witness",
        metavar="FILE",
        help="the witness file the server keeps (witness.json): also detects records cut off after that checkpoint",
    )
    v.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="DIR[,PUBKEY]",
        help="a replica node's audit directory (its replicas/ chains; public key DIR/keys/signing.pub unless "
        "given): also verify those chains and that each replica DIR's log admitted still holds the checkpoint it "
        "joined with (repeatable; docs/cluster.md)",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    r = asub.add_parser(
        "resume",
        help="the operator's override when the server refuses to continue its audit log (witness missing or "
        "not matching, unsigned records): verifies the whole log, sets unsigned records aside, and records the "
        "reset (with the reason) in the log itself",
    )
    r.add_argument("--config", metavar="FILE", help="the server's TOML config (default: $BASTION_CONFIG)")
    r.add_argument("--reason", required=True, help="why (recorded in the log's start record; 1-1024 characters)")
    k = asub.add_parser("keygen", help="create signing.pk8 (0600), signing.pub and content.key (0600) in DIR")
    k.add_argument(
        "dir", metavar="DIR", help="directory for the keys (created 0700; existing keys are never overwritten)"
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    from bastion.audit.verifier import verify

    directory = Path(args.dir)
    if not directory.is_dir():
        raise ConfigError(f"not a directory: {directory}")
    if args.node:
        return _verify_set(args, directory)
    r = verify(directory, Path(args.public_key), Path(args.witness) if args.witness else None)
    if args.json:
        d = dataclasses.asdict(r)
        d["ok"] = r.ok
        print(json.dumps(d, sort_keys=True))
    else:
        head = "OK" if r.ok else "FAILED"
        print(
            f"{head} {directory}: {r.records} records verified in {len(r.segments)} segments; log {r.log_id}; "
            f"last seq {r.last_seq}; last checkpoint seq {r.last_checkpoint}"
        )
        if r.witness is not None and r.ok:
            print(f"witness: checkpoint seq {r.witness.seq} is present and matches")
        if r.ok and r.unsigned_tail:
            print(
                f"warning: {r.unsigned_tail} records after the last checkpoint are not signed yet; "
                + (
                    "they are covered by the chain only"
                    if r.witness
                    else "without --witness a truncation of them is not detectable"
                )
            )
    if not r.ok:
        print(f"bastion audit verify: {r.problem_line()}", file=sys.stderr)
        return 1
    return 0


def _verify_set(args: argparse.Namespace, directory: Path) -> int:
    from bastion.audit.replica_set import Node, verify_set
    from bastion.audit.settings import PUBLIC_KEY_NAME

    nodes = []
    for value in args.node:
        node_dir, _, key = str(value).partition(",")
        if not Path(node_dir).is_dir():
            raise ConfigError(f"--node: not a directory: {node_dir}")
        nodes.append(Node(Path(node_dir), Path(key) if key else Path(node_dir) / "keys" / PUBLIC_KEY_NAME))
    s = verify_set(directory, Path(args.public_key), Path(args.witness) if args.witness else None, nodes)
    if args.json:
        d = {
            "ok": s.ok,
            "front": {**dataclasses.asdict(s.front), "ok": s.front.ok},
            "chains": [{"dir": str(c.directory), "ok": c.result.ok, "log_id": c.result.log_id} for c in s.chains],
            "joins_checked": s.joins_checked,
            "problems": s.problems,
        }
        print(json.dumps(d, sort_keys=True, default=str))
    else:
        f = s.front
        print(f"{'OK' if f.ok else 'FAILED'} {directory}: {f.records} records verified; log {f.log_id}")
        for c in s.chains:
            r = c.result
            print(f"{'OK' if r.ok else 'FAILED'} {c.directory}: {r.records} records; log {r.log_id}")
        print(f"{s.joins_checked} admitted replica joins checked against their node-local chains")
    if not s.front.ok:
        print(f"bastion audit verify: {s.front.problem_line()}", file=sys.stderr)
    for p in s.problems:
        print(f"bastion audit verify: {p}", file=sys.stderr)
    return 0 if s.ok else 1


def _cmd_keygen(args: argparse.Namespace) -> int:
    from bastion.audit.keys import keygen

    key_id, signing, public, content = keygen(Path(args.dir))
    print(
        f"created {signing} and {content} (mode 0600; keep them secret) and {public} (give this to verifiers); "
        f"key id {key_id}"
    )
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from bastion.audit.log import AuditLog
    from bastion.config import load_settings

    reason = args.reason.strip()
    if not 1 <= len(reason) <= 1024 or not reason.isprintable():
        raise ConfigError("--reason: 1 to 1024 printable characters")
    settings = load_settings(args.config)
    log = AuditLog.open(settings.audit, settings.cache_dir, reset_reason=reason)
    log.close()
    print(
        f"audit log {log.directory} continues (log {log.log_id}); the reset and its reason are in its start "
        f"record; the witness {log.witness_path} names the new checkpoint"
    )
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "verify": _cmd_verify,
    "keygen": _cmd_keygen,
    "resume": _cmd_resume,
}


def _run(args: argparse.Namespace) -> int:
    """Runs one ``audit`` subcommand; errors propagate to bastion.cli.main's table (bastion.cli.errors)."""
    return _HANDLERS[args.audit_command](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"audit": _run}
