"""The front door's side of Serve replicas: an :class:`~bastion.engine.protocol.EnginePool` of proxies.

:func:`deploy` runs one Serve application per served model (``bastion-<model>``, deployment ``engine``)
whose replicas are :class:`~bastion.cluster.replica.EngineReplica`; :func:`start_serve` first starts Serve
with **no proxy** (no HTTP or gRPC listener: the bastion gRPC server stays the only client-facing process).
:class:`ReplicaEngine` implements the ``Engine`` protocol over the deployment's handle, so servicers see the
same seam as for an engine in the process:

* ``generate`` streams (``handle.options(stream=True)``); a consumer that stops (closes the iterator, is
  cancelled, or calls ``abort``) cancels the Serve call, and the replica aborts its engine request;
* ``tokenize`` and ``prompt_logprobs`` are unary calls; ``info`` is fetched once at start;
* ``is_ready`` / ``is_dead`` follow the deployment's status, polled by :class:`DeploymentWatch` in a thread
  (``serve.status()`` blocks);
* errors map to bastion's: a full queue (Serve's ``max_queued_requests``, ``BackPressureError``) is
  :class:`Overloaded` (RESOURCE_EXHAUSTED); a replica that died or cannot be reached is
  :class:`Unavailable`; a bastion error raised in the replica is raised again as itself; anything else is
  an :class:`EngineError` naming only the type.

Serve's handle routes with :class:`bastion.cluster.router.TenantRouter`: only to replicas this front door
admitted (``bastion.cluster.admission``: their join report matches its own model record — the proxy's
``info`` is that record, never a replica's word — and proves tenant isolation; the ``replica_joined`` record
is durable first, :meth:`ReplicaPool.attach_audit`), and for ``generate`` by a keyed routing key
(``bastion.cluster.routing``) computed here from the request's partition tag, adapter and first prompt
blocks. The engine is ready when at least one replica is admitted and running. Ray must already be joined
(``bastion.cluster.driver.connect``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bastion.cluster.admission import Admission, Expected, ReplicaEvent, register, unregister
from bastion.cluster.replica import EngineReplica
from bastion.cluster.routing import RoutingKeyer
from bastion.cluster.settings import ClusterSettings
from bastion.cluster.spec import ReplicaSpec
from bastion.config import Settings
from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import ChatTurn, EngineOutput, EnginePool, EngineRequest, EngineStats, ModelInfo
from bastion.errors import BastionError, ConfigError, EngineError, FailedPrecondition, Overloaded, Unavailable
from bastion.isolation.tag import PartitionTag

log = logging.getLogger(__name__)

DEPLOYMENT = "engine"
DEPLOY_ATTEMPTS = 3
#: Serve runs the replica's code on its own main event loop, not a second loop in another thread: one
#: thread hop less per call and per streamed output (Serve's "throughput optimized" setting; the replica's
#: engine calls are all async, and its health check and join report are short).
REPLICA_SERVE_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
RAY_NAMESPACE = "bastion"
REPLICA_UNAVAILABLE = "model replica unavailable; retry"
# What a call that lost its replica tells its client (RetryInfo): Serve routes the retry to another replica.
REPLICA_RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class DeployOptions:
    """How many replicas, and Serve's limits for each (from ``[cluster]``: :meth:`from_settings`)."""

    replicas: int
    max_ongoing_requests: int  # the engine's batch (model.max_num_seqs): Serve's default of 5 starves it
    max_queued_requests: int
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    routing_stats_period_s: float = 2.0
    # cluster.replica_env: paths and options only (validated by ClusterSettings); Ray's runtime_env.
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_settings(cls, cluster: ClusterSettings, engine_batch: int) -> DeployOptions:
        if cluster.replicas < 1:
            raise FailedPrecondition("cluster.replicas is 0: no Serve replicas to deploy")
        return cls(
            replicas=cluster.replicas,
            max_ongoing_requests=cluster.replica_max_ongoing_requests or engine_batch,
            max_queued_requests=cluster.replica_max_queued_requests,
            num_cpus=cluster.replica_num_cpus,
            num_gpus=cluster.replica_num_gpus,
            health_check_period_s=cluster.replica_health_check_period_s,
            health_check_timeout_s=cluster.replica_health_check_timeout_s,
            env=tuple(sorted(cluster.replica_env.items())),
        )


def start_serve() -> None:
    """Starts Serve on the joined cluster with no proxy at all (blocking)."""
    from ray import serve

    serve.start(proxy_location="Disabled")


