"""The real engine: vLLM's v1 ``AsyncLLM`` in this process, its EngineCore and workers in child processes.

Only this package imports vllm. Start-up (55-100 s on CPU) runs in a worker thread so the gRPC server
keeps answering health checks (NOT_SERVING) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bastion.config import Settings
from bastion.engine.process import EngineProcessEnv
from bastion.engine.protocol import (
    ChatTurn,
    EngineOutput,
    EngineRequest,
    EngineStats,
    FinishReason,
    ModelInfo,
    TokenLogprobs,
)
from bastion.engine.vllm.device import Device, cpu_engine_env, resolve_dtype
from bastion.engine.vllm.figures import read_figures, stats_file
from bastion.engine.vllm.forkserver import Forkserver, engine_core_from
from bastion.engine.vllm.proof import prove
from bastion.engine.vllm.tokens import PromptTokenizer
from bastion.errors import EngineError, IntegrityError, InvalidArgument, Unavailable
from bastion.isolation.proof import IsolationProof
from bastion.models.verified import VerifiedCopy

log = logging.getLogger(__name__)

_FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


def _engine_args(settings: Settings, model_path: str, name: str, device: Device, load_format: str = "auto") -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs

    m = settings.model
    kwargs: dict[str, Any] = dict(
        # The verified copy (bastion.models.verified): config, generation config, tokenizer and chat template
        # are read from it, never from the model's own directory.
        model=model_path,
        tokenizer=model_path,
        served_model_name=name,
        dtype=resolve_dtype(m.dtype, device),
        max_model_len=m.max_model_len,
        max_num_seqs=m.max_num_seqs,
        enable_prefix_caching=m.enable_prefix_caching,
        seed=m.seed,
        tensor_parallel_size=m.tensor_parallel_size,
        disable_log_stats=True,  # vLLM's stats off: the scheduler writes bastion's figures (engine.vllm.figures)
        enable_log_requests=False,  # vLLM would log prompts; bastion never does at INFO
        trust_remote_code=False,
        load_format=load_format,
        enforce_eager=m.fast_start,  # fast start: no torch.compile, no CUDA graphs
        stream_interval=m.stream_interval,  # a floor under each call's sampling.stream_interval
    )
    if m.adapters:
        kwargs.update(enable_lora=True, max_loras=min(len(m.adapters), 8), max_lora_rank=m.max_lora_rank)
    if m.num_kv_blocks is not None:
        kwargs["num_gpu_blocks_override"] = m.num_kv_blocks
    if device == "cuda":
        kwargs["gpu_memory_utilization"] = m.gpu_memory_utilization
    return AsyncEngineArgs(**kwargs)


def lora_requests(verified: VerifiedCopy) -> dict[str, Any]:
    """Adapter name -> vLLM ``LoRARequest``. vLLM loads an adapter when a request first names it: from its
    verified copy, checked against the digest reported for it when the copy was made, so a later change to
    the original directory changes nothing."""
    from vllm.lora.request import LoRARequest

    return {a: LoRARequest(a, i + 1, str(p)) for i, (a, p) in enumerate(sorted(verified.adapters.items()))}


# Seconds the EngineCore gets to tear down after a stop before vLLM kills it. With the server's drain grace
# (server.grace_period_s, 20 s by default) it stays inside systemd's TimeoutStopSec (90 s) and Kubernetes'
# terminationGracePeriodSeconds (60 s) in deploy/.
ENGINE_TEARDOWN_S = 20.0


class VllmEngine:
    """Implements bastion.engine.protocol.Engine over vllm.v1.engine.async_llm.AsyncLLM."""

    def __init__(
        self,
        llm: Any,
        info: ModelInfo,
        figures: Path | None,
        adapters: Mapping[str, Any] | None = None,
        verified: VerifiedCopy | None = None,
        proof: IsolationProof | None = None,
    ) -> None:
        self._llm = llm
        self._proof = proof or IsolationProof()
        self._info = info
        self._figures = figures  # the stats file the EngineCore's scheduler writes (engine.vllm.figures)
        self._own_stats_dir: Path | None = None  # made for this engine (none given): removed when it stops
        self._loras = dict(adapters or {})  # adapter name -> vLLM LoRARequest
        self._verified = verified  # removed once vLLM has stopped
        self._tokens = PromptTokenizer(llm.get_tokenizer())
        self._stopped = False

    @classmethod
    async def start(
        cls,
        settings: Settings,
        verified: VerifiedCopy,
        name: str,
        digest: str,
        device: Device,
        *,
        process: EngineProcessEnv,
        subject_digest: str = "",
        core: Forkserver | None = None,
    ) -> VllmEngine:
        """``verified`` is the private copy vLLM reads the model's config, tokenizer and chat template and
        the adapters from (``bastion.models.verified``); the engine owns it from here and removes it when it
        stops (or fails to start). ``process`` is what vLLM's processes inherit from the server
        (``bastion.engine.process``): with its ``sealed`` part the weights load through the ``bastion`` load
        format from the sealed directory, bound to the attested digests; with a partition key file the
        EngineCore keys its prefix cache by tenant and runs the tenant KV scheduler. ``core``: the forkserver the
        EngineCore is started from (``bastion.engine.vllm.forkserver``; None: vLLM's own way). Without a
        ``stats_dir`` in ``process`` the engine makes one for its scheduler's figures and removes it when it stops."""
        own: Path | None = None
        if process.stats_dir is None:
            own = Path(tempfile.mkdtemp(prefix="bastion-engine-stats-"))
            process = process.model_copy(update={"stats_dir": own})
        try:
            engine = await cls._start(settings, verified, name, digest, device, process, subject_digest, core, own)
        except asyncio.CancelledError:
            raise  # _start hands the copy and the stats directory to the shutdown of the engine still being built
        except BaseException:
            verified.close()
            if own is not None:
                shutil.rmtree(own, ignore_errors=True)
            raise
        engine._own_stats_dir = own
        return engine

    @classmethod
    async def _start(
        cls,
        settings: Settings,
        verified: VerifiedCopy,
        name: str,
        digest: str,
        device: Device,
        process: EngineProcessEnv,
        subject_digest: str,
        core: Forkserver | None,
        own_stats_dir: Path | None,
    ) -> VllmEngine:
        model_path = str(verified.model)
        if device == "cpu":
            os.environ.update(cpu_engine_env(settings.model, os.environ))
        # Inherited by the EngineCore and worker processes: paths and names only, never in argv or logs.
        os.environ.update(process.to_env())
        args = _engine_args(settings, model_path, name, device, "bastion" if process.sealed is not None else "auto")

        def build() -> Any:
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM

            config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
            sched = config.scheduler_config
            if process.isolation:
                # Tenant isolation (the server named its partition key file): per-tenant KV budgets.
                sched.scheduler_cls = (
                    "bastion.engine.vllm.scheduler.AsyncTenantScheduler"
                    if sched.async_scheduling
                    else "bastion.engine.vllm.scheduler.TenantScheduler"
                )
            else:  # vLLM's scheduler, writing the engine's figures (vLLM's own statistics are off)
                sched.scheduler_cls = (
                    "bastion.engine.vllm.stats_scheduler.AsyncStatsScheduler"
                    if sched.async_scheduling
                    else "bastion.engine.vllm.stats_scheduler.StatsScheduler"
                )
            with engine_core_from(core):
                return AsyncLLM.from_vllm_config(
                    config,
                    disable_log_stats=True,  # no stat logger: vLLM computes no statistics on any step
                    enable_log_requests=False,
                )

        future = asyncio.get_running_loop().run_in_executor(None, build)
        try:
            llm = await asyncio.shield(future)
        except asyncio.CancelledError:
            # Shutdown arrived while the engine was starting: stop it as soon as it exists, then remove the copy.
            def stop(f: asyncio.Future[Any]) -> None:
                try:
                    if f.exception() is None:
                        f.result().shutdown()
                finally:
                    verified.close()
                    if own_stats_dir is not None:
                        shutil.rmtree(own_stats_dir, ignore_errors=True)

            future.add_done_callback(stop)
            raise
        proof = await prove(llm)
        if process.isolation and proof.missing():
            # Asked for tenant isolation, the engine does not have it in force: it must not serve anybody.
            await asyncio.to_thread(llm.shutdown)
            raise IntegrityError(
                "tenant isolation is configured but not in force inside the engine: "
                + ", ".join(proof.missing())
                + " not installed (is the bastion vLLM plugin installed in this environment?)"
            )
        if not proof.missing():
            log.info("tenant isolation proven inside the engine: plugin, keyed block hasher, tenant scheduler")
        max_context = int(llm.model_config.max_model_len)
        loras = lora_requests(verified)
        adapter_digests = tuple(sorted(verified.adapter_digests.items()))
        info = ModelInfo(
            name=name,
            digest=digest,
            max_context=max_context,
            device=device,
            path=model_path,
            adapters=tuple(loras),
            subject_digest=subject_digest,
            adapter_digests=adapter_digests,
        )
        log.info("engine ready: model %s (%s) on %s, context %d tokens", name, digest, device, max_context)
        figures = stats_file(process.stats_dir, name) if process.stats_dir is not None else None
        return cls(llm, info, figures, loras, verified, proof)

    @property
    def info(self) -> ModelInfo:
        return self._info

    def isolation_proof(self) -> IsolationProof:
        """What the EngineCore and its workers proved at start (``bastion.engine.vllm.proof``)."""
        return self._proof

    def is_ready(self) -> bool:
        return not self._stopped and not self._llm.errored

    def is_dead(self) -> bool:
        return bool(self._llm.errored)

    def _tokenize_sync(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, raw_special_tokens: bool
    ) -> list[int]:
        if conversation is not None:
            return self._tokens.conversation(conversation)
        assert prompt is not None
        return self._tokens.prompt(prompt, raw_special_tokens=raw_special_tokens)

    async def tokenize(
        self, prompt: str | None, conversation: Sequence[ChatTurn] | None, *, raw_special_tokens: bool = False
    ) -> list[int]:
        if self.is_dead():
            raise Unavailable()
        try:
            return await asyncio.to_thread(self._tokenize_sync, prompt, conversation, raw_special_tokens)
        except InvalidArgument:
            raise
        except Exception as exc:  # noqa: BLE001 - any template error (odd role orders, say) is the client's input
            log.debug("tokenize failed: %r", exc)
            raise InvalidArgument("conversation", "cannot be rendered with the model's chat template") from None

    def _sampling_params(self, request: EngineRequest) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        s = request.sampling
        return SamplingParams(
            n=1,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            seed=s.seed,
            stop=list(s.stop) or None,
            logprobs=s.logprobs if s.logprobs > 0 else None,
            prompt_logprobs=s.prompt_logprobs,
            ignore_eos=s.ignore_eos,
            stream_interval=s.stream_interval if s.stream_interval > 1 else None,  # vLLM takes the larger
            output_kind=RequestOutputKind.DELTA,
            skip_special_tokens=True,
        )

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError

        if self.is_dead():
            raise Unavailable()
        params = self._sampling_params(request)
        prompt = tokens_input(list(request.prompt_token_ids), cache_salt=request.cache_salt)
        prompt_tokens = len(request.prompt_token_ids)
        completion_tokens = 0
        want_prompt = request.sampling.prompt_logprobs
        try:
            lora = self._loras[request.adapter] if request.adapter else None  # the server checked it exists
            async for out in self._llm.generate(prompt, params, request.request_id, lora_request=lora):
                comp = out.outputs[0]
                ids = tuple(int(t) for t in comp.token_ids)
                first = completion_tokens == 0 and want_prompt is not None
                completion_tokens += len(ids)
                prompt_lps: tuple[TokenLogprobs, ...] = ()
                if first and out.prompt_logprobs is not None:
                    prompt_lps = _convert_logprobs(
                        request.prompt_token_ids[1:], out.prompt_logprobs[1:], want_prompt or 0, prompt=True
                    )
                    want_prompt = None
                yield EngineOutput(
                    text=comp.text,
                    token_ids=ids,
                    logprobs=_convert_logprobs(ids, comp.logprobs, request.sampling.logprobs),
                    finished=out.finished,
                    finish_reason=_FINISH.get(comp.finish_reason, "stop") if out.finished else None,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    cached_prompt_tokens=int(out.num_cached_tokens or 0),
                    prompt_logprobs=prompt_lps,
                )
        except EngineDeadError:
            raise Unavailable("engine dead") from None
        except (asyncio.CancelledError, GeneratorExit):
            raise  # AsyncLLM.generate aborts the request itself on cancel / close
        except Exception as exc:  # noqa: BLE001 - mapped to EngineError; the client gets no engine internals
            log.debug("engine generate failed: %r", exc)
            raise EngineError(f"engine error: {type(exc).__name__}") from None

    async def prompt_logprobs(self, request_id: str, token_ids: Sequence[int]) -> list[float]:
        """Teacher-forced log-probabilities: for each position i >= 1, log p(token_i | tokens_<i), read
        from the engine's own forward pass (prompt_logprobs=0, one output token, prefix cache not read;
        no cache salt, so the request lands in a partition of its own). For the drift monitor."""
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        if self.is_dead():
            raise Unavailable()
        params = SamplingParams(
            n=1,
            max_tokens=1,
            temperature=0.0,
            prompt_logprobs=0,
            skip_reading_prefix_cache=True,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        ids = [int(t) for t in token_ids]
        final = None
        async for out in self._llm.generate(tokens_input(ids), params, request_id):
            final = out
        if final is None or final.prompt_logprobs is None:
            raise EngineError("engine returned no prompt logprobs")
        values: list[float] = []
        for tok, entry in zip(ids[1:], final.prompt_logprobs[1:], strict=False):
            if entry is None or tok not in entry:
                raise EngineError("engine prompt logprobs miss a prompt token")
            values.append(float(entry[tok].logprob))
        return values

    async def abort(self, request_id: str) -> None:
        if not self.is_dead():
            await self._llm.abort(request_id)

    def stats(self) -> EngineStats:
        return read_figures(self._figures, self._llm.get_num_unfinished_requests())

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await _stop_output_handler(self._llm)
            # The server has drained its calls by now: the EngineCore aborts what is left at once and then tears
            # down (its workers, their memory). vLLM's default allows 5 s for that before it SIGKILLs the
            # EngineCore; here a CPU teardown took 5–6 s (vLLM notes GPU teardown can take longer, and a kill
            # mid-teardown can leave device memory held).
            await asyncio.to_thread(self._llm.shutdown, timeout=ENGINE_TEARDOWN_S)
        finally:
            if self._verified is not None:
                self._verified.close()
            if self._own_stats_dir is not None:
                shutil.rmtree(self._own_stats_dir, ignore_errors=True)


async def _stop_output_handler(llm: Any) -> None:
    """Cancels AsyncLLM's output handler task and waits for it. ``AsyncLLM.shutdown`` stops the EngineCore first
    and cancels the handler after; run from a thread (as it must, to keep the loop free), the handler reads the
    EngineCore's exit in between as a crash and logs an EngineDeadError traceback on every clean stop. The server
    has drained its calls before this; while any request is unfinished (a Serve replica stopped under load) the
    handler is left running, so that vLLM's own order ends those streams with the engine's error instead of leaving
    them waiting on a handler that is gone."""
    task = getattr(llm, "output_handler", None)
    if not isinstance(task, asyncio.Task) or task.done() or task.get_loop() is not asyncio.get_running_loop():
        return  # never started, already over, or another loop's (vLLM's own shutdown cancels it thread-safely)
    if llm.get_num_unfinished_requests():
        return
    task.cancel()
    await asyncio.wait({task})


def _convert_logprobs(
    ids: tuple[int, ...], logprobs: Any, k: int, *, prompt: bool = False
) -> tuple[TokenLogprobs, ...]:
    """vLLM returns, per position, the top-k entries plus the sampled (or prompt) token (ranked 1..), each with
    its decoded text. Generated tokens: nothing unless k > 0; prompt tokens (``prompt``): always the token's
    own log-probability, and k alternatives."""
    if (not k and not prompt) or not logprobs:
        return ()
    result = []
    for i, token_id in enumerate(ids):
        entry = logprobs[i] or {}
        own = entry.get(token_id)
        top = sorted(
            ((int(t), lp) for t, lp in entry.items() if lp.rank is not None and lp.rank <= k),
            key=lambda x: -float(x[1].logprob),
        )[:k]
        result.append(
            TokenLogprobs(
                token_id=token_id,
                logprob=float(own.logprob) if own is not None else float("nan"),
                top=tuple((t, float(lp.logprob)) for t, lp in top),
                token=(own.decoded_token or "") if own is not None else "",
                top_tokens=tuple(lp.decoded_token or "" for _, lp in top),
            )
        )
    return tuple(result)
