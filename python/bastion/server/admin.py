"""The ``bastion.v1.Admin`` servicer: reload the tenancy policy, list tenants and usage, revoke API keys,
model status, reload the security attestations that release models to tenants, lift a quarantine, reset a
drift baseline. The interceptor has already required the "admin" role; every call is audited (a lift and a
reset twice: its own decision record, durable before anything changes, then the call's record).

Every call ends with exactly one ``request`` record, or fails: a failure nobody foresaw (an ``OSError`` of the
file work, a bug) is INTERNAL with the text ``internal error (request_id=...)`` and nothing else, and is
audited like any other outcome; if the record cannot be made durable the call fails with the audit log's
status. Blocking file work (reading the policy, rewriting the API key store, verifying attestations) runs in
a worker thread, never on the event loop. A call runs in a task of its own that its client cannot cancel:
an admin action, once started, completes and is recorded with its real outcome even if the client gives up
or its deadline passes (the client then sees CANCELLED or DEADLINE_EXCEEDED, the log what was done)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc

from bastion.assurance.drift import DRIFT_BASELINE_RESET, DriftState
from bastion.assurance.release import QUARANTINE_LIFTED, QUARANTINED
from bastion.errors import BastionError, ConfigError, FailedPrecondition, InvalidArgument, NotFound
from bastion.observability.telemetry import Telemetry
from bastion.server.caller import Caller, current_caller
from bastion.server.ids import REQUEST_ID_METADATA_KEY
from bastion.server.servicer import ServerState
from bastion.server.status import grpc_status, internal_message
from bastion.tenancy.policy import TenancyPolicy
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc

log = logging.getLogger(__name__)
KEY_ID_RE = re.compile(r"[A-Za-z0-9]{1,64}")
MAX_MODEL_NAME = 256
MAX_LIFT_REASON = 512
_T = TypeVar("_T")


class AdminServicer(apb_grpc.AdminServicer):
    def __init__(
        self,
        state: ServerState,
        telemetry: Telemetry,
        *,
        policy_file: Path | None,
        api_key_store: Path | None,
        revoke_key: Callable[[Path, str], None],
    ) -> None:
        self._state = state
        self._telemetry = telemetry
        self._policy_file = policy_file
        self._store = api_key_store
        self._revoke_key = revoke_key
        # The running calls' tasks, referenced until they end (one whose client went away still completes).
        self._running: set[asyncio.Future[Any]] = set()

    async def _run(self, name: str, context: grpc.aio.ServicerContext, fn: Callable[[Caller], _T]) -> _T:
        """:meth:`_arun` for in-memory work (nothing that blocks)."""

        async def call(caller: Caller) -> _T:
            return fn(caller)

        return await self._arun(name, context, call)

    async def _arun(self, name: str, context: grpc.aio.ServicerContext, fn: Callable[[Caller], Awaitable[_T]]) -> _T:
        """Runs ``fn`` and the call's record in a task the client cannot cancel; answers its outcome."""
        caller = current_caller()
        task = asyncio.ensure_future(self._perform(name, caller, fn))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        code, message, result = await asyncio.shield(task)
        if code == grpc.StatusCode.OK:
            return cast(_T, result)
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_METADATA_KEY, caller.request_id),))
        raise AssertionError("unreachable")  # pragma: no cover - abort always raises

    async def _perform(
        self, name: str, caller: Caller, fn: Callable[[Caller], Awaitable[_T]]
    ) -> tuple[grpc.StatusCode, str, _T | None]:
        """The call's work, then its one record; returns (status, client text, result). Never raises."""
        rid = caller.request_id
        with self._telemetry.rpc(f"Admin/{name}", rid, caller) as rec:
            result: _T | None = None
            code, message, reason = grpc.StatusCode.OK, "", ""
            try:
                result = await fn(caller)
            except Exception as exc:  # every failure is mapped to a status and audited; none leaks
                code, message = grpc_status(exc)
                if isinstance(exc, BastionError):
                    reason = (exc.detail or "")[:200]
                else:  # the record names the failure's type; the client reads the request id only
                    reason = f"internal error ({type(exc).__name__})"
                    log.error("Admin/%s failed: internal error %s", name, type(exc).__name__)
                    log.debug("Admin/%s internal error detail", name, exc_info=exc)
                if code == grpc.StatusCode.INTERNAL:
                    message = internal_message(rid)
            rec.code = code
            try:
                await self._state.recorder.request(
                    request_id=rid,
                    method=caller.method,
                    peer=caller.peer,
                    principal=caller.principal,
                    tenant=caller.tenant,
                    status=code,
                    started=rec.start,
                    reason=reason,
                )
            except Exception as exc:  # noqa: BLE001 - no record: the call fails closed with the audit log's status
                code, message = grpc_status(exc)
                if code == grpc.StatusCode.INTERNAL:
                    message = internal_message(rid)
                log.error("Admin/%s: its audit record was not made durable (%s)", name, type(exc).__name__)
                rec.code, result = code, None
            return code, message, result

    async def ReloadPolicy(
        self, request: apb.ReloadPolicyRequest, context: grpc.aio.ServicerContext
    ) -> apb.ReloadPolicyResponse:
        async def reload(caller: Caller) -> apb.ReloadPolicyResponse:
            if self._policy_file is None:
                raise FailedPrecondition(public="no tenancy.policy_file is configured")
            try:
                policy = await asyncio.to_thread(TenancyPolicy.load, self._policy_file)
            except ConfigError as exc:
                # The running policy stays; the client text names the field, never a value or the path.
                raise FailedPrecondition(f"policy reload refused: {exc}", public=exc.public_message) from None
            self._state.guard.reload(policy)
            log.info("tenancy policy reloaded by %s: %s", caller.principal.id, policy.digest)
            return apb.ReloadPolicyResponse(
                policy_digest=policy.digest, tenants=len(policy.tenants), principals=policy.principal_count
            )

        return await self._arun("ReloadPolicy", context, reload)

    async def ListTenants(
        self, request: apb.ListTenantsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListTenantsResponse:
        def listing(caller: Caller) -> apb.ListTenantsResponse:
            guard = self._state.guard
            policy = guard.policy
            out = apb.ListTenantsResponse(policy_digest=policy.digest)
            for u in guard.usage():
                lim = policy.tenants.get(u.tenant)
                if lim is None:
                    continue
                out.tenants.add(
                    tenant=u.tenant,
                    max_tokens_per_request=lim.max_tokens_per_request,
                    max_concurrent_streams=lim.max_concurrent_streams,
                    requests_per_s=lim.requests_per_s,
                    tokens_per_min=lim.tokens_per_min,
                    kv_reserved_blocks=lim.kv_reserved_blocks,
                    kv_max_blocks=lim.kv_max_blocks,
                    active_streams=u.active_streams,
                    requests=u.requests,
                    denied=u.denied,
                    rate_limited=u.rate_limited,
                    prompt_tokens=u.prompt_tokens,
                    completion_tokens=u.completion_tokens,
                )
            return out

        return await self._run("ListTenants", context, listing)

    async def RevokeApiKey(
        self, request: apb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeApiKeyResponse:
        async def revoke(caller: Caller) -> apb.RevokeApiKeyResponse:
            if not KEY_ID_RE.fullmatch(request.key_id):
                raise InvalidArgument("key_id", "1 to 64 characters of [A-Za-z0-9]")
            if self._store is None:
                raise FailedPrecondition(public="no auth.api_keys.file is configured")
            try:  # a read-modify-write of the store under its file lock: in a worker thread
                await asyncio.to_thread(self._revoke_key, self._store, request.key_id)
            except KeyError:
                raise NotFound(public="no API key has that id") from None
            log.warning("API key %s revoked by %s", request.key_id, caller.principal.id)
            return apb.RevokeApiKeyResponse()

        return await self._arun("RevokeApiKey", context, revoke)

    async def ModelStatus(
        self, request: apb.ModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> apb.ModelStatusResponse:
        def status(caller: Caller) -> apb.ModelStatusResponse:
            out = apb.ModelStatusResponse()
            out.models.extend(self._model_states())
            return out

        return await self._run("ModelStatus", context, status)

    def _model_states(self) -> list[apb.ModelState]:
        pool, releases = self._state.pool, self._state.releases
        out = []
        for e in pool.all() if pool is not None else []:
            state = "dead" if e.is_dead() else "ready" if e.is_ready() else "loading"
            rel = releases.release(e.info.name)
            out.append(
                apb.ModelState(
                    name=e.info.name,
                    digest=e.info.digest,
                    state=state,
                    release=rel.state,
                    subject_digest=e.info.subject_digest,
                    attestation=rel.attestation,
                )
            )
        return out

    async def ReloadAttestations(
        self, request: apb.ReloadAttestationsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ReloadAttestationsResponse:
        async def reloaded(caller: Caller) -> apb.ReloadAttestationsResponse:
            pool = self._state.pool
            infos = [e.info for e in pool.all()] if pool is not None else []
            # Verifying signatures reads files: off the event loop.
            files, rejected = await asyncio.to_thread(self._state.releases.reload, infos)
            log.info("attestations reloaded by %s: %d files, %d rejected", caller.principal.id, files, rejected)
            return apb.ReloadAttestationsResponse(files=files, rejected=rejected, models=self._model_states())

        return await self._arun("ReloadAttestations", context, reloaded)

    async def CheckDrift(
        self, request: apb.CheckDriftRequest, context: grpc.aio.ServicerContext
    ) -> apb.CheckDriftResponse:
        async def report(caller: Caller) -> apb.CheckDriftResponse:
            if not self._state.settings.assurance.drift.enabled:
                raise FailedPrecondition(public="drift monitoring is off (assurance.drift.enabled = false)")
            results = []
            for m in list(self._state.drift.values()):  # a check runs the engine for seconds
                try:
                    results.append(await m.check())
                except BastionError:
                    results.append(m.state)
            return apb.CheckDriftResponse(models=[_drift_status(s) for s in results])

        return await self._arun("CheckDrift", context, report)

    async def ResetDriftBaseline(
        self, request: apb.ResetDriftBaselineRequest, context: grpc.aio.ServicerContext
    ) -> apb.ResetDriftBaselineResponse:
        async def reset(caller: Caller) -> apb.ResetDriftBaselineResponse:
            model, reason = _model_and_reason(request)
            if not self._state.settings.assurance.drift.enabled:
                raise FailedPrecondition(public="drift monitoring is off (assurance.drift.enabled = false)")
            monitor = self._state.drift.get(model)
            if monitor is None:
                raise NotFound(public="model not found")
            if not self._state.releases.attested(model):
                raise FailedPrecondition(
                    "drift reset refused: the served digest has no PASSED attestation",
                    public="the served digest has no PASSED attestation: evaluate it before resetting its baseline",
                )
            # Durable before anything changes: the next start reads this record (no baseline expected).
            await self._state.recorder.admin_decision(
                DRIFT_BASELINE_RESET,
                request_id=caller.request_id,
                method=caller.method,
                peer=caller.peer,
                principal=caller.principal,
                model=model,
                model_digest=monitor.engine.info.digest,
                reason=reason,
            )
            log.warning("model %s: drift baseline reset by %s", model, caller.principal.id)
            return apb.ResetDriftBaselineResponse(drift=_drift_status(await monitor.reset(reason)))

        return await self._arun("ResetDriftBaseline", context, reset)

    async def LiftQuarantine(
        self, request: apb.LiftQuarantineRequest, context: grpc.aio.ServicerContext
    ) -> apb.LiftQuarantineResponse:
        async def lift(caller: Caller) -> apb.LiftQuarantineResponse:
            model, reason = _model_and_reason(request)
            releases, pool = self._state.releases, self._state.pool
            served = [e.info.digest for e in pool.all() if e.info.name == model] if pool is not None else []

            async def decide() -> None:  # checked, recorded and applied while no other quarantine decision runs
                if releases.release(model).state != QUARANTINED:
                    raise FailedPrecondition(
                        "lift refused: the model is not quarantined", public="the model is not quarantined"
                    )
                # Durable before the quarantine ends: the server re-derives quarantines from these records.
                await self._state.recorder.admin_decision(
                    QUARANTINE_LIFTED,
                    request_id=caller.request_id,
                    method=caller.method,
                    peer=caller.peer,
                    principal=caller.principal,
                    model=model,
                    model_digest=served[0] if served else "",
                    reason=reason,
                )
                releases.lift_quarantine(model)

            await releases.decide(decide)
            log.warning("model %s: quarantine lifted by %s", model, caller.principal.id)
            return apb.LiftQuarantineResponse(models=self._model_states())

        return await self._arun("LiftQuarantine", context, lift)


def _drift_status(s: DriftState) -> apb.DriftStatus:
    return apb.DriftStatus(
        model=s.model,
        status=s.status,
        delta=s.delta,
        tolerance=s.tolerance,
        noise_floor=s.noise_floor,
        baseline_digest=s.baseline_digest,
        checks=s.checks,
        alerts=s.alerts,
        seconds=s.seconds,
    )


def _model_and_reason(request: apb.LiftQuarantineRequest | apb.ResetDriftBaselineRequest) -> tuple[str, str]:
    """An admin decision's model name and its required reason, each checked for length and printability."""
    model, reason = request.model, request.reason
    if not 0 < len(model) <= MAX_MODEL_NAME or not model.isprintable():
        raise InvalidArgument("model", f"1 to {MAX_MODEL_NAME} printable characters")
    if not 0 < len(reason) <= MAX_LIFT_REASON or not reason.isprintable():
        raise InvalidArgument("reason", f"1 to {MAX_LIFT_REASON} printable characters, required")
    return model, reason
