"""The ``bastion.v1.Inference`` servicer: validation, admission, engine calls, status mapping.

Every RPC gets a server-generated request id, sent in the initial metadata (``x-request-id``), on
every GenerateResponse, in the trailing metadata of errors, in logs (contextvar) and on the span.
Errors reach the client as ``grpc_status(exc)`` (``bastion.server.status``); anything unexpected becomes
INTERNAL with the text ``internal error (request_id=...)`` and nothing else.

The auth interceptor has already authenticated the caller and mapped it to a tenant
(:func:`current_caller`); here the tenant's policy is enforced (model allowed, per-request token cap,
streams, rate limits) and every RPC ends with exactly one audit record, appended (durably) before the
final response or status is sent; a Generate stream's ``begin`` record is durable before its first delta
(``bastion.server.generate``). A failing audit log fails the call (UNAVAILABLE); so does a failing content
log for a tenant that opted in (INTERNAL, with its record).
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from dataclasses import replace
from typing import Any, NoReturn

import grpc

from bastion.assurance.drift import DriftMonitor
from bastion.assurance.release import ReleaseBook
from bastion.audit.content import ContentStore
from bastion.audit.errors import ContentLogError
from bastion.config import Settings
from bastion.engine.protocol import Engine, EnginePool
from bastion.errors import BastionError, NotFound, Unavailable
from bastion.isolation.tag import PartitionTag
from bastion.observability.logs import request_id_var
from bastion.observability.telemetry import RpcRecord, Telemetry
from bastion.server import convert
from bastion.server.admission import Admission, Ticket
from bastion.server.audit_recorder import AuditRecorder, is_decision
from bastion.server.call import CallContext
from bastion.server.caller import Caller, current_caller
from bastion.server.generate import stream_generation
from bastion.server.ids import REQUEST_ID_METADATA_KEY, new_request_id
from bastion.server.interceptor import abort_metadata
from bastion.server.public_prefixes import PublicPrefixMatcher
from bastion.server.status import grpc_status, internal_message
from bastion.server.validation import InputSpec, fit_context, prompt_token_bound, validate_generate, validate_input
from bastion.tenancy.guard import TenantGuard
from bastion.tenancy.partition import PartitionKeys
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

NOT_READY = "model engine is not ready"
SHUTTING_DOWN = "server is shutting down"


class ServerState:
    """What the servicers share with the app: the pool (set once loaded), admission, tenancy, audit."""

    def __init__(
        self,
        settings: Settings,
        guard: TenantGuard,
        recorder: AuditRecorder,
        content: ContentStore | None = None,
        partition: PartitionKeys | None = None,
        releases: ReleaseBook | None = None,
    ) -> None:
        self.settings = settings
        self.pool: EnginePool | None = None
        srv = settings.server
        self.admission = Admission(srv.max_inflight_requests, srv.tenant_admission_share, srv.assurance_reserved_slots)
        self.guard = guard
        self.recorder = recorder
        # Opt-in per-tenant content logging (tenancy policy content_logging); None: never.
        self.content = content
        # Per-tenant prefix-cache partition keys; required to generate (fails closed without).
        self.partition = partition
        # The go-live gate: which models and adapters tenants may call (bastion.assurance.release).
        self.releases = releases or ReleaseBook(settings.assurance, settings.cache_dir)
        # model name -> its drift monitor (bastion.assurance.drift), set once the pool is loaded.
        self.drift: dict[str, DriftMonitor] = {}
        # model name -> its continuous red-team scheduler (bastion.assurance.redteam).
        self.redteam: dict[str, Any] = {}


def prompt_text(spec: InputSpec) -> str:
    """The text whose keyed HMAC the audit record carries: the raw prompt, or the conversation as JSON."""
    if spec.prompt is not None:
        return spec.prompt
    turns = spec.conversation or ()
    return json.dumps([[t.role, t.content] for t in turns], ensure_ascii=False, separators=(",", ":"))


def _where(exc: BaseException) -> str:
    """file:line of the innermost frame; enough to find a bug without logging the message text."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"