def deploy(spec: ReplicaSpec, options: DeployOptions) -> Any:
    """Runs ``spec``'s application and waits until its replicas run (blocking); returns its handle."""
    from ray import serve

    from bastion.cluster.router import TenantRouter

    actor_options: dict[str, Any] = {
        "num_cpus": options.num_cpus,
        "num_gpus": options.num_gpus,
        "runtime_env": {"env_vars": {**dict(options.env), **REPLICA_SERVE_ENV}},
    }
    deployment = serve.deployment(
        name=DEPLOYMENT,
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        max_queued_requests=options.max_queued_requests,
        ray_actor_options=actor_options,
        health_check_period_s=options.health_check_period_s,
        health_check_timeout_s=options.health_check_timeout_s,
        request_router_config={  # Serve builds its RequestRouterConfig from this
            "request_router_class": TenantRouter,
            "request_routing_stats_period_s": options.routing_stats_period_s,
        },
    )(EngineReplica)
    # The spec travels in Ray's object store and the controller's state: names and paths only (spec.py).
    for attempt in range(DEPLOY_ATTEMPTS):
        try:
            return serve.run(deployment.bind(spec), name=spec.app_name, route_prefix=None)
        except Exception as exc:
            # Ray 2.60 race: every RequestRouterConfig that is validated registers the router's module with
            # cloudpickle, pickles it and unregisters it through one process-wide set, so two validations at
            # once (this one and a handle's config update in Serve's long-poll thread) can fail the second
            # unregister. serve.run of the same application is idempotent: run it again.
            if "registered for pickle by value" not in str(exc) or attempt == DEPLOY_ATTEMPTS - 1:
                raise
            log.warning("deploying %s hit Ray's router-pickling race; retrying", spec.app_name)
            time.sleep(0.2)
    raise AssertionError("unreachable")


def undeploy(app_name: str) -> None:
    from ray import serve

    serve.delete(app_name)


def map_error(exc: Exception) -> BastionError:
    """bastion's error for a failed Serve call (see the module)."""
    from ray.exceptions import RayActorError, RayTaskError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError

    if isinstance(exc, BastionError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded(f"every replica is busy and the queue is full: {exc}")
    if isinstance(exc, (RayActorError, DeploymentUnavailableError, RequestCancelledError)):
        return Unavailable(
            f"replica call failed: {type(exc).__name__}",
            public=REPLICA_UNAVAILABLE,
            retry_after_s=REPLICA_RETRY_AFTER_S,
        )
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, BastionError):
            return cause
        return EngineError(f"replica call failed: {type(cause).__name__}")
    return EngineError(f"replica call failed: {type(exc).__name__}")


def _cancel(response: Any) -> None:
    """Cancels a Serve call, assigned or not; never raises. (Serve's ``cancel`` re-raises the call's own
    failure, a ``BackPressureError`` say, when the call never reached a replica.)"""
    try:
        response.cancel()
    except Exception as exc:  # noqa: BLE001 - the call failed before any replica ran it: nothing to abort
        log.debug("cancelling a Serve call: %s", type(exc).__name__)


