"""``bastion cluster``: the locked-down Ray cluster (docs/cluster.md).

``start-head`` / ``start-worker --address HEAD`` start this machine's node from the ``[cluster]`` settings
(token auth, mutual TLS from the cluster CA, no dashboard, no client server, explicit ports, private temp
and spill directories) and refuse to start when the token file is missing or too open, a TLS file is
missing or does not fit, or a directory is not private; ``stop`` ends this node's processes (only those,
unlike ``ray stop``); ``token`` writes a new token file (0600; ``--rotate`` replaces one); ``ca`` and
``issue`` make a dedicated cluster CA and node certificates.

Exit codes (``bastion.cli.errors``): 0 success; 1 Ray failed to start; 2 a refusal (a setting or file that
is missing, insecure or does not fit) or bad usage. Errors are one line naming the setting or file; the
token is never printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError


def add_parsers(sub: Any) -> None:
    c = sub.add_parser("cluster", help="the locked-down Ray cluster: start and stop nodes, its token and CA")
    csub = c.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")

    def config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", metavar="FILE", help="TOML config with a [cluster] section (default: $BASTION_CONFIG)"
        )

    h = csub.add_parser("start-head", help="start this machine's node as the cluster's head")
    config(h)
    w = csub.add_parser("start-worker", help="start this machine's node and join the head at --address")
    config(w)
    w.add_argument("--address", metavar="HOST:PORT", help="the head's GCS address (default: cluster.head_address)")
    for p in (h, w):
        p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for `ray start` (default 180)")
    s = csub.add_parser("stop", help="end this machine's node (its processes only; other Ray processes stay)")
    config(s)
    s.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    t = csub.add_parser("token", help="write a new cluster token file (0600; never printed)")
    config(t)
    t.add_argument("--file", metavar="PATH", help="where (default: cluster.token_file)")
    t.add_argument("--rotate", action="store_true", help="replace an existing token file (atomically)")
    a = csub.add_parser("ca", help="create a dedicated cluster CA in DIR (ca.pem, ca.key 0600; never overwrites)")
    a.add_argument("dir", metavar="DIR")
    a.add_argument("--days", type=int, default=365)
    i = csub.add_parser("issue", help="issue a node certificate NAME.pem and key NAME.key (0600) from the CA in DIR")
    i.add_argument("dir", metavar="DIR", help="the cluster CA directory (`bastion cluster ca`)")
    i.add_argument("name", metavar="NAME", help="the node's name (file names and certificate subject)")
    i.add_argument("--ip", action="append", required=True, help="an address the node is reached at (repeatable)")
    i.add_argument("--dns", action="append", default=[], help="a host name for the certificate (repeatable)")
    i.add_argument("--days", type=int, default=90)
    i.add_argument("--out", metavar="DIR", help="where to write the pair (default: DIR)")


def _settings(args: argparse.Namespace) -> Any:
    from bastion.config import load_settings

    return load_settings(args.config).cluster


def _start(args: argparse.Namespace, *, head: bool) -> int:
    from bastion.cluster.node import start_node

    settings = _settings(args)
    node = start_node(settings, head=head, head_address=getattr(args, "address", None), timeout_s=args.timeout)
    if node.dropped_env:
        print(f"bastion: not passed to Ray (secret or Ray's own): {', '.join(node.dropped_env)}", file=sys.stderr)
    role = "head" if head else "worker"
    print(
        f"cluster {role} node {settings.node_ip} started (token auth, mutual TLS, no dashboard, no client server); "
        f"cluster address {node.gcs_address}; Ray's files in {node.temp_dir}"
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    from bastion.cluster.node import stop_node

    settings = _settings(args)
    if settings.temp_dir is None:
        raise ConfigError("cluster.temp_dir is not set: it identifies this machine's node")
    n = stop_node(Path(settings.temp_dir).absolute(), grace_s=args.grace)
    print(f"stopped the node of {settings.temp_dir} ({n} processes)" if n else f"no node runs for {settings.temp_dir}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from bastion.cluster.token import write_token

    path = Path(args.file) if args.file else _settings(args).token_file
    if path is None:
        raise ConfigError("cluster.token_file is not set (or give --file)")
    write_token(path, rotate=args.rotate)
    print(f"{'replaced' if args.rotate else 'created'} the cluster token {path} (mode 0600); copy it to every node")
    return 0


def _cmd_ca(args: argparse.Namespace) -> int:
    from bastion.cluster.pki import create_ca

    files = create_ca(Path(args.dir), days=args.days)
    print(f"created the cluster CA {files.cert} and its key {files.key} (0600; keep it off the nodes)")
    return 0


def _cmd_issue(args: argparse.Namespace) -> int:
    from bastion.cluster.pki import issue

    files = issue(
        Path(args.dir),
        args.name,
        args.ip,
        dns_names=args.dns,
        days=args.days,
        out_dir=Path(args.out) if args.out else None,
    )
    print(f"issued {files.cert} and {files.key} (0600) for {', '.join(args.ip)}")
    return 0


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "start-head": lambda a: _start(a, head=True),
    "start-worker": lambda a: _start(a, head=False),
    "stop": _cmd_stop,
    "token": _cmd_token,
    "ca": _cmd_ca,
    "issue": _cmd_issue,
}


def _run(args: argparse.Namespace) -> int:
    """Runs one ``cluster`` subcommand; errors propagate to bastion.cli.main's table (bastion.cli.errors)."""
    return _HANDLERS[args.cluster_command](args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"cluster": _run}
