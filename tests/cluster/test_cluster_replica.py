"""The replica's body without a cluster: the engine it builds from a spec, streaming, an aborted request
when the caller cancels or closes the stream, and the health check Serve calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bastion.audit import AuditSettings
from bastion.audit.replica_set import parse_checkpoint
from bastion.audit.verifier import verify_with
from bastion.cluster.node_audit import chain_settings
from bastion.cluster.replica import EngineReplica, build_engine
from bastion.cluster.spec import FakeEngineSpec, ReplicaSpec
from bastion.engine.protocol import EngineOutput, EngineRequest, SamplingSpec
from bastion.errors import ConfigError, FailedPrecondition, Unavailable
from testkit.fakes import FAKE_DIGEST, FakeEngine


@pytest.fixture
async def made() -> AsyncIterator[list[EngineReplica]]:
    """Replicas made by a test, stopped as Serve stops them (awaiting ``__del__``'s coroutine)."""
    replicas: list[EngineReplica] = []
    yield replicas
    for r in replicas:
        stop = r.__del__()
        if stop is not None:
            await stop
        assert _fake(r).shutdown_called


def _replica(made: list[EngineReplica], **fake: object) -> EngineReplica:
    replica = EngineReplica(ReplicaSpec(engine="fake", model="m", fake=FakeEngineSpec.model_validate(fake)))
    replica._replica_id = "replica-1"  # Serve's id of the replica (outside Serve: set here)
    made.append(replica)
    return replica


def _fake(replica: EngineReplica) -> FakeEngine:
    assert isinstance(replica.engine, FakeEngine)
    return replica.engine


def audit_records(directory: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for seg in sorted(directory.glob("audit-*.jsonl")) for ln in seg.read_text().splitlines()]


def _request(request_id: str, max_tokens: int) -> EngineRequest:
    return EngineRequest(request_id, (7, 8), SamplingSpec(max_tokens=max_tokens))


async def test_generate_streams_the_engines_outputs_and_does_not_abort_a_finished_request(
    made: list[EngineReplica],
) -> None:
    replica = _replica(made)
    outs: list[EngineOutput] = [o async for o in replica.generate(_request("r1", 3))]
    assert [o.text for o in outs] == ["w0 ", "w1 ", "w2 "] and outs[-1].finished
    assert _fake(replica).aborted == [] and _fake(replica).closed == ["r1"]
    assert [o.replica for o in outs] == ["replica-1", "", ""]  # the first output names the replica
    assert (await replica.info()).name == "m"


async def test_a_cancelled_call_aborts_the_engine_request(made: list[EngineReplica]) -> None:
    replica = _replica(made, token_delay=0.01)
    got: list[EngineOutput] = []

    async def consume() -> None:
        async for out in replica.generate(_request("r2", 1000)):
            got.append(out)

    task = asyncio.ensure_future(consume())
    while len(got) < 2:
        await asyncio.sleep(0.01)
    task.cancel()  # what Serve does to the replica's task when the caller cancels
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _fake(replica).aborted == ["r2"] and _fake(replica).closed == ["r2"]


async def test_closing_the_stream_early_aborts_the_engine_request(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    it = replica.generate(_request("r3", 1000))
    await anext(it)
    await it.aclose()  # type: ignore[attr-defined]  # an async generator
    assert _fake(replica).aborted == ["r3"]


async def test_tokenize_and_stats_pass_through(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    assert await replica.tokenize("ab", None) == [97, 98]
    assert replica.stats().running == 1  # the fake engine's figures


async def test_check_health_raises_once_the_engine_is_dead(made: list[EngineReplica]) -> None:
    replica = _replica(made)
    await replica.check_health()
    assert replica.is_ready()
    _fake(replica).die()
    with pytest.raises(Unavailable):
        await replica.check_health()
    assert not replica.is_ready()


def _node_config(tmp: Path) -> Path:
    """A replica node's own configuration: only its cache directory (its audit chain lives under it)."""
    config = tmp / "node.toml"
    config.write_text(f'cache_dir = "{tmp / "cache"}"\n')
    return config


async def test_a_vllm_replica_starts_its_engine_in_the_background_and_reports_once_it_is_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bastion.cluster.replica as replica_mod

    release = asyncio.Event()
    engine = FakeEngine("m")

    async def start(spec: ReplicaSpec, settings: object) -> FakeEngine:
        await release.wait()  # a minute or more for vLLM
        return engine

    monkeypatch.setattr(replica_mod, "start_vllm", start)
    replica = EngineReplica(ReplicaSpec(engine="vllm", model="m", config_file=_node_config(tmp_path)))
    replica._replica_id, replica._node_id = "replica-1", "n" * 56  # Serve's and Ray's ids (outside Serve: set)
    await replica.check_health()  # starting is healthy
    assert not replica.is_ready() and replica.stats().running == 0
    assert replica.record_routing_stats() == {"running": 0, "waiting": 0}
    call = asyncio.ensure_future(replica.tokenize("ab", None))  # waits for the engine, is not refused
    report = asyncio.ensure_future(replica.record_replica_metadata())
    await asyncio.sleep(0.05)
    assert not call.done() and not report.done()
    release.set()
    assert await call == [97, 98]
    joined = await report
    assert joined["replica"] == "replica-1" and joined["node"] == "n" * 56 and joined["model"] == "m"
    assert joined["isolation"] == {"plugin": False, "block_hasher": False, "tenant_scheduler": False}  # unproven
    assert replica.is_ready()
    stop = replica.__del__()  # Serve's graceful stop
    assert stop is not None
    await stop
    assert engine.shutdown_called


async def test_a_vllm_replica_whose_engine_fails_to_start_fails_its_health_check_and_never_reports() -> None:
    replica = EngineReplica(ReplicaSpec(engine="vllm", model="m"))  # no config file of the node: cannot start
    with pytest.raises(FailedPrecondition, match="names no config file"):
        await replica.record_replica_metadata()
    with pytest.raises(Unavailable, match="failed to start"):
        await replica.check_health()  # Serve replaces it
    assert not replica.is_ready()


def test_build_engine_builds_only_the_fake_one() -> None:
    with pytest.raises(FailedPrecondition, match="started by start_vllm"):
        build_engine(ReplicaSpec(engine="vllm", model="m"))


def _chain(tmp: Path, replica: str = "replica-1") -> list[dict[str, object]]:
    return audit_records(tmp / "cache" / "audit" / "replicas" / replica)


async def test_a_replica_keeps_a_node_local_chain_and_joins_with_its_checkpoint(tmp_path: Path) -> None:
    replica = EngineReplica(ReplicaSpec(engine="fake", model="m", config_file=_node_config(tmp_path)))
    replica._replica_id, replica._node_id = "replica-1", "n" * 56
    joined = await replica.record_replica_metadata()
    checkpoint = parse_checkpoint(joined["audit_checkpoint"])
    assert checkpoint is not None
    (loaded,) = [r for r in _chain(tmp_path) if r.get("event") == "model_loaded"]
    assert loaded["decision"] == "verified" and loaded["model_digest"] == FAKE_DIGEST
    assert loaded["principal"] == "bastion:replica" and loaded["replica"] == "replica-1"
    assert loaded["node"] == "n" * 56 and checkpoint.seq > loaded["seq"]  # the checkpoint covers the record
    _fake(replica).die()
    for _ in range(2):
        with pytest.raises(Unavailable, match="engine is dead"):
            await replica.check_health()
    stop = replica.__del__()
    assert stop is not None
    await stop
    events = [r.get("event") for r in _chain(tmp_path) if r["kind"] == "decision"]
    assert events == ["model_loaded", "engine_died", "replica_stopped"]  # the death recorded once
    chain_dir = tmp_path / "cache" / "audit" / "replicas" / "replica-1"
    public = tmp_path / "cache" / "audit" / "keys" / "signing.pub"
    assert verify_with(chain_dir, public, checkpoint).ok  # still holds what it joined with


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (FailedPrecondition("this node serves 'x', the deployment 'm'"), "this node serves 'x', the deployment 'm'"),
        (RuntimeError("vault token s.Sh4r3dS3cr3t rejected"), "RuntimeError"),  # a foreign message may quote a secret
    ],
)
async def test_an_engine_that_fails_to_start_is_recorded_on_the_node_without_a_foreign_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, error: Exception, reason: str
) -> None:
    import bastion.cluster.replica as replica_mod

    async def start(spec: ReplicaSpec, settings: object) -> FakeEngine:
        raise error

    monkeypatch.setattr(replica_mod, "start_vllm", start)
    replica = EngineReplica(ReplicaSpec(engine="vllm", model="m", config_file=_node_config(tmp_path)))
    replica._replica_id, replica._node_id = "replica-1", "n" * 56
    with pytest.raises(type(error)):
        await replica.record_replica_metadata()
    (failed,) = [r for r in _chain(tmp_path) if r.get("event") == "model_load_failed"]
    assert failed["decision"] == "refused" and failed["reason"] == reason
    stop = replica.__del__()
    assert stop is not None
    await stop  # the chain records the stop and closes
    assert [r.get("event") for r in _chain(tmp_path) if r["kind"] == "decision"][-1] == "replica_stopped"


def test_a_replica_id_that_is_not_a_plain_name_never_becomes_a_path(tmp_path: Path) -> None:
    for bad in ("../escape", "", "a/b", "x" * 65):
        with pytest.raises(ConfigError, match="replica id"):
            chain_settings(AuditSettings(dir=tmp_path / "audit"), tmp_path, bad)


def test_replicas_starting_together_on_a_node_share_one_key_set(tmp_path: Path) -> None:
    node = AuditSettings(dir=tmp_path / "audit")
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: chain_settings(node, tmp_path, f"r{i}"), range(8)))
    assert {m.signing_key_file for m in made} == {tmp_path / "audit" / "keys" / "signing.pk8"}
    assert len({m.dir for m in made}) == 8 and len({m.witness_file for m in made}) == 8