class DeploymentWatch:
    """The deployment's status, polled from a thread every ``interval`` s (``serve.status()`` blocks)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._running: dict[str, int] = {}  # app -> RUNNING replicas
        self._failed: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="bastion-serve-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - a failed poll marks nothing running; the loop goes on
                log.warning("reading Serve's status failed: %s", type(exc).__name__)
                self._running = {}

    def poll(self) -> None:
        from ray import serve

        running: dict[str, int] = {}
        failed: set[str] = set()
        for app, status in serve.status().applications.items():
            dep = status.deployments.get(DEPLOYMENT)
            if dep is None:
                continue
            # ReplicaState and DeploymentStatus are str enums: compared by value.
            running[app] = sum(n for state, n in dep.replica_states.items() if state == "RUNNING")
            if dep.status == "DEPLOY_FAILED":
                failed.add(app)
        self._running, self._failed = running, failed

    def running(self, app: str) -> int:
        return self._running.get(app, 0)

    def dead(self, app: str) -> bool:
        """No replica runs (Serve is replacing them all, or the application is gone), or deploying failed."""
        return app in self._failed or self.running(app) == 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)


class ReplicaEngine:
    """The ``Engine`` protocol over one Serve deployment's handle (see the module)."""

    def __init__(
        self, handle: Any, admission: Admission, watch: DeploymentWatch, keyer: RoutingKeyer | None = None
    ) -> None:
        self._handle = handle
        self._stream_handle = handle.options(stream=True)  # initialises the handle: its router starts now
        self.admission = admission
        self.app_name = admission.app
        self._info = admission.expected.info
        self._watch = watch
        self._keyer = keyer
        self._streams: dict[str, Any] = {}  # request id -> its DeploymentResponseGenerator

    @property
    def info(self) -> ModelInfo:
        """This front door's model record (what admission compares each replica's report with)."""
        return self._info

    def is_ready(self) -> bool:
        return self._watch.running(self.app_name) > 0 and bool(self.admission.admitted())

    def is_dead(self) -> bool:
        return self._watch.dead(self.app_name)

    def routing_key(self, request: EngineRequest) -> bytes | None:
        """The request's keyed routing key (``bastion.cluster.routing``); None without a partition tag (isolation
        off: the least loaded replica) or without a routing secret."""
        if self._keyer is None or request.cache_salt is None:
            return None
        tag = PartitionTag.decode(request.cache_salt)
        return self._keyer.routing_key(tag, request.adapter, request.prompt_token_ids)

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, *, raw_special_tokens: bool = False
    ) -> list[int]:
        turns = None if conversation is None else tuple(conversation)
        return list(await self._call(self._handle.tokenize.remote(prompt, turns, raw_special_tokens)))

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        return self._generate(request)

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        response: Any = None
        finished = False
        try:
            key = self.routing_key(request)
            response = self._stream_handle.generate.remote(request, routing_key=key)
            self._streams[request.request_id] = response
            async for out in response:
                finished = out.finished
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to bastion's errors
            raise map_error(exc) from None
        finally:
            self._streams.pop(request.request_id, None)
            if not finished and response is not None:  # the consumer left or the call failed: the replica
                _cancel(response)  # aborts its engine request

    async def abort(self, request_id: str) -> None:
        response = self._streams.pop(request_id, None)
        if response is not None:
            _cancel(response)

    async def prompt_logprobs(self, request_id: str, token_ids: Sequence[int]) -> list[float]:
        return list(await self._call(self._handle.prompt_logprobs.remote(request_id, tuple(token_ids))))

    def stats(self) -> EngineStats:
        """This front door's streams in flight on the deployment (the replicas' own figures: later)."""
        return EngineStats(running=len(self._streams))

    async def shutdown(self) -> None:
        for response in list(self._streams.values()):
            _cancel(response)
        self._streams.clear()

    async def _call(self, response: Any) -> Any:
        try:
            return await response
        except Exception as exc:  # noqa: BLE001 - mapped to bastion's errors
            raise map_error(exc) from None


class RecordsReplicaEvents(Protocol):
    async def replica_event(
        self,
        *,
        event: str,
        replica: str,
        node: str,
        decision: str,
        reason: str,
        model: str,
        model_digest: str,
        checkpoint: str = "",
    ) -> int: ...


