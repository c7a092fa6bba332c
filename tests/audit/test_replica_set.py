"""``bastion audit verify --node``: a front door's log and its replicas' node-local chains verified as one set
(bastion.audit.replica_set). The attacks: a node's chain cut back and re-signed with the node's own key after
its replica joined, a chain that goes missing, a join without a checkpoint, a flipped bit in a chain."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bastion.audit import AuditLog, AuditSettings
from bastion.audit.replica_set import Node, format_checkpoint, parse_checkpoint, verify_set
from bastion.cli.main import main
from bastion.cluster.node_audit import chain_settings

MODEL = "m"


def _front(tmp: Path) -> AuditLog:
    return AuditLog.open(AuditSettings(dir=tmp / "front", witness_file=tmp / "front-witness.json"), tmp)


def _chain(node_dir: Path, replica: str) -> AuditLog:
    settings = chain_settings(AuditSettings(dir=node_dir), node_dir.parent, replica)
    return AuditLog.open(settings, node_dir.parent)


def _loaded(chain: AuditLog, digest: str = "blake3:" + "ab" * 32) -> str:
    """The replica's model record, then its checkpoint as the join report carries it."""
    chain.append_sync(
        "decision", {"event": "model_loaded", "decision": "verified", "model": MODEL, "model_digest": digest}
    )
    w = chain.latest_checkpoint
    assert w is not None
    return format_checkpoint(w)


def _join(front: AuditLog, replica: str, checkpoint: str) -> None:
    fields = {"principal": "bastion:cluster", "event": "replica_joined", "decision": "admitted", "replica": replica}
    if checkpoint:
        fields["replica_checkpoint"] = checkpoint
    front.append_sync("decision", fields)


class World:
    """A front door that admitted two replicas, one on each of two nodes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes = [tmp / "node-a" / "audit", tmp / "node-b" / "audit"]
        self.front = _front(tmp)
        self.chains = {}
        for replica, node in zip(("r1", "r2"), self.nodes, strict=True):
            chain = _chain(node, replica)
            _join(self.front, replica, _loaded(chain))
            chain.append_sync("decision", {"event": "engine_died", "decision": "alert", "model": MODEL})
            self.chains[replica] = chain

    def close(self) -> None:
        self.front.close()
        for c in self.chains.values():
            c.close()

    def verify(self, nodes: list[Path] | None = None):  # type: ignore[no-untyped-def]
        given = self.nodes if nodes is None else nodes
        return verify_set(
            self.front.directory,
            self.front.directory / "keys" / "signing.pub",
            self.tmp / "front-witness.json",
            [Node(n, n / "keys" / "signing.pub") for n in given],
        )


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.close()
    return w


def test_the_intact_set_verifies(world: World) -> None:
    r = world.verify()
    assert r.ok, r.problems
    assert r.joins_checked == 2 and len(r.chains) == 2 and all(c.result.ok for c in r.chains)


def test_a_chain_cut_back_and_re_signed_with_the_nodes_key_after_the_join_is_found(world: World) -> None:
    # Whoever holds node b's disk and audit key rewrites its replica's model record: cut the chain back to
    # before it, roll its witness back, reopen it (the audited override) and record another digest. On its
    # own the chain verifies; against the checkpoint the front door kept at join it does not.
    chain_dir = world.nodes[1] / "replicas" / "r2"
    (segment,) = sorted(chain_dir.glob("audit-*.jsonl"))
    lines = segment.read_bytes().splitlines(keepends=True)
    cut = next(i for i, ln in enumerate(lines) if b"model_loaded" in ln)
    segment.write_bytes(b"".join(lines[:cut]))
    os.unlink(world.nodes[1] / "witness" / "r2.json")
    settings = chain_settings(AuditSettings(dir=world.nodes[1]), world.nodes[1].parent, "r2")
    forged = AuditLog.open(settings, world.nodes[1].parent, reset_reason="rewrite")
    _loaded(forged, digest="blake3:" + "66" * 32)
    forged.close()
    alone = world.verify()
    assert all(c.result.ok for c in alone.chains)  # each chain is internally sound
    assert not alone.ok
    (problem,) = alone.problems
    assert "replica r2" in problem and "no longer holds the checkpoint it joined with" in problem


def test_an_admitted_replicas_chain_that_is_missing_is_a_problem(world: World) -> None:
    r = world.verify(nodes=world.nodes[:1])
    assert not r.ok
    (problem,) = r.problems
    assert "replica r2" in problem and "is not among the nodes given" in problem


def test_a_join_without_a_checkpoint_is_a_problem(tmp_path: Path) -> None:
    w = World(tmp_path)
    _join(w.front, "r3", "")
    w.close()
    r = w.verify()
    assert [p for p in r.problems if "replica r3 was admitted without a node-local chain checkpoint" in p]


def test_a_flipped_bit_in_a_chain_is_named(world: World) -> None:
    (segment,) = sorted((world.nodes[0] / "replicas" / "r1").glob("audit-*.jsonl"))
    data = bytearray(segment.read_bytes())
    data[data.index(b"model_loaded")] ^= 0x01
    segment.write_bytes(bytes(data))
    r = world.verify()
    assert not r.ok and any(str(world.nodes[0] / "replicas" / "r1") in p for p in r.problems)


def test_the_cli_verifies_the_set_and_fails_on_a_problem(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    front = world.front.directory
    args = ["audit", "verify", str(front), "--public-key", str(front / "keys" / "signing.pub")]
    nodes = [a for n in world.nodes for a in ("--node", str(n))]
    assert main([*args, *nodes]) == 0
    out = capsys.readouterr().out
    assert "2 admitted replica joins checked" in out and out.count("OK ") == 3
    assert main([*args, "--node", f"{world.nodes[0]},{world.nodes[0] / 'keys' / 'signing.pub'}"]) == 1
    assert "is not among the nodes given" in capsys.readouterr().err


def test_a_checkpoint_string_round_trips_and_junk_is_not_one() -> None:
    text = "0f" * 16 + ":12:" + "5e" * 32
    w = parse_checkpoint(text)
    assert w is not None and w.seq == 12 and format_checkpoint(w) == text
    for junk in ("", "0f" * 16 + ":-1:" + "5e" * 32, "0f" * 16 + ":1:" + "5e" * 31, text + "\n"):
        assert parse_checkpoint(junk) is None
