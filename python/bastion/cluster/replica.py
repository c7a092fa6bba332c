"""A Serve replica: one engine (``bastion.engine.protocol.Engine``) inside a Ray actor.

:class:`EngineReplica` is a plain class; ``bastion.cluster.pool`` makes it a Serve deployment
(``serve.deployment(EngineReplica)``), so this module imports no Ray at load time and its logic is tested
without a cluster. Serve constructs it on some node from a :class:`~bastion.cluster.spec.ReplicaSpec`
(names and paths only) and calls:

* ``generate`` with ``stream=True``: the engine's outputs, one :class:`EngineOutput` per step (plain frozen
  dataclasses: Ray pickles them). A cancelled call (the front door's consumer went away, its deadline
  passed) arrives as ``CancelledError`` at the stream's current ``await``: the engine request is aborted
  and its stream closed before the cancellation goes on;
* ``tokenize``, ``prompt_logprobs``, ``info``, ``stats``: unary calls;
* ``check_health`` (Serve, every ``health_check_period_s``): raises when the engine is dead, so Serve
  replaces the replica;
* ``record_replica_metadata`` (Serve, once, when the replica is ready): its join report
  (``bastion.cluster.admission.JoinReport``: node, model digests, versions, isolation proof), which the front
  door checks before it routes anything here; ``record_routing_stats`` (Serve, periodically): the engine's
  running and waiting requests, the router's load figure when its own count is stale.

The first output of every stream names this replica (``EngineOutput.replica``): the front door's request
record says where the request ran.

The engine is built on the replica's node: the fake one at once (:func:`build_engine`), the vLLM one by
:func:`start_vllm` in the background of the constructor (a minute or more; Serve awaits the join report,
``record_replica_metadata``, which waits for it, so the replica is RUNNING only once its engine is up). The
vLLM replica reads the node's **own** bastion configuration (``ReplicaSpec.config_file``, a path; nothing
else crosses Ray): its ``[model]``, its key provider (the node's own credential opens the sealed weights) and
its own partition key file, the root of the EngineCore's block-hashing key (created 0600 on first use). The
tenant partition of every request comes from the front door's tag (``cache_salt``), so that key only keys the
node's block hashes and never has to match another node's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from bastion.cluster import node_audit
from bastion.cluster.admission import JoinReport
from bastion.cluster.node_audit import NodeAudit
from bastion.cluster.spec import ReplicaSpec
from bastion.engine.protocol import ChatTurn, Engine, EngineOutput, EngineRequest, EngineStats, ModelInfo
from bastion.errors import FailedPrecondition, Unavailable
from bastion.isolation.proof import IsolationProof

if TYPE_CHECKING:
    from bastion.config import Settings

log = logging.getLogger(__name__)


def build_engine(spec: ReplicaSpec) -> Engine:
    """The engine ``spec`` names, built on this node."""
    if spec.engine == "fake":
        # Test support from the repository's testkit/ (not part of the installed package): a node without
        # it fails here, at replica start, never later.
        try:
            fakes = importlib.import_module("testkit.fakes")
        except ImportError:
            raise FailedPrecondition("replica engine 'fake': testkit is not importable on this node") from None
        o = spec.fake_options
        engine: Engine = fakes.FakeEngine(
            spec.model,
            digest=o.digest or fakes.FAKE_DIGEST,
            max_context=o.max_context,
            token_delay=o.token_delay,
            hang_after=o.hang_after,
            die_after=o.die_after,
        )
        return engine
    raise FailedPrecondition(f"replica engine {spec.engine!r} is started by start_vllm, not built here")


async def start_vllm(spec: ReplicaSpec, settings: Settings) -> Engine:
    """The vLLM engine of ``spec``, from this node's own configuration ``settings`` (see the module)."""
    from bastion.engine.factory import build_pool  # vLLM and torch: seconds to import
    from bastion.engine.process import EngineProcessEnv
    from bastion.tenancy.partition import key_file, load_or_create

    path = key_file(settings.isolation.partition_key_file, settings.cache_dir)
    await asyncio.to_thread(load_or_create, path, create=settings.isolation.partition_key_file is None)
    import ray

    # What vLLM exports when it spawns the EngineCore of a Ray actor (the cluster a Ray executor joins); set
    # before the engine's forkserver starts, so a forked EngineCore has it too (bastion.engine.vllm.forkserver).
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    pool = await build_pool(settings, EngineProcessEnv(partition_key_file=path))
    (engine,) = pool.all()
    if engine.info.name != spec.model:
        await engine.shutdown()
        raise FailedPrecondition(f"this node serves {engine.info.name!r}, the deployment {spec.model!r}")
    return engine


