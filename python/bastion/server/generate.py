"""Streaming one generation from the engine to the client, and ending it cleanly in every case.

The stream's ``begin`` audit record (``before_first``) is appended while the engine computes the first
token and is awaited before the first message is written: no text reaches the client before a durable
record of the call exists (if the append fails, the call fails and nothing was sent). Whatever the ending,
that append has finished before this returns or raises, so the call's final record always follows it.

Endings:
  * the engine finishes: the last message carries finish_reason, usage and the model digest;
  * the client cancels or its deadline passes: grpc.aio cancels the handler task; the CancelledError
    propagates and the engine request is aborted and its iterator closed on the way out;
  * shutdown past the grace period (``Ticket.request_abort``): the engine request is aborted and the
    client gets a final message with FINISH_REASON_ABORT and the usage so far, then status OK;
  * the engine raises: the error propagates to the servicer (UNAVAILABLE when the engine is dead);
  * the client stops reading: a message that HTTP/2 flow control keeps from being sent for
    ``write_timeout`` seconds (``server.stream_write_timeout_s``; ``bastion.server.write_deadline``, one timer per
    stream) ends the stream with :class:`Unavailable`;
    the engine request is aborted here and the servicer releases the slots and records the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from bastion.engine.protocol import Engine, EngineOutput, EngineRequest, SamplingSpec
from bastion.errors import EngineError
from bastion.observability.telemetry import RpcRecord, Telemetry
from bastion.server import convert
from bastion.server.admission import Ticket
from bastion.server.call import CallContext
from bastion.server.write_deadline import WriteDeadline
from bastion.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)


async def _release(engine: Engine, request_id: str, it: AsyncIterator[EngineOutput], finished: bool) -> None:
    """Aborts an unfinished engine request and closes its iterator; never raises."""
    if not finished:
        try:
            await engine.abort(request_id)
        except Exception:
            log.warning("engine abort failed", exc_info=log.isEnabledFor(logging.DEBUG))
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.debug("closing the engine stream failed", exc_info=True)


async def _write(context: CallContext, msg: pb.GenerateResponse, deadline: WriteDeadline | None) -> None:
    """Writes one message; :class:`Unavailable` when the client has not taken it within the write timeout."""
    if deadline is None:
        await context.write(msg)
    else:
        await deadline.write(context.write(msg))


async def _settled(task: asyncio.Future[object]) -> None:
    """Waits for ``task`` to finish; never raises (its failure is the call's only when it is awaited itself)."""
    try:
        await task
    except (Exception, asyncio.CancelledError):  # noqa: BLE001 - the outcome is read (or not) by the stream
        return


async def stream_generation(
    engine: Engine,
    request_id: str,
    prompt_token_ids: Sequence[int],
    sampling: SamplingSpec,
    context: CallContext,
    ticket: Ticket,
    rec: RpcRecord,
    telemetry: Telemetry,
    before_final: Callable[[str], Awaitable[None]],
    cache_salt: str | None = None,
    adapter: str | None = None,
    *,
    before_first: Callable[[], Awaitable[object]],
    write_timeout: float | None = None,
) -> str:
    """Streams the generation; returns the finish reason ("stop", "length" or "abort").

    ``before_first()`` appends the ``begin`` audit record; it runs beside the engine's first step and has
    completed before any message is written; if it raises, nothing is sent and the error is the call's.
    ``before_final(finish_reason)`` runs before the final message is written (the audit record is
    appended there, so no stream completes without its record); if it raises, no final message is sent.
    """
    digest = engine.info.digest
    rec.prompt_tokens = len(prompt_token_ids)
    it = engine.generate(EngineRequest(request_id, tuple(prompt_token_ids), sampling, cache_salt, adapter))
    finished = False
    shutdown = False
    first = True
    begun: asyncio.Future[object] = asyncio.ensure_future(before_first())
    deadline = WriteDeadline(write_timeout) if write_timeout is not None else None
    try:
        while not ticket.abort_requested:
            ticket.cancellable = True
            try:
                out = await anext(it)
            except StopAsyncIteration:
                raise EngineError("engine stream ended without a final output") from None
            finally:
                ticket.cancellable = False
            rec.prompt_tokens = out.prompt_tokens or rec.prompt_tokens
            rec.completion_tokens = out.completion_tokens or rec.completion_tokens + len(out.token_ids)
            rec.cached_tokens = out.cached_prompt_tokens or rec.cached_tokens
            rec.replica = out.replica or rec.replica
            if out.text:
                rec.completion_parts.append(out.text)
            if first:
                await asyncio.shield(begun)  # the begin record is durable before the first message
            msg = convert.delta(request_id, out, digest=digest if first or out.finished else "")
            first = False
            if out.finished:
                finished = True
                msg.finish_reason = convert.finish_reason(out.finish_reason)
                msg.usage.CopyFrom(convert.usage(rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens))
            telemetry.tokens(rec, len(out.token_ids))
            if finished:
                ticket.cancellable = False
                await before_final(out.finish_reason or "stop")
            await _write(context, msg, deadline)
            if finished:
                return out.finish_reason or "stop"
        shutdown = True  # asked to stop while writing: the loop condition ended it
    except asyncio.CancelledError:
        if not ticket.abort_requested:
            raise  # the client cancelled or its deadline passed
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        shutdown = True
    finally:
        if deadline is not None:
            deadline.close()
        await asyncio.shield(_release(engine, request_id, it, finished))
        await asyncio.shield(_settled(begun))  # so the call's final record follows its begin record
    # Shutdown past the grace period: end the stream with an explicit ABORT and the usage so far.
    assert shutdown
    log.info("generation aborted by shutdown after %d tokens", rec.completion_tokens)
    final = pb.GenerateResponse(
        request_id=request_id,
        finish_reason=pb.FINISH_REASON_ABORT,
        usage=convert.usage(rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens),
        model_digest=digest,
    )
    await begun  # finished (above); its failure is the call's before anything is sent
    await before_final("abort")
    try:
        await _write(context, final, deadline)
    finally:
        if deadline is not None:
            deadline.close()
    return "abort"