class ReplicaPool(EnginePool):
    """Proxies of the deployed models; shutting it down deletes their Serve applications."""

    def __init__(self, engines: Sequence[ReplicaEngine], watch: DeploymentWatch) -> None:
        super().__init__(engines)
        self._replicas = list(engines)
        self._watch = watch
        self._pump: asyncio.Task[None] | None = None

    def attach_audit(self, recorder: RecordsReplicaEvents) -> None:
        """Starts writing the replicas' joins and departures; an admitted replica gets traffic only once its
        ``replica_joined`` record is durable (until this is called, none does)."""
        if self._pump is None:
            self._pump = asyncio.ensure_future(self._record_events(recorder))

    async def _record_events(self, recorder: RecordsReplicaEvents) -> None:
        wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        for e in self._replicas:
            e.admission.bind(loop, wake)
        wake.set()
        while True:
            await wake.wait()
            wake.clear()
            for e in self._replicas:
                for event in e.admission.take_events():
                    await _record(recorder, e.admission, event)
                    e.admission.recorded(event)

    async def shutdown(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await super().shutdown()
        self._watch.stop()
        for e in self._replicas:
            try:
                await asyncio.to_thread(undeploy, e.app_name)
            except Exception as exc:  # noqa: BLE001 - the other applications are still deleted
                log.error("deleting Serve application %s failed: %s", e.app_name, type(exc).__name__)
            unregister(e.app_name)


async def _record(recorder: RecordsReplicaEvents, admission: Admission, event: ReplicaEvent) -> None:
    """Appends ``event``'s record, retrying every second while the log refuses it (a full disk): until it is
    durable the replica stays without traffic."""
    info = admission.expected.info
    while True:
        try:
            await recorder.replica_event(
                event=event.event,
                replica=event.replica,
                node=event.node,
                decision=event.decision,
                reason=event.reason,
                model=info.name,
                model_digest=info.digest,
                checkpoint=event.checkpoint,
            )
            return
        except Exception as exc:  # noqa: BLE001 - the record is retried; the replica waits for it
            log.error(
                "recording %s of replica %s failed (%s); retrying", event.event, event.replica, type(exc).__name__
            )
            await asyncio.sleep(1.0)


def versions() -> tuple[str, str]:
    """This process's bastion and native extension versions (a replica must run the same)."""
    from bastion import __version__
    from bastion.native import native_version

    return __version__, native_version()


def expected_record(spec: ReplicaSpec, settings: Settings | None = None) -> ModelInfo:
    """The front door's own record of ``spec``'s model, what every replica's join report must match.

    For the vLLM replica: the front door checks the model itself from its own ``[model]`` settings — the
    signature against the trust policy, the signed files, the sealed header, the key — without decrypting
    any weights (``bastion.models.resolve.prepare_model``), and takes the digests from that check. For the fake
    engine: the fake's model record (never a spec's override, which stands for a replica gone wrong)."""
    if spec.engine == "fake":
        from testkit.fakes import FAKE_DIGEST

        return ModelInfo(name=spec.model, digest=FAKE_DIGEST, max_context=spec.fake_options.max_context, device="cpu")
    if settings is None:
        raise FailedPrecondition("the vLLM replica's model record needs the front door's [model] settings")
    from bastion.engine.vllm.device import resolve_device
    from bastion.models.resolve import prepare_model

    m = settings.model
    if m.max_model_len is None:
        raise ConfigError("model.max_model_len: required with cluster.replicas (the front door checks lengths)")
    if m.adapters:
        raise ConfigError("model.adapters: not served by Serve replicas yet")
    prepared = prepare_model(settings)
    if prepared.name != spec.model:
        raise ConfigError(f"the served model is {prepared.name!r}, the deployment's {spec.model!r}")
    return ModelInfo(
        name=prepared.name,
        digest=prepared.digest,
        max_context=m.max_model_len,
        device=resolve_device(m.device),
        subject_digest=prepared.oms_digest or "",
    )


async def start_replica_pool(
    specs: Sequence[ReplicaSpec],
    options: DeployOptions,
    *,
    keyer: RoutingKeyer | None = None,
    expected: dict[str, ModelInfo] | None = None,
    watch_interval: float = 1.0,
) -> ReplicaPool:
    """Starts Serve (no proxy), registers each spec's admission, deploys it and attaches a proxy to it. Ray
    must be joined. ``expected``: the model record per app name (default :func:`expected_record`)."""
    bastion_version, native = versions()
    admissions = []
    for spec in specs:
        info = (expected or {}).get(spec.app_name) or expected_record(spec)
        adm = Admission(spec.app_name, Expected(info, bastion_version, native))
        register(adm)  # before the deployment exists: its router consults it from the first replica on
        admissions.append(adm)
    await asyncio.to_thread(start_serve)
    handles = [await asyncio.to_thread(deploy, spec, options) for spec in specs]
    watch = DeploymentWatch(watch_interval)
    await asyncio.to_thread(watch.start)
    engines = [ReplicaEngine(h, adm, watch, keyer) for h, adm in zip(handles, admissions, strict=True)]
    log.info("Serve replicas running: %s", ", ".join(f"{s.app_name} x{options.replicas}" for s in specs))
    return ReplicaPool(engines, watch)


def replica_pool_factory(settings: Settings, spec: ReplicaSpec) -> Callable[[EngineProcessEnv], Awaitable[EnginePool]]:
    """``bastion serve``'s pool factory (``server.app.PoolFactory``) when ``cluster.replicas`` > 0: joins the
    cluster as a driver with ``[cluster]``'s credentials, then :func:`start_replica_pool`, routing by keys under
    the routing secret derived from the partition key file the server names in the engine-process contract.

    The engine-process contract itself is not shipped to replicas (it is the server's own node's): each
    replica's node builds its own from its own configuration (``bastion.cluster.replica.start_vllm``).
    The front door's model record is checked here (:func:`expected_record`) before anything is deployed."""
    if spec.engine == "vllm" and spec.config_file is None:
        raise ConfigError("cluster.replica_config_file: the vLLM replica needs each node's config file path")
    options = DeployOptions.from_settings(settings.cluster, settings.model.max_num_seqs)
    cluster = settings.cluster

    async def factory(process: EngineProcessEnv) -> EnginePool:
        from bastion.cluster.driver import connect
        from bastion.tenancy.partition import PartitionKeys, load_or_create

        keyer = None
        if process.partition_key_file is not None:
            secret = load_or_create(process.partition_key_file, create=False)
            keyer = RoutingKeyer(
                PartitionKeys(secret).routing_secret(),
                block_size=cluster.routing_block_tokens,
                blocks=cluster.routing_blocks,
            )
        expected = {spec.app_name: await asyncio.to_thread(expected_record, spec, settings)}
        await asyncio.to_thread(connect, cluster, namespace=RAY_NAMESPACE)
        return await start_replica_pool([spec], options, keyer=keyer, expected=expected)

    return factory
