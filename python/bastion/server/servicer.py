"""The ``bastion.v1.Inference`` servicer: validation, admission, engine calls, status mapping.

Every RPC gets a server-generated request id, sent in the initial metadata (``x-request-id``), on
every GenerateResponse, in the trailing metadata of errors, in logs (contextvar) and on the span.
Errors reach the client as ``grpc_status(exc)``; anything unexpected becomes INTERNAL with the text
``internal error (request_id=...)`` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import NoReturn

import grpc

from bastion.config import Settings
from bastion.engine.protocol import Engine, EnginePool
from bastion.errors import BastionError, Unavailable
from bastion.observability.logs import request_id_var
from bastion.observability.telemetry import RpcRecord, Telemetry
from bastion.server import convert
from bastion.server.admission import Admission, Ticket
from bastion.server.generate import stream_generation
from bastion.server.ids import REQUEST_ID_METADATA_KEY, new_request_id
from bastion.server.validation import fit_context, validate_generate, validate_input
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

NOT_READY = "model engine is not ready"
SHUTTING_DOWN = "server is shutting down"


class ServerState:
    """What the servicer shares with the app: the pool (set once loaded) and admission."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: EnginePool | None = None
        self.admission = Admission(settings.server.max_inflight_requests)


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

    def _engine(self, model: str) -> Engine:
        pool = self._state.pool
        if pool is None:
            raise Unavailable(NOT_READY)
        engine = pool.get(model)  # NotFound
        if engine.is_dead() or not engine.is_ready():
            raise Unavailable(NOT_READY)
        return engine

    async def _begin(self, context: grpc.aio.ServicerContext) -> str:
        rid = new_request_id()
        request_id_var.set(rid)  # this RPC's task has its own context
        await context.send_initial_metadata(((REQUEST_ID_METADATA_KEY, rid),))
        return rid

    async def _fail(
        self, context: grpc.aio.ServicerContext, rec: RpcRecord, exc: Exception, engine: Engine | None
    ) -> None:
        if isinstance(exc, BastionError) and exc.code != grpc.StatusCode.INTERNAL:
            code, message = exc.code, exc.public_message
            log.info("%s refused: %s %s", rec.method, code.name, message)
        elif engine is not None and engine.is_dead():
            code, message = grpc.StatusCode.UNAVAILABLE, "model engine is unavailable"
            log.error("%s failed: the engine for model %s died", rec.method, rec.model)
        else:
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request_id={rec.request_id})"
            # One line at ERROR (type and place, not the text, which could quote input); details at DEBUG.
            log.error("%s failed: internal error %s at %s", rec.method, type(exc).__name__, _where(exc))
            log.debug("%s internal error detail", rec.method, exc_info=exc)
        rec.code = code
        await context.abort(code, message, trailing_metadata=((REQUEST_ID_METADATA_KEY, rec.request_id),))

    @staticmethod
    def _cancelled(context: grpc.aio.ServicerContext, rec: RpcRecord) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        rec.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        log.info("%s %s by the client", rec.method, "deadline exceeded" if expired else "cancelled")

    @staticmethod
    def _shutdown_cancel(ticket: Ticket, exc: asyncio.CancelledError) -> NoReturn:
        """Turns our own shutdown cancellation into an UNAVAILABLE error; re-raises a client's."""
        if not ticket.abort_requested:
            raise exc
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise Unavailable(SHUTTING_DOWN)

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        rid = await self._begin(context)
        with self._telemetry.rpc("Generate", rid) as rec:
            engine: Engine | None = None
            try:
                spec = validate_generate(request, self._limits)
                rec.client_request_id = spec.client_request_id
                engine = self._engine(spec.input.model)
                info = engine.info
                rec.model, rec.digest = info.name, info.digest
                with self._state.admission.admit(rid, counted=True) as ticket:
                    try:
                        ids = await engine.tokenize(spec.input.prompt, spec.input.conversation)
                    except asyncio.CancelledError as exc:
                        self._shutdown_cancel(ticket, exc)
                    sampling = fit_context(spec, len(ids), info.max_context)
                    if ticket.abort_requested:
                        raise Unavailable(SHUTTING_DOWN)
                    finish = await stream_generation(
                        engine, rid, ids, sampling, context, ticket, rec, self._telemetry
                    )
                log.info(
                    "generate done model=%s client_id=%s prompt_tokens=%d completion_tokens=%d finish=%s",
                    rec.model, rec.client_request_id or "-", rec.prompt_tokens, rec.completion_tokens, finish,
                )
            except asyncio.CancelledError:
                self._cancelled(context, rec)
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is mapped, none leaks
                await self._fail(context, rec, exc, engine)

    async def Tokenize(self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext) -> pb.TokenizeResponse:
        rid = await self._begin(context)
        with self._telemetry.rpc("Tokenize", rid) as rec:
            engine: Engine | None = None
            try:
                spec = validate_input(request, self._limits)
                engine = self._engine(spec.model)
                rec.model, rec.digest = engine.info.name, engine.info.digest
                with self._state.admission.admit(rid, counted=False) as ticket:
                    try:
                        ids = await engine.tokenize(spec.prompt, spec.conversation)
                    except asyncio.CancelledError as exc:
                        self._shutdown_cancel(ticket, exc)
                return pb.TokenizeResponse(token_ids=ids, max_context=engine.info.max_context)
            except asyncio.CancelledError:
                self._cancelled(context, rec)
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, rec, exc, engine)
        raise AssertionError("unreachable")  # _fail always raises

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        rid = await self._begin(context)
        with self._telemetry.rpc("ListModels", rid) as rec:
            try:
                pool = self._state.pool
                if pool is None:
                    raise Unavailable(NOT_READY)
                return pb.ListModelsResponse(models=[convert.model_info(e.info) for e in pool.all()])
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, rec, exc, None)
        raise AssertionError("unreachable")