def load_reason(spec: ReplicaSpec, settings: Settings, info: ModelInfo) -> str:
    """What the chain's ``model_loaded`` record says of how the model was checked and opened."""
    if spec.engine == "fake":
        return "fake engine (tests): no weights"
    signed = f"signature subject {info.subject_digest}" if info.subject_digest else "unsigned (allowed by the policy)"
    if settings.model.source != "default" and settings.weights.allow_unsealed:
        return f"plain weights (weights.allow_unsealed); {signed}"
    return f"sealed weights opened with this node's {settings.weights.key_provider} key provider; {signed}"


def isolation_proof(spec: ReplicaSpec, engine: Engine) -> IsolationProof:
    """What ``engine`` proves about tenant isolation in its own processes. An engine without the means to
    prove it proves nothing. The fake engine has no prefix cache to isolate: it reports what its spec says
    (tests of admission)."""
    if spec.engine == "fake":
        ok = spec.fake_options.isolation_proof
        return IsolationProof(plugin=ok, block_hasher=ok, tenant_scheduler=ok)
    prove = getattr(engine, "isolation_proof", None)
    if prove is None:
        return IsolationProof()
    proof = prove()
    return proof if isinstance(proof, IsolationProof) else IsolationProof()


class EngineReplica:
    """The body of one Serve replica (see the module)."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = ReplicaSpec.model_validate(spec.model_dump())  # re-checked on this side of the wire
        self._starting: asyncio.Task[Engine] | None = None
        self.audit: NodeAudit | None = None  # the node-local chain, once open
        self._death_recorded = False
        if self.spec.engine == "fake" and self.spec.config_file is None:
            # No node configuration, so no node-local chain: its join report has no checkpoint (refused).
            self.engine: Engine | None = build_engine(self.spec)
        else:  # Serve runs the constructor on the replica's event loop
            self.engine = None
            self._starting = asyncio.get_running_loop().create_task(self._start())
        log.info("replica of %s started (%s engine)", self.spec.model, self.spec.engine)

    async def _start(self) -> Engine:
        """Opens the node-local chain from the node's configuration, then the engine; records the outcome."""
        from bastion.config import load_settings

        if self.spec.config_file is None:
            raise FailedPrecondition(f"replica engine {self.spec.engine!r}: the spec names no config file of this node")
        settings = await asyncio.to_thread(load_settings, str(self.spec.config_file))
        self.audit = chain = await NodeAudit.open(settings.audit, settings.cache_dir, self.replica_id())
        try:
            engine = build_engine(self.spec) if self.spec.engine == "fake" else await start_vllm(self.spec, settings)
        except Exception as exc:
            await chain.record(
                node_audit.MODEL_LOAD_FAILED,
                "refused",
                model=self.spec.model,
                reason=node_audit.failure_reason(exc),
                node=self.node_id(),
            )
            raise
        info = engine.info
        await chain.record(
            node_audit.MODEL_LOADED,
            "verified",
            model=info.name,
            model_digest=info.digest,
            reason=load_reason(self.spec, settings, info),
            node=self.node_id(),
        )
        return engine

    async def _ready(self) -> Engine:
        if self.engine is None:
            assert self._starting is not None
            self.engine = await asyncio.shield(self._starting)
        return self.engine

    async def info(self) -> ModelInfo:
        return (await self._ready()).info

    def replica_id(self) -> str:
        """Serve's id of this replica (the audit records name it)."""
        rid = self.__dict__.get("_replica_id")
        if rid is None:
            from ray import serve

            rid = self._replica_id = str(serve.get_replica_context().replica_id.unique_id)
        return rid

    def node_id(self) -> str:
        """Ray's id of this replica's node."""
        node = self.__dict__.get("_node_id")
        if node is None:
            import ray

            node = self._node_id = str(ray.get_runtime_context().get_node_id())
        return node

    async def record_replica_metadata(self) -> dict[str, Any]:
        """The join report (Serve captures it once, when this replica is ready; see the module). Waits for the
        engine: a replica whose engine fails to start never reports, and Serve replaces it."""
        from bastion import __version__
        from bastion.native import native_version

        engine = await self._ready()
        info = engine.info
        report = JoinReport(
            replica=self.replica_id(),
            node=self.node_id(),
            model=info.name,
            digest=info.digest,
            subject_digest=info.subject_digest,
            adapter_digests=info.adapter_digests,
            bastion_version=__version__,
            native_version=native_version(),
            isolation=isolation_proof(self.spec, engine),
            audit_checkpoint=self.audit.checkpoint() if self.audit is not None else "",
        )
        return report.model_dump(mode="json")

    def record_routing_stats(self) -> dict[str, Any]:
        if self.engine is None:
            return {"running": 0, "waiting": 0}
        stats = self.engine.stats()
        return {"running": stats.running, "waiting": stats.waiting}

    async def check_health(self) -> None:
        starting = self._starting
        if self.engine is None and starting is not None and starting.done() and starting.exception() is not None:
            raise Unavailable(f"replica of {self.spec.model}: the engine failed to start")
        if self.engine is not None and self.engine.is_dead():
            if self.audit is not None and not self._death_recorded:
                self._death_recorded = True
                info = self.engine.info
                await self.audit.record(
                    node_audit.ENGINE_DIED, "alert", model=info.name, model_digest=info.digest, node=self.node_id()
                )
            raise Unavailable(f"replica of {self.spec.model}: the engine is dead")

    def is_ready(self) -> bool:
        return self.engine is not None and self.engine.is_ready() and not self.engine.is_dead()

    async def generate(self, request: EngineRequest, routing_key: bytes | None = None) -> AsyncIterator[EngineOutput]:
        """``routing_key`` is the router's (``bastion.cluster.router``); the replica does not use it."""
        engine = await self._ready()
        it = engine.generate(request)
        finished = False
        first = True
        try:
            async for out in it:
                finished = out.finished
                if first:
                    out = dataclasses.replace(out, replica=self.replica_id())
                    first = False
                yield out
        finally:
            if not finished:  # cancelled by the caller, or the engine failed: the request must not run on
                try:
                    await engine.abort(request.request_id)
                except Exception:  # noqa: BLE001 - the cancellation or the engine's error goes on regardless
                    log.warning("aborting %s on the engine failed", request.request_id)
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, raw_special_tokens: bool = False
    ) -> list[int]:
        return await (await self._ready()).tokenize(prompt, conversation, raw_special_tokens=raw_special_tokens)

    async def abort(self, request_id: str) -> None:
        await (await self._ready()).abort(request_id)

    async def prompt_logprobs(self, request_id: str, token_ids: Sequence[int]) -> list[float]:
        return await (await self._ready()).prompt_logprobs(request_id, token_ids)

    def stats(self) -> EngineStats:
        return EngineStats() if self.engine is None else self.engine.stats()

    # --- the fake engine's records (tests only: refused for a real engine) ---

    def fake_record(self) -> dict[str, Any]:
        """What the fake engine saw: request ids, aborted and closed request ids."""
        e = self._fake()
        return {
            "replica": self.replica_id(),
            "requests": [r.request_id for r in e.requests],
            "aborted": list(e.aborted),
            "closed": list(e.closed),
        }

    def fake_die(self) -> str:
        """Marks the fake engine dead (its next health check fails); returns this replica's id."""
        self._fake().die()
        return self.replica_id()

    def _fake(self) -> Any:
        if self.spec.engine != "fake":
            raise FailedPrecondition("only a fake engine's replica answers this")
        return self.engine

    def __del__(self) -> Coroutine[Any, Any, None] | None:
        """Serve's graceful stop of the replica: Serve awaits the coroutine this returns (the engine shuts
        down, the chain records the stop and closes). Only the first call does anything, and only on a
        running event loop: a later call from the garbage collector returns nothing to await."""
        starting = self.__dict__.get("_starting")
        if starting is not None and not starting.done():
            starting.cancel()  # stopped while its engine was starting
        engine = self.__dict__.get("engine")  # absent when the constructor failed
        chain = self.__dict__.get("audit")
        if (engine is None and chain is None) or self.__dict__.get("_stopping"):
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        self._stopping = True
        return self._stop(engine, chain)

    async def _stop(self, engine: Engine | None, chain: NodeAudit | None) -> None:
        try:
            if engine is not None:
                await engine.shutdown()
        finally:
            if chain is not None:
                try:
                    await chain.record(node_audit.REPLICA_STOPPED, "stopped", model=self.spec.model)
                finally:
                    await chain.close()
