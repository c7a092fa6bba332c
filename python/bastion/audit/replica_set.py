"""Verifying a front door's log together with its replicas' node-local chains (issue 16, item 6).

A front door with Serve replicas keeps the chain of tenant requests; each replica keeps a small chain on its
node (``bastion.cluster.node_audit``: ``<node audit dir>/replicas/<replica id>/``, signed with the node's key)
and reported that chain's latest checkpoint when it joined, which the front door's ``replica_joined`` record
keeps (``replica_checkpoint`` = ``<log id>:<seq>:<hash>``). :func:`verify_set` checks:

* the front door's log, as ``bastion audit verify`` does;
* every chain under each node's ``replicas/`` with that node's public key;
* for every admitted join, that the chain it names is among them and still holds the checkpoint it reported
  (verified as that chain's witness): a node's chain cut back, rewritten or replaced after the replica
  joined is found, and so is an admitted replica whose chain is missing.

A chain that no join names (a replica refused, or never recorded) is verified but not required.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bastion.audit.files import Witness
from bastion.audit.records import iter_records
from bastion.audit.verifier import VerifyResult, verify, verify_with
from bastion.errors import IntegrityError

#: Where a node's replica chains are, under its audit directory (``bastion.cluster.node_audit``).
REPLICAS_DIR = "replicas"
#: A replica chain's checkpoint as a join report and the ``replica_joined`` record carry it.
CHECKPOINT = re.compile(r"([0-9a-f]{32}):([0-9]{1,19}):([0-9a-f]{64})")


def format_checkpoint(w: Witness) -> str:
    return f"{w.log_id}:{w.seq}:{w.hash}"


def parse_checkpoint(text: str) -> Witness | None:
    """The checkpoint ``text`` names, or None when it is not one."""
    m = CHECKPOINT.fullmatch(text)
    return Witness(log_id=m[1], seq=int(m[2]), hash=m[3]) if m else None


@dataclass(frozen=True)
class Chain:
    directory: Path
    result: VerifyResult


@dataclass
class SetResult:
    front: VerifyResult
    chains: list[Chain] = field(default_factory=list)
    joins_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.front.ok and not self.problems


@dataclass(frozen=True)
class Node:
    """A node's audit directory and the public key of its chains."""

    directory: Path
    public_key: Path


def verify_set(front_dir: Path, public_key: Path, witness_file: Path | None, nodes: list[Node]) -> SetResult:
    out = SetResult(front=verify(front_dir, public_key, witness_file))
    by_log: dict[str, tuple[Chain, Path]] = {}
    for node in nodes:
        root = node.directory / REPLICAS_DIR
        if not root.is_dir():
            out.problems.append(f"{node.directory}: no {REPLICAS_DIR}/ directory of replica chains")
            continue
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            chain = Chain(d, verify(d, node.public_key))
            out.chains.append(chain)
            if not chain.result.ok:
                out.problems.append(f"{d}: {chain.result.problem_line()}")
            elif chain.result.log_id is not None:
                by_log[chain.result.log_id] = (chain, node.public_key)
    if not out.front.ok:
        return out  # its records cannot be trusted to name the chains
    try:
        joins = [
            r
            for r in iter_records(front_dir, kinds=("decision",))
            if r.get("event") == "replica_joined" and r.get("decision") == "admitted"
        ]
    except IntegrityError as exc:
        out.problems.append(str(exc))
        return out
    for rec in joins:
        out.joins_checked += 1
        who = f"front door seq {rec['seq']}: replica {rec.get('replica', '?')}"
        w = parse_checkpoint(str(rec.get("replica_checkpoint", "")))
        if w is None:
            out.problems.append(f"{who} was admitted without a node-local chain checkpoint")
            continue
        found = by_log.get(w.log_id)
        if found is None:
            out.problems.append(f"{who}: its node-local chain (log {w.log_id}) is not among the nodes given")
            continue
        chain, key = found
        r = verify_with(chain.directory, key, w)
        if not r.ok:
            out.problems.append(
                f"{who}: its chain {chain.directory} no longer holds the checkpoint it joined with (seq {w.seq}): "
                f"{r.problem_line()}"
            )
    return out