class InferenceServicer(pb_grpc.InferenceServicer):
    def __init__(self, state: ServerState, telemetry: Telemetry) -> None:
        self._state = state
        self._limits = state.settings.limits
        self._telemetry = telemetry
        self._guard = state.guard
        self._recorder = state.recorder
        self._public = PublicPrefixMatcher()
        self._write_timeout = state.settings.server.stream_write_timeout_s

    async def _partition_tag(self, caller: Caller, engine: Engine, spec: InputSpec, ids: list[int]) -> str:
        """The engine-side partition of this request: tenant key (KV budget), cache key (the tenant's, or the
        principal's under ``prefix_cache_scope = "principal"``; derived here, never from the request), public
        prefix length, KV budget."""
        partition = self._state.partition
        if partition is None:  # fails closed: no generation without a partition
            raise Unavailable("no prefix-cache partition keys")
        limits = caller.assignment.limits
        public = await self._public.public_tokens(
            self._guard.policy.public_prefixes, engine, engine.info.name, spec.prompt, spec.conversation, ids
        )
        tag = PartitionTag(
            partition.salt_for(caller.tenant),
            public,
            limits.kv_reserved_blocks,
            limits.kv_max_blocks,
            cache_key=partition.cache_key(caller.tenant, caller.principal.id, limits.prefix_cache_scope),
        )
        return tag.encode()

    def _engine(self, model: str) -> Engine:
        pool = self._state.pool
        if pool is None:
            raise Unavailable(public=NOT_READY)
        engine = pool.get(model)  # NotFound
        if engine.is_dead() or not engine.is_ready():
            raise Unavailable(public=NOT_READY)
        return engine

    async def _begin(self, context: CallContext, *, send_id: bool = True) -> tuple[str, Caller]:
        """The call's request id and caller; ``send_id``: send the id as initial metadata now (Generate sends
        it once admitted: a refusal before carries it in its trailing metadata only, so the call stays
        uncommitted and gRPC's retry policy on the client may try it again after the server's delay)."""
        caller = current_caller()  # set by the auth interceptor; fails closed without it
        rid = caller.request_id or new_request_id()
        request_id_var.set(rid)  # this RPC's task has its own context
        if send_id:
            await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, rid),))
        return rid, caller

    async def _audit(
        self,
        caller: Caller,
        rec: RpcRecord,
        code: grpc.StatusCode,
        *,
        finish: str = "",
        prompt: str | None = None,
        exc: BaseException | None = None,
    ) -> None:
        """Appends this RPC's one audit record (durable when this returns; a Generate stream's ``begin`` record
        precedes it). A tenant's opted-in content is kept first; when that fails, the record says so (status
        INTERNAL) and :class:`ContentLogError` is raised once it is durable: the call fails, with its record.
        ``rec.audited`` is set only when nothing can stop the append any more (the content write is an await a
        cancellation can interrupt; the append, once submitted, is not withdrawn)."""
        if rec.audited:
            return
        retention = ""
        content_error: ContentLogError | None = None
        opt_in = caller.assignment.limits.content_logging
        if opt_in.enabled and self._state.content is not None and prompt is not None and code == grpc.StatusCode.OK:
            try:
                await asyncio.to_thread(
                    self._state.content.write, caller.tenant, rec.request_id, prompt, "".join(rec.completion_parts)
                )
                retention = f"{opt_in.retention_days}d"
            except Exception as err:  # noqa: BLE001 - any failure to keep the content fails the call, with its record
                log.error("%s: content logging failed: %s at %s", rec.method, type(err).__name__, _where(err))
                content_error = ContentLogError(f"content logging failed ({type(err).__name__})")
                code, finish, exc = grpc.StatusCode.INTERNAL, "", content_error
                rec.code = code
        rec.audited = True
        if exc is not None and is_decision(exc):
            self._guard.deny(caller.tenant, rate_limited=code == grpc.StatusCode.RESOURCE_EXHAUSTED)
            await self._recorder.denied(
                request_id=rec.request_id,
                method=caller.method,
                peer=caller.peer,
                principal=caller.principal,
                tenant=caller.tenant,
                exc=exc,
                model=rec.model,
            )
            return
        await self._recorder.request(
            request_id=rec.request_id,
            method=caller.method,
            peer=caller.peer,
            principal=caller.principal,
            tenant=caller.tenant,
            status=code,
            started=rec.start,
            model=rec.model,
            model_digest=rec.digest,
            adapter=rec.adapter,
            adapter_digest=rec.adapter_digest,
            client_request_id=rec.client_request_id,
            prompt_tokens=rec.prompt_tokens,
            completion_tokens=rec.completion_tokens,
            cached_tokens=rec.cached_tokens,
            finish_reason=finish,
            prompt_text=prompt,
            completion_text="".join(rec.completion_parts) if prompt is not None else None,
            reason=(exc.detail or "")[:200] if isinstance(exc, BastionError) and code != grpc.StatusCode.OK else "",
            retention=retention,
            replica=rec.replica,
        )
        if content_error is not None:
            raise content_error

    async def _fail(
        self,
        context: CallContext,
        rec: RpcRecord,
        exc: Exception,
        engine: Engine | None,
        caller: Caller,
        prompt: str | None = None,
    ) -> None:
        code, message = grpc_status(exc)
        if code != grpc.StatusCode.INTERNAL:
            log.info("%s refused: %s %s", rec.method, code.name, message)
        elif engine is not None and engine.is_dead():
            code, message = grpc.StatusCode.UNAVAILABLE, "model engine is unavailable"
            log.error("%s failed: the engine for model %s died", rec.method, rec.model)
        else:
            code, message = grpc.StatusCode.INTERNAL, internal_message(rec.request_id)
            # One line at ERROR (type and place, not the text, which could quote input); details at DEBUG.
            log.error("%s failed: internal error %s at %s", rec.method, type(exc).__name__, _where(exc))
            log.debug("%s internal error detail", rec.method, exc_info=exc)
        rec.code = code
        try:
            await self._audit(caller, rec, code, prompt=prompt, exc=exc)
        except Exception as audit_exc:  # noqa: BLE001 - the audit log failed: fail closed with its status
            code, message = grpc_status(audit_exc)
            if code == grpc.StatusCode.INTERNAL:
                message = internal_message(rec.request_id)
            rec.code = code
        await context.abort(code, message, trailing_metadata=abort_metadata(rec.request_id, exc))

    async def _cancelled(self, context: CallContext, rec: RpcRecord, caller: Caller, prompt: str | None = None) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        rec.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        log.info("%s %s by the client", rec.method, "deadline exceeded" if expired else "cancelled")
        # The task is being cancelled: the record is still written (shielded), nothing is answered.
        try:
            await asyncio.shield(self._audit(caller, rec, rec.code, prompt=prompt))
        except (BastionError, asyncio.CancelledError):
            log.error("%s: audit record for a cancelled call was not confirmed", rec.method)

    @staticmethod
    def _shutdown_cancel(ticket: Ticket, exc: asyncio.CancelledError) -> NoReturn:
        """Turns our own shutdown cancellation into an UNAVAILABLE error; re-raises a client's."""
        if not ticket.abort_requested:
            raise exc
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise Unavailable(public=SHUTTING_DOWN)

    async def Generate(self, request: pb.GenerateRequest, context: CallContext) -> None:
        rid, caller = await self._begin(context, send_id=False)
        with self._telemetry.rpc("Generate", rid, caller, context.invocation_metadata() or ()) as rec:
            engine: Engine | None = None
            prompt: str | None = None
            try:
                spec = validate_generate(request, self._limits)
                rec.client_request_id = spec.client_request_id
                rec.model = spec.input.model
                prompt = prompt_text(spec.input)
                self._guard.check_model(caller.assignment, spec.input.model)
                if spec.adapter is not None:  # the policy first: nothing about others' adapters leaks
                    self._guard.check_adapter(caller.assignment, spec.adapter)
                engine = self._engine(spec.input.model)
                info = engine.info
                rec.resolve(info.name, info.digest)
                if spec.adapter is not None and spec.adapter not in info.adapters:
                    raise NotFound(public="adapter not found for the model")
                if spec.adapter is not None:
                    rec.adapter, rec.adapter_digest = spec.adapter, info.adapter_digest(spec.adapter) or ""
                self._state.releases.check(caller.assignment.roles, info.name, spec.adapter)
                cap = caller.assignment.limits.max_tokens_per_request
                if not spec.max_tokens_explicit and spec.sampling.max_tokens > cap:
                    spec = replace(spec, sampling=replace(spec.sampling, max_tokens=cap))
                # The tenant's limits first, on an upper bound of the prompt's tokens: a tenant over its
                # rate or stream limit never takes an admission slot or the tokenizer.
                bound = prompt_token_bound(spec.input)
                with (
                    self._guard.stream(caller.assignment, bound, spec.sampling.max_tokens, estimate=True) as lease,
                    self._state.admission.admit(rid, counted=True, tenant=caller.tenant) as ticket,
                ):
                    await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, rid),))  # admitted
                    try:
                        ids = await engine.tokenize(
                            spec.input.prompt,
                            spec.input.conversation,
                            raw_special_tokens=caller.assignment.limits.raw_special_tokens,
                        )
                    except asyncio.CancelledError as exc:
                        self._shutdown_cancel(ticket, exc)
                    sampling = fit_context(spec, len(ids), info.max_context, self._limits.max_prompt_logprobs_tokens)
                    lease.adjust(len(ids), sampling.max_tokens)  # the real charge: refunds the estimate's excess
                    if ticket.abort_requested:
                        raise Unavailable(public=SHUTTING_DOWN)
                    text = prompt

                    async def before_first() -> None:
                        await self._recorder.begin(
                            request_id=rid,
                            method=caller.method,
                            peer=caller.peer,
                            principal=caller.principal,
                            tenant=caller.tenant,
                            model=rec.model,
                            model_digest=rec.digest,
                            adapter=rec.adapter,
                            adapter_digest=rec.adapter_digest,
                            client_request_id=rec.client_request_id,
                            prompt_tokens=len(ids),
                            prompt_text=text,
                        )

                    async def before_final(finish: str) -> None:
                        lease.settle(rec.prompt_tokens, rec.completion_tokens)
                        await self._audit(caller, rec, grpc.StatusCode.OK, finish=finish, prompt=text)

                    tag = await self._partition_tag(caller, engine, spec.input, ids)
                    lease.start()
                    finish = await stream_generation(
                        engine,
                        rid,
                        ids,
                        sampling,
                        context,
                        ticket,
                        rec,
                        self._telemetry,
                        before_final,
                        tag,
                        spec.adapter,
                        before_first=before_first,
                        write_timeout=self._write_timeout,
                    )
                log.info(
                    "generate done tenant=%s model=%s client_id=%s prompt_tokens=%d completion_tokens=%d finish=%s",
                    caller.tenant,
                    rec.model,
                    rec.client_request_id or "-",
                    rec.prompt_tokens,
                    rec.completion_tokens,
                    finish,
                )
            except asyncio.CancelledError:
                await self._cancelled(context, rec, caller, prompt)
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is mapped, none leaks
                await self._fail(context, rec, exc, engine, caller, prompt)

    async def Tokenize(self, request: pb.TokenizeRequest, context: CallContext) -> pb.TokenizeResponse:
        rid, caller = await self._begin(context)
        with self._telemetry.rpc("Tokenize", rid, caller, context.invocation_metadata() or ()) as rec:
            engine: Engine | None = None
            try:
                spec = validate_input(request, self._limits)
                rec.model = spec.model
                self._guard.check_model(caller.assignment, spec.model)
                engine = self._engine(spec.model)
                rec.resolve(engine.info.name, engine.info.digest)
                self._state.releases.check(caller.assignment.roles, engine.info.name, None)
                self._guard.take_request(caller.assignment)
                with self._state.admission.admit(rid, counted=False) as ticket:
                    try:
                        ids = await engine.tokenize(
                            spec.prompt,
                            spec.conversation,
                            raw_special_tokens=caller.assignment.limits.raw_special_tokens,
                        )
                    except asyncio.CancelledError as exc:
                        self._shutdown_cancel(ticket, exc)
                rec.prompt_tokens = len(ids)
                await self._audit(caller, rec, grpc.StatusCode.OK, prompt=prompt_text(spec))
                return pb.TokenizeResponse(token_ids=ids, max_context=engine.info.max_context)
            except asyncio.CancelledError:
                await self._cancelled(context, rec, caller)
                raise
            except Exception as exc:  # noqa: BLE001 - _fail maps it to a status, audits the call and re-raises
                await self._fail(context, rec, exc, engine, caller)
        raise AssertionError("unreachable")  # _fail always raises

    async def ListModels(self, request: pb.ListModelsRequest, context: CallContext) -> pb.ListModelsResponse:
        rid, caller = await self._begin(context)
        with self._telemetry.rpc("ListModels", rid, caller, context.invocation_metadata() or ()) as rec:
            try:
                pool = self._state.pool
                if pool is None:
                    raise Unavailable(public=NOT_READY)
                self._guard.take_request(caller.assignment)
                limits = caller.assignment.limits
                # A tenant sees only the models its policy allows.
                releases = self._state.releases
                models = [
                    convert.model_info(
                        e.info,
                        releases.release(e.info.name).state,
                        [
                            (a, d, releases.adapter_release(e.info.name, a).state)
                            for a, d in e.info.adapter_digests
                            if limits.allows_adapter(a)
                        ],
                    )
                    for e in pool.all()
                    if limits.allows_model(e.info.name)
                ]
                await self._audit(caller, rec, grpc.StatusCode.OK)
                return pb.ListModelsResponse(models=models)
            except Exception as exc:  # noqa: BLE001 - _fail maps it to a status, audits the call and re-raises
                await self._fail(context, rec, exc, None, caller)
        raise AssertionError("unreachable")
