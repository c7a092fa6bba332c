"""The vLLM internals contract: every private or internal vLLM name bastion relies on, checked in one place.

bastion subclasses vLLM's scheduler, block pool, stat logger and model loader, wraps KV cache manager methods
in place, replaces the EngineCore's block hasher, calls private helpers and reads attributes of vLLM objects.
Almost none of that is vLLM's documented public API (the few public types listed, such as SamplingParams, are
here for the fields bastion passes or reads by name), so a vLLM upgrade can remove or reshape any of it, and
some of the breakage is silent (a hook that is no longer called, a wrapper whose arguments moved). ``contract_problems()``
checks the whole table below and returns every missing or changed name; ``test_vllm_internals_contract`` fails
with one message that lists them all. After a vLLM upgrade that trips it: fix the bastion module named in each
line, then update the entry here.

Kinds of entry:

- ``Api``: a module-level function, class, method, property or constant, resolved by import. Callables: the
  parameter names bastion passes or overrides (``inspect.signature``); classes: required bases and which of
  their methods may be abstract; constants: the value bastion depends on.
- ``Inst``: attributes that vLLM's constructors set, read on real instances: ``bastion.engine.vllm.offline``
  builds a real vLLM Scheduler (and with it the KV cache manager, block pool and configs) without a model.
- ``Calls`` / ``Assigns``: vLLM code that must still call (or set) a name bastion replaced, wrapped or reads,
  in the shape bastion expects, read from vLLM's source with ``ast``: otherwise bastion's hook is dead.
- behaviour checks (``_BEHAVIOUR``): dotted strings vLLM resolves by name (``scheduler_cls``), return shapes
  bastion unpacks, instance types bastion requires.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import vllm

FUNCTION, METHOD, CLASS, PROPERTY, CONSTANT = "function", "method", "class", "property", "constant"
_NO_VALUE = object()


class Problem(NamedTuple):
    name: str  # the vLLM name, dotted
    reason: str  # "missing", "parameters changed: ...", ...
    use: str  # what bastion does with it

    def __str__(self) -> str:
        return f"{self.name} ({self.reason}) [bastion: {self.use}]"


@dataclass(frozen=True)
class Api:
    path: str  # "module:qualified.name"
    kind: str
    use: str
    params: tuple[str, ...] = ()  # leading parameters, in order: what bastion passes positionally or overrides
    keywords: tuple[str, ...] = ()  # parameters bastion passes by name (must be accepted by name)
    exact: bool = False  # the whole parameter list must be `params` (bastion overrides it with that signature)
    bases: tuple[str, ...] = ()  # classes ("module:name") this class must subclass
    abstract_ok: tuple[str, ...] | None = None  # the only methods that may be abstract (bastion implements them)
    value: Any = _NO_VALUE  # the value a constant must have


@dataclass(frozen=True)
class Inst:
    owner: str  # the vLLM class whose real instance is checked (a key of _ROOTS)
    attrs: tuple[str, ...]  # dotted attribute paths bastion reads
    use: str


@dataclass(frozen=True)
class Calls:
    where: str  # "module:qualified.name" of a function or class whose source must contain the call
    call: str  # the callee as written in vLLM's source, e.g. "self.kv_cache_manager.free"
    use: str
    max_positional: int | None = None  # every such call passes at most this many positional arguments
    max_args: int | None = None  # every such call passes at most this many arguments in all


@dataclass(frozen=True)
class Assigns:
    where: str  # "module:qualified.name" of a function whose source must assign `target`
    target: str  # e.g. "self.model_config"
    use: str


Entry = Api | Inst | Calls | Assigns

_SCHED = "vllm.v1.core.sched.scheduler:Scheduler"
_KVM = "vllm.v1.core.kv_cache_manager:KVCacheManager"
_POOL = "vllm.v1.core.block_pool:BlockPool"
_UTILS = "vllm.v1.core.kv_cache_utils"
_LLM = "vllm.v1.engine.async_llm:AsyncLLM"
_LOADERS = "vllm.model_executor.model_loader"

CONTRACT: tuple[Entry, ...] = (
    # --- bastion.engine.vllm.block_hasher ---------------------------------------------------------------------
    # install() replaces this module global (vLLM imported it from kv_cache_utils) with a function of the same
    # parameters; the EngineCore must still look it up by that name when it builds its request block hasher.
    Api(
        "vllm.v1.engine.core:get_request_block_hasher",
        FUNCTION,
        "block_hasher.install() replaces it with the tenant-partitioned hasher",
        params=("hash_block_size", "caching_hash_fn"),
        exact=True,
    ),
    Calls(
        "vllm.v1.engine.core:EngineCore.__init__",
        "get_request_block_hasher",
        "block_hasher.install() patches the module global EngineCore calls (with 2 arguments)",
        max_args=2,
    ),
    # forkserver.engine_core_from replaces the module global CoreEngineProcManager takes its multiprocessing
    # context from, and the context's Process is what it starts (EngineCoreProcess applies the environment).
    Api("vllm.v1.engine.utils:get_mp_context", FUNCTION, "forkserver.engine_core_from replaces it", exact=True),
    Calls(
        "vllm.v1.engine.utils:CoreEngineProcManager.__init__",
        "get_mp_context",
        "forkserver.engine_core_from patches the module global the EngineCore's manager calls (no arguments)",
        max_args=0,
    ),
    Calls(
        "vllm.v1.engine.utils:CoreEngineProcManager.__init__",
        "context.Process",
        "the EngineCore is started as the context's Process (forkserver.EngineCoreProcess)",
    ),
    # _with_extras() calls both private helpers positionally, block by block, for multimodal / embeds requests
    # (their return shapes are behaviour checks below).
    Api(
        f"{_UTILS}:_gen_mm_extra_hash_keys",
        FUNCTION,
        "block_hasher._with_extras calls it per block for multimodal keys",
        params=("request", "start_token_idx", "end_token_idx", "start_mm_idx"),
    ),
    Api(
        f"{_UTILS}:_gen_prompt_embeds_extra_hash_keys",
        FUNCTION,
        "block_hasher._with_extras calls it per block for the prompt-embeddings digest",
        params=("request", "start_token_idx", "end_token_idx"),
    ),
    Inst(
        "vllm.v1.request.Request",
        (
            "request_id",
            "cache_salt",
            "block_hashes",
            "num_tokens",
            "all_token_ids",
            "lora_request",
            "mm_features",
            "prompt_embeds",
        ),
        "block_hasher's request_block_hasher reads them to key the request's new full blocks",
    ),
    # vllm.engine builds LoRARequest(name, int id, path) positionally; the block hasher reads name and path.
    Api(
        "vllm.lora.request:LoRARequest",
        CLASS,
        "vllm.engine builds LoRARequest(name, id, path); block_hasher keys lora_name and lora_path",
        params=("lora_name", "lora_int_id", "lora_path"),
    ),
    # --- bastion.engine.vllm.scheduler -------------------------------------------------------------------------
    Api(_SCHED, CLASS, "TenantScheduler subclasses it"),
    Api(
        "vllm.v1.core.sched.async_scheduler:AsyncScheduler",
        CLASS,
        "AsyncTenantScheduler(TenantScheduler, AsyncScheduler) needs it to subclass Scheduler",
        bases=(_SCHED,),
    ),
    Api("vllm.v1.request:Request", CLASS, "scheduler.py imports it (the running list's element type)"),
    Api(
        "vllm.v1.request:RequestStatus.RUNNING",
        CONSTANT,
        "TenantScheduler hints a preemption victim only for RUNNING requests",
    ),
    Api(f"{_SCHED}.schedule", METHOD, "TenantScheduler.schedule overrides it (*args, **kwargs passed through)"),
    Api(
        f"{_SCHED}._handle_blocked_waiting_request",
        METHOD,
        "TenantScheduler overrides it as the per-tenant admission gate",
        params=("self", "request"),
        exact=True,
    ),
    Calls(
        f"{_SCHED}.schedule",
        "self._handle_blocked_waiting_request",
        "the admission gate runs only if schedule() still asks it, with the request alone",
        max_args=1,
    ),
    Api(
        f"{_SCHED}._preempt_request",
        METHOD,
        "TenantScheduler overrides it to count the tenant's preemption (request first, the rest passed through)",
        params=("self", "request"),
    ),
    Calls(f"{_SCHED}.schedule", "self._preempt_request", "preemptions are counted only if schedule() calls it"),
    Calls(
        f"{_SCHED}.schedule",
        "self.running.pop",
        "TenantScheduler's running list picks the tenant-aware victim when schedule() pops it with no index",
        max_args=0,
    ),
    # The KV cache manager's methods are wrapped in place on the instance (kvm.allocate_slots = ...).
    Api(
        f"{_KVM}.allocate_slots",
        METHOD,
        "TenantScheduler wraps it in place; the wrapper passes everything after num_new_tokens by keyword",
        params=("self", "request", "num_new_tokens"),
        keywords=(
            "num_new_computed_tokens",
            "new_computed_blocks",
            "num_lookahead_tokens",
            "num_external_computed_tokens",
            "reserved_blocks",
        ),
    ),
    Calls(
        _SCHED,
        "self.kv_cache_manager.allocate_slots",
        "TenantScheduler's allocate_slots wrapper takes only request and num_new_tokens positionally",
        max_positional=2,
    ),
    Api(
        f"{_KVM}.free",
        METHOD,
        "TenantScheduler wraps it in place to release the tenant's charge",
        params=("self", "request"),
        exact=True,
    ),
    Calls(_SCHED, "self.kv_cache_manager.free", "charges are released only through the wrapped free", max_args=1),
    Api(
        f"{_KVM}.pop_blocks_for_free",
        METHOD,
        "TenantScheduler wraps it in place to release the tenant's charge (deferred frees)",
        params=("self", "request"),
        exact=True,
    ),
    Calls(
        _SCHED,
        "self.kv_cache_manager.pop_blocks_for_free",
        "deferred frees release charges only through the wrapped pop_blocks_for_free",
        max_args=1,
    ),
    Inst(
        "vllm.v1.core.sched.scheduler.Scheduler",
        ("kv_cache_manager", "running", "vllm_config.model_config", "max_model_len", "num_lookahead_tokens"),
        "TenantScheduler reads them (running is re-wrapped every step; max_model_len and lookahead size demands)",
    ),
    Inst(
        "vllm.v1.core.kv_cache_manager.KVCacheManager",
        ("block_pool", "coordinator.single_type_managers"),
        "TenantScheduler adopts the block pool and reads each KV group's manager",
    ),
    Inst(
        "vllm.v1.core.single_type_kv_cache_manager.SingleTypeKVCacheManager",
        ("block_size", "req_to_blocks"),
        "TenantScheduler charges a request the length of its block tables (req_to_blocks) per group",
    ),
    Inst(
        "vllm.config.model.ModelConfig",
        ("served_model_name", "max_model_len"),
        "TenantScheduler names its stats file after served_model_name; vllm.engine reads max_model_len",
    ),
    Inst(
        "vllm.config.scheduler.SchedulerConfig",
        ("scheduler_cls", "async_scheduling"),
        "vllm.engine sets scheduler_cls to a dotted bastion class, picking the async one from async_scheduling",
    ),
    Api(
        "vllm.config.scheduler:SchedulerConfig.get_scheduler_cls",
        METHOD,
        "resolves the dotted scheduler_cls string vllm.engine sets",
        params=("self",),
    ),
    Calls(
        "vllm.v1.engine.core:EngineCore.__init__",
        "vllm_config.scheduler_config.get_scheduler_cls",
        "the EngineCore must build its scheduler from scheduler_cls (the tenant scheduler)",
    ),
    Inst(
        "vllm.v1.request.Request",
        ("status", "num_computed_tokens"),
        "TenantScheduler sizes a request's demand from num_computed_tokens and checks status",
    ),
    # --- bastion.engine.vllm.kv_pool ---------------------------------------------------------------------------
    Api(_POOL, CLASS, "TenantBlockPool subclasses it; adopt() swaps __class__ on the pool vLLM built"),
    Api(f"{_UTILS}:KVCacheBlock", CLASS, "kv_pool.py imports it (blocks it tracks by block_id)"),
    Api(
        f"{_POOL}.get_new_blocks",
        METHOD,
        "TenantBlockPool overrides it: records owners, puts evictable blocks first",
        params=("self", "num_blocks"),
        exact=True,
    ),
    Api(
        f"{_POOL}._maybe_evict_cached_block",
        METHOD,
        "TenantBlockPool overrides it to count evictions per tenant",
        params=("self", "block"),
        exact=True,
    ),
    Calls(
        f"{_POOL}.get_new_blocks",
        "self._maybe_evict_cached_block",
        "evictions are counted only if taking a free block goes through _maybe_evict_cached_block",
        max_args=1,
    ),
    Api(
        f"{_POOL}.touch",
        METHOD,
        "TenantBlockPool overrides it: a prefix hit un-caches the block in the ledger",
        params=("self", "blocks"),
        exact=True,
    ),
    Api(
        f"{_POOL}.free_blocks",
        METHOD,
        "TenantBlockPool overrides it: freed hashed blocks become their owner's cached blocks",
        params=("self", "ordered_blocks"),
        exact=True,
    ),
    Api(
        f"{_POOL}.reset_prefix_cache",
        METHOD,
        "TenantBlockPool overrides it: clears the per-tenant cached counts",
        params=("self",),
        exact=True,
    ),
    Api(
        f"{_POOL}.get_num_free_blocks",
        METHOD,
        "TenantBlockPool and TenantScheduler's admission gate call it",
        params=("self",),
    ),
    Calls(
        "vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager",
        "self.block_pool.get_new_blocks",
        "owners are recorded only if the KV managers allocate through the pool's get_new_blocks",
    ),
    Calls(
        "vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager",
        "self.block_pool.touch",
        "prefix hits are un-cached in the ledger only if the KV managers call the pool's touch",
    ),
    Calls(
        "vllm.v1.core.single_type_kv_cache_manager:SingleTypeKVCacheManager",
        "self.block_pool.free_blocks",
        "cached blocks are counted only if the KV managers free through the pool's free_blocks",
    ),
    Inst(
        "vllm.v1.core.block_pool.BlockPool",
        ("num_gpu_blocks", "enable_caching", "free_block_queue"),
        "TenantBlockPool sizes its owner tables and walks the free queue",
    ),
    Inst(
        "vllm.v1.core.kv_cache_utils.FreeKVCacheBlockQueue",
        ("fake_free_list_head.next_free_block", "num_free_blocks"),
        "TenantBlockPool._put_evictable_first walks the free queue from its head",
    ),
    Api(
        f"{_UTILS}:FreeKVCacheBlockQueue.remove",
        METHOD,
        "TenantBlockPool moves protected blocks to the queue's tail (remove, append)",
        params=("self", "block"),
    ),
    Api(
        f"{_UTILS}:FreeKVCacheBlockQueue.append",
        METHOD,
        "TenantBlockPool moves protected blocks to the queue's tail (remove, append)",
        params=("self", "block"),
    ),
    Inst(
        "vllm.v1.core.kv_cache_utils.KVCacheBlock",
        ("block_id", "ref_cnt", "block_hash", "pool", "is_null", "next_free_block"),
        "TenantBlockPool reads them to track owners and cached blocks",
    ),
    # --- bastion.engine.vllm.offline (tests and benchmarks) ----------------------------------------------------
    Api(
        "vllm.config:ModelConfig",
        CLASS,
        "offline.make_scheduler builds one; sealed_loader reads model and quantization",
        keywords=("model", "tokenizer", "max_model_len", "dtype", "seed", "skip_tokenizer_init", "quantization"),
    ),
    Api(
        "vllm.config:SchedulerConfig",
        CLASS,
        "offline.make_scheduler builds one",
        keywords=(
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "enable_chunked_prefill",
            "is_encoder_decoder",
        ),
    ),
    Api(
        "vllm.config:CacheConfig",
        CLASS,
        "offline.make_scheduler builds one",
        keywords=("block_size", "enable_prefix_caching"),
    ),
    Inst("vllm.config.cache.CacheConfig", ("num_gpu_blocks",), "offline.make_scheduler sets the pool size on it"),
    Api("vllm.config:DeviceConfig", CLASS, 'offline.make_scheduler builds DeviceConfig("cpu")', params=("device",)),
    Api(
        "vllm.config:VllmConfig",
        CLASS,
        "offline.make_scheduler builds one",
        keywords=("scheduler_config", "model_config", "cache_config", "device_config"),
    ),
    Api(
        "vllm.v1.kv_cache_interface:FullAttentionSpec",
        CLASS,
        "offline.make_scheduler builds the KV spec",
        keywords=("block_size", "num_kv_heads", "head_size", "dtype"),
    ),
    Api(
        "vllm.v1.kv_cache_interface:KVCacheConfig",
        CLASS,
        "offline.make_scheduler builds the KV cache config",
        keywords=("num_blocks", "kv_cache_tensors", "kv_cache_groups"),
    ),
    Api(
        "vllm.v1.kv_cache_interface:KVCacheGroupSpec",
        CLASS,
        "offline.make_scheduler builds KVCacheGroupSpec(layer_names, spec)",
        params=("layer_names", "kv_cache_spec"),
    ),
    Api(
        "vllm.v1.structured_output:StructuredOutputManager",
        CLASS,
        "offline.make_scheduler builds StructuredOutputManager(config)",
        params=("vllm_config",),
    ),
    Api(
        f"{_SCHED}.__init__",
        METHOD,
        "offline.make_scheduler builds the scheduler by keyword",
        params=("self",),
        keywords=("vllm_config", "kv_cache_config", "structured_output_manager", "block_size", "log_stats"),
    ),
    Api(
        "vllm.v1.outputs:ModelRunnerOutput",
        CLASS,
        "offline.step reports sampled tokens as the model runner would",
        keywords=("req_ids", "req_id_to_index", "sampled_token_ids"),
    ),
    Api(
        f"{_SCHED}.update_from_output",
        METHOD,
        "offline.step calls update_from_output(scheduler_output, runner_output)",
        params=("self", "scheduler_output", "model_runner_output"),
    ),
    Inst("vllm.v1.core.sched.scheduler.Scheduler", ("requests",), "offline.step looks scheduled requests up"),
    Inst(
        "vllm.v1.core.sched.output.SchedulerOutput",
        ("num_scheduled_tokens",),
        "offline.step lists the scheduled request ids from it",
    ),
    Inst("vllm.v1.request.Request", ("num_prompt_tokens",), "offline.step tells a finished prefill from a chunk"),
    # --- bastion.engine.vllm.engine --------------------------------------------------------------------------
    Api(
        "vllm.engine.arg_utils:AsyncEngineArgs",
        CLASS,
        "vllm.engine._engine_args builds it by keyword",
        keywords=(
            "model",
            "tokenizer",
            "served_model_name",
            "dtype",
            "max_model_len",
            "max_num_seqs",
            "enable_prefix_caching",
            "seed",
            "tensor_parallel_size",
            "disable_log_stats",
            "enable_log_requests",
            "trust_remote_code",
            "load_format",
            "enforce_eager",
            "enable_lora",
            "max_loras",
            "max_lora_rank",
            "num_gpu_blocks_override",
            "gpu_memory_utilization",
            "stream_interval",
        ),
    ),
    Api(
        "vllm.engine.arg_utils:AsyncEngineArgs.create_engine_config",
        METHOD,
        "vllm.engine calls create_engine_config(UsageContext.ENGINE_CONTEXT)",
        params=("self", "usage_context"),
    ),
    Api("vllm.usage.usage_lib:UsageContext.ENGINE_CONTEXT", CONSTANT, "vllm.engine passes it to create_engine_config"),
    Api(
        f"{_LLM}.from_vllm_config",
        METHOD,
        "vllm.engine starts the engine with vLLM's statistics and request logging off (no stat logger)",
        params=("vllm_config",),
        keywords=("disable_log_stats", "enable_log_requests"),
    ),
    Api(
        f"{_LLM}.generate",
        METHOD,
        "vllm.engine calls generate(prompt, params, request_id, lora_request=...)",
        params=("self", "prompt", "sampling_params", "request_id"),
        keywords=("lora_request",),
    ),
    Api(f"{_LLM}.abort", METHOD, "vllm.engine.abort calls abort(request_id)", params=("self", "request_id")),
    Api(f"{_LLM}.get_num_unfinished_requests", METHOD, "vllm.engine.stats reads it", params=("self",)),
    Api(f"{_LLM}.get_tokenizer", METHOD, "vllm.engine tokenizes with it", params=("self",)),
    Api(f"{_LLM}.shutdown", METHOD, "vllm.engine.shutdown calls it with timeout=", params=("self", "timeout")),
    Api(f"{_LLM}.errored", PROPERTY, "vllm.engine.is_ready / is_dead read it"),
    Assigns(f"{_LLM}.__init__", "self.model_config", "vllm.engine reads llm.model_config.max_model_len"),
    Assigns(f"{_LLM}._run_output_handler", "self.output_handler", "vllm.engine cancels that task before shutdown"),
    Api(
        "vllm.inputs.engine:tokens_input",
        FUNCTION,
        "vllm.engine builds every prompt with tokens_input(ids, cache_salt=partition tag)",
        params=("prompt_token_ids",),
        keywords=("cache_salt",),
    ),
    Api(
        "vllm.v1.engine.exceptions:EngineDeadError",
        CLASS,
        "vllm.engine.generate maps it to Unavailable",
        bases=("builtins:Exception",),
    ),
    Api(
        "vllm.sampling_params:SamplingParams",
        CLASS,
        "vllm.engine builds it by keyword (skip_reading_prefix_cache for the drift monitor's forced pass)",
        keywords=(
            "n",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "logprobs",
            "prompt_logprobs",
            "ignore_eos",
            "stream_interval",
            "output_kind",
            "skip_special_tokens",
            "skip_reading_prefix_cache",
        ),
    ),
    Api("vllm.sampling_params:RequestOutputKind.DELTA", CONSTANT, "vllm.engine.generate streams deltas"),
    Api("vllm.sampling_params:RequestOutputKind.FINAL_ONLY", CONSTANT, "vllm.engine.prompt_logprobs waits for the end"),
    Api(
        "vllm.outputs:RequestOutput",
        CLASS,
        "vllm.engine reads these attributes of each output",
        keywords=("outputs", "finished", "num_cached_tokens", "prompt_logprobs"),
    ),
    Api(
        "vllm.outputs:CompletionOutput",
        CLASS,
        "vllm.engine reads these attributes of outputs[0]",
        keywords=("text", "token_ids", "logprobs", "finish_reason"),
    ),
    Api(
        "vllm.logprobs:Logprob",
        CLASS,
        "vllm.engine._convert_logprobs reads logprob and rank",
        keywords=("logprob", "rank"),
    ),
    # --- bastion.engine.vllm.stats_scheduler ---------------------------------------------------------------------
    Api(
        f"{_SCHED}.update_from_output",
        METHOD,
        "EngineFigures.update_from_output overrides it (*args, **kwargs passed through), writing after each step",
    ),
    Api(
        f"{_SCHED}.finish_requests",
        METHOD,
        "EngineFigures.finish_requests overrides it (*args, **kwargs passed through), writing after an abort",
        params=("self", "request_ids", "finished_status"),
    ),
    Calls(
        "vllm.v1.engine.core:EngineCore.abort_requests",
        "self.scheduler.finish_requests",
        "an abort reaches the scheduler through finish_requests, so an engine left idle by it writes zeros",
    ),
    Api(f"{_SCHED}.get_request_counts", METHOD, "EngineFigures reads (running, waiting)", params=("self",)),
    Api(f"{_SCHED}.get_kv_cache_usage", METHOD, "EngineFigures reads the KV usage", params=("self",)),
    Api(
        "vllm.v1.core.sched.interface:SchedulerInterface.has_unfinished_requests",
        METHOD,
        "EngineFigures writes at once when the engine runs out of work",
        params=("self",),
    ),
    Inst(
        "vllm.v1.core.sched.scheduler.Scheduler",
        ("deferred_waiting", "vllm_config.model_config.served_model_name"),
        "EngineFigures reports waiting without the deferred requests, as vLLM's stats did, under the served name",
    ),
    # --- bastion.engine.vllm.sealed_loader ------------------------------------------------------------------------
    Api(
        f"{_LOADERS}:register_model_loader",
        FUNCTION,
        'sealed_loader registers load format "bastion" with register_model_loader(format)(cls)',
        params=("load_format",),
    ),
    Api(
        f"{_LOADERS}:get_model_loader",
        FUNCTION,
        "sealed_loader.loader_class() looks the registered loader up",
        params=("load_config",),
    ),
    Api(
        f"{_LOADERS}.base_loader:BaseModelLoader",
        CLASS,
        "BastionSealedLoader subclasses it and implements exactly these abstract methods",
        abstract_ok=("download_model", "load_weights"),
    ),
    Api(
        f"{_LOADERS}.base_loader:BaseModelLoader.__init__",
        METHOD,
        "BastionSealedLoader.__init__(load_config) calls super().__init__(load_config)",
        params=("self", "load_config"),
        exact=True,
    ),
    Api(
        f"{_LOADERS}.base_loader:BaseModelLoader.download_model",
        METHOD,
        "BastionSealedLoader overrides it",
        params=("self", "model_config"),
        exact=True,
    ),
    Api(
        f"{_LOADERS}.base_loader:BaseModelLoader.load_weights",
        METHOD,
        "BastionSealedLoader overrides it",
        params=("self", "model", "model_config"),
        exact=True,
    ),
    Api(
        f"{_LOADERS}.default_loader:DefaultModelLoader.track_weights_loading",
        METHOD,
        "BastionSealedLoader borrows it unbound with its own self: (self, model, loaded names)",
        params=("self", "model", "loaded_weights"),
    ),
    Api(
        "vllm.config.load:LoadConfig",
        CLASS,
        'sealed_loader builds LoadConfig(load_format="bastion") and reads model_loader_extra_config',
        keywords=("load_format", "model_loader_extra_config"),
    ),
    Api(
        "vllm.logger:DEFAULT_LOGGING_CONFIG",
        CONSTANT,
        'sealed_loader logs under "vllm.bastion.sealed_loader" to reach the handler vLLM installs on "vllm"',
    ),
    # --- bastion.engine.vllm.plugin -------------------------------------------------------------------------------
    Api(
        "vllm.plugins:DEFAULT_PLUGINS_GROUP",
        CONSTANT,
        "pyproject.toml registers bastion.engine.vllm.plugin:register under this entry-point group",
        value="vllm.general_plugins",
    ),
)


# --- resolving and checking ---------------------------------------------------------------------------------


def _dotted(path: str) -> str:
    return path.replace(":", ".").rstrip(".")


def _resolve(path: str) -> Any:
    """`module:qualified.name` -> the object; ImportError / AttributeError when any part is gone."""
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        obj = getattr(obj, part)
    return obj


def _signature_problem(obj: Any, entry: Api) -> str | None:
    if not entry.params and not entry.keywords:
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "no inspectable signature"
    names = tuple(sig.parameters)
    shown = "(" + ", ".join(names) + ")"
    want = "(" + ", ".join(entry.params) + ")"
    if entry.exact and names != entry.params:
        return f"parameters changed: bastion overrides {want}, vLLM has {shown}"
    if names[: len(entry.params)] != entry.params:
        return f"parameters changed: bastion expects {want} first, vLLM has {shown}"
    by_name = {
        p.name
        for p in sig.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    gone = [k for k in entry.keywords if k not in by_name]
    if gone:
        return f"no longer accepts keyword(s) {', '.join(gone)}; vLLM has {shown}"
    return None


def _check_api(entry: Api) -> str | None:
    try:
        obj = _resolve(entry.path)
    except (ImportError, AttributeError):
        return "missing"
    if entry.kind in (FUNCTION, METHOD):
        if isinstance(obj, type) or not callable(obj):
            return f"no longer a {entry.kind}: {type(obj).__name__}"
    elif entry.kind == CLASS:
        if not isinstance(obj, type):
            return f"no longer a class: {type(obj).__name__}"
        for base in entry.bases:
            try:
                base_cls = _resolve(base)
            except (ImportError, AttributeError):
                return f"base {_dotted(base)} missing"
            if not issubclass(obj, base_cls):
                return f"no longer a subclass of {_dotted(base)}"
        if entry.abstract_ok is not None:
            extra = sorted(set(getattr(obj, "__abstractmethods__", ())) - set(entry.abstract_ok))
            if extra:
                return f"new abstract method(s) bastion does not implement: {', '.join(extra)}"
    elif entry.kind == PROPERTY:
        if not isinstance(obj, property | types.GetSetDescriptorType):
            return f"no longer a property: {type(obj).__name__}"
    elif entry.kind == CONSTANT and entry.value is not _NO_VALUE and obj != entry.value:
        return f"value changed: bastion expects {entry.value!r}, vLLM has {obj!r}"
    return _signature_problem(obj, entry)


def _source_tree(path: str) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(_resolve(path))))


def _check_calls(entry: Calls) -> str | None:
    try:
        tree = _source_tree(entry.where)
    except (ImportError, AttributeError):
        return "missing"
    except (OSError, TypeError, SyntaxError) as exc:
        return f"source unreadable: {exc}"
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == entry.call]
    if not calls:
        return f"no longer calls {entry.call}"
    for call in calls:
        positional = len(call.args) + 99 * any(isinstance(a, ast.Starred) for a in call.args)
        total = positional + len(call.keywords) + 99 * any(k.arg is None for k in call.keywords)
        if entry.max_positional is not None and positional > entry.max_positional:
            return f"a call passes more than {entry.max_positional} positional argument(s): {_short(call)}"
        if entry.max_args is not None and total > entry.max_args:
            return f"a call passes more than {entry.max_args} argument(s): {_short(call)}"
    return None


def _short(node: ast.AST, limit: int = 100) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_assigns(entry: Assigns) -> str | None:
    try:
        tree = _source_tree(entry.where)
    except (ImportError, AttributeError):
        return "missing"
    except (OSError, TypeError, SyntaxError) as exc:
        return f"source unreadable: {exc}"
    for node in ast.walk(tree):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(ast.unparse(t) == entry.target for t in targets):
            return None
    return f"no longer sets {entry.target}"


# --- real instances (no model, no weights) -------------------------------------------------------------------

# owner label -> how to reach a real instance from (scheduler, request, scheduler output)
_ROOTS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "vllm.v1.core.sched.scheduler.Scheduler": lambda s, r, o: s,
    "vllm.v1.core.kv_cache_manager.KVCacheManager": lambda s, r, o: s.kv_cache_manager,
    "vllm.v1.core.single_type_kv_cache_manager.SingleTypeKVCacheManager": (
        lambda s, r, o: s.kv_cache_manager.coordinator.single_type_managers[0]
    ),
    "vllm.v1.core.block_pool.BlockPool": lambda s, r, o: s.kv_cache_manager.block_pool,
    "vllm.v1.core.kv_cache_utils.FreeKVCacheBlockQueue": lambda s, r, o: s.kv_cache_manager.block_pool.free_block_queue,
    "vllm.v1.core.kv_cache_utils.KVCacheBlock": lambda s, r, o: (
        s.kv_cache_manager.block_pool.free_block_queue.fake_free_list_head.next_free_block
    ),
    "vllm.config.model.ModelConfig": lambda s, r, o: s.vllm_config.model_config,
    "vllm.config.scheduler.SchedulerConfig": lambda s, r, o: s.vllm_config.scheduler_config,
    "vllm.config.cache.CacheConfig": lambda s, r, o: s.vllm_config.cache_config,
    "vllm.v1.request.Request": lambda s, r, o: r,
    "vllm.v1.core.sched.output.SchedulerOutput": lambda s, r, o: o,
}

_MISSING = object()


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


class _Real(NamedTuple):
    scheduler: Any
    request: Any
    output: Any
    problems: list[Problem]


def _build_real() -> _Real:
    """A real vLLM Scheduler (bastion.engine.vllm.offline), one offline step, a real Request."""
    from bastion.engine.vllm import offline

    use = "offline.make_scheduler / offline.step build and drive a real vLLM Scheduler"
    try:
        scheduler = offline.make_scheduler(8)
    except Exception as exc:  # noqa: BLE001 - any failure is a contract break, reported with the others
        return _Real(None, None, None, [Problem("bastion.engine.vllm.offline.make_scheduler", _fail(exc), use)])
    problems = []
    try:
        output = offline.step(scheduler)
    except Exception as exc:  # noqa: BLE001 - as above
        output = None
        problems.append(Problem("bastion.engine.vllm.offline.step", _fail(exc), use))
    try:
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        request = Request("contract", list(range(100, 140)), SamplingParams(max_tokens=1), None, cache_salt="salt")
    except Exception as exc:  # noqa: BLE001 - as above
        request = None
        problems.append(Problem("vllm.v1.request.Request", _fail(exc), "bastion reads real Request objects"))
    return _Real(scheduler, request, output, problems)


def _fail(exc: BaseException) -> str:
    return f"raised {type(exc).__name__}: {exc}"


def _check_inst(entry: Inst, real: _Real) -> list[Problem]:
    if real.scheduler is None:
        return []  # already reported: no real scheduler could be built
    try:
        root = _ROOTS[entry.owner](real.scheduler, real.request, real.output)
    except Exception as exc:  # noqa: BLE001 - the way to the instance changed: report it, keep checking
        return [Problem(entry.owner, f"no real instance to check: {_fail(exc)}", entry.use)]
    if root is None:
        return []  # its construction failed and was reported
    return [
        Problem(f"{entry.owner}.{attr}", "missing on a real instance", entry.use)
        for attr in entry.attrs
        if _get_path(root, attr) is _MISSING
    ]


# --- behaviour checks: what bastion unpacks or resolves by name ----------------------------------------------


# The dotted scheduler classes bastion.engine.vllm.engine hands vLLM, and the vLLM class each must subclass.
SCHEDULER_CLS_STRINGS = {
    "bastion.engine.vllm.scheduler.TenantScheduler": "vllm.v1.core.sched.scheduler:Scheduler",
    "bastion.engine.vllm.scheduler.AsyncTenantScheduler": "vllm.v1.core.sched.async_scheduler:AsyncScheduler",
    "bastion.engine.vllm.stats_scheduler.StatsScheduler": "vllm.v1.core.sched.scheduler:Scheduler",
    "bastion.engine.vllm.stats_scheduler.AsyncStatsScheduler": "vllm.v1.core.sched.async_scheduler:AsyncScheduler",
}


def _check_scheduler_cls_strings(real: _Real) -> list[Problem]:
    """vllm.engine sets scheduler_cls to dotted strings; vLLM's own resolver must turn each into a subclass of
    the right vLLM scheduler. The strings are read from vllm.engine's source, so a typo there fails too."""
    if real.scheduler is None:
        return []
    name = "vllm.config.scheduler.SchedulerConfig.get_scheduler_cls"
    use = "vllm.engine sets scheduler_cls to a dotted bastion scheduler"
    import bastion.engine.vllm.engine as vllm_engine

    tree = ast.parse(inspect.getsource(vllm_engine))
    found = {
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and n.value.startswith(("bastion.engine.vllm.scheduler.", "bastion.engine.vllm.stats_scheduler."))
    }
    problems = []
    if found != set(SCHEDULER_CLS_STRINGS):
        problems.append(
            Problem(
                "bastion.engine.vllm.engine",
                f"names scheduler classes {sorted(found)}, this contract checks {sorted(SCHEDULER_CLS_STRINGS)}",
                "update SCHEDULER_CLS_STRINGS with the vLLM base class each must subclass",
            )
        )
    config = real.scheduler.vllm_config.scheduler_config
    saved = config.scheduler_cls
    try:
        for dotted, base in SCHEDULER_CLS_STRINGS.items():
            try:
                config.scheduler_cls = dotted
                cls = config.get_scheduler_cls()
                base_cls = _resolve(base)
            except Exception as exc:  # noqa: BLE001 - reported with the others
                problems.append(Problem(name, f"cannot resolve {dotted!r}: {_fail(exc)}", use))
                continue
            if not (
                isinstance(cls, type) and issubclass(cls, base_cls) and f"{cls.__module__}.{cls.__qualname__}" == dotted
            ):
                problems.append(Problem(name, f"{dotted!r} resolves to {cls!r}, not a {_dotted(base)}", use))
    finally:
        config.scheduler_cls = saved
    return problems


def _check_scheduler_shapes(real: _Real) -> list[Problem]:
    if real.scheduler is None:
        return []
    problems = []
    running = getattr(real.scheduler, "running", None)
    if type(running) is not list:
        problems.append(
            Problem(
                "vllm.v1.core.sched.scheduler.Scheduler.running",
                f"is a {type(running).__name__}, not a list",
                "TenantScheduler re-wraps the running list as a list subclass",
            )
        )
    pool = _get_path(real.scheduler, "kv_cache_manager.block_pool")
    if pool is not _MISSING:
        from vllm.v1.core.block_pool import BlockPool

        if type(pool) is not BlockPool:
            problems.append(
                Problem(
                    "vllm.v1.core.kv_cache_manager.KVCacheManager.block_pool",
                    f"is a {type(pool).__name__}, not exactly a BlockPool",
                    "TenantBlockPool.adopt refuses any other class",
                )
            )
    return problems


def _check_mm_keys(real: _Real) -> list[Problem]:
    """block_hasher unpacks `for _, identifier, offset in keys` and carries the next multimodal index."""
    name, use = f"{_dotted(_UTILS)}._gen_mm_extra_hash_keys", "block_hasher._with_extras unpacks its result"
    try:
        fn = _resolve(f"{_UTILS}:_gen_mm_extra_hash_keys")
    except (ImportError, AttributeError):
        return []  # reported as missing by its Api entry
    pos = types.SimpleNamespace(offset=2, length=4)
    request = types.SimpleNamespace(mm_features=[types.SimpleNamespace(identifier="img-1", mm_position=pos)])
    try:
        result = fn(request, 0, 16, 0)
        keys, next_idx = result
        (_tag, ident, offset), *rest = keys
        ok = not rest and ident == "img-1" and offset == 2 and next_idx == 1
    except Exception as exc:  # noqa: BLE001 - reported with the others
        return [Problem(name, f"result changed: {_fail(exc)}", use)]
    if not ok:
        return [Problem(name, f"result changed: expected ([('mm', 'img-1', 2)], 1), got {result!r}", use)]
    return []


def _check_embeds_keys(real: _Real) -> list[Problem]:
    """block_hasher uses `keys[0][1]` as the block's prompt-embeddings digest (bytes)."""
    name = f"{_dotted(_UTILS)}._gen_prompt_embeds_extra_hash_keys"
    use = "block_hasher._with_extras takes keys[0][1] as the digest"
    try:
        fn = _resolve(f"{_UTILS}:_gen_prompt_embeds_extra_hash_keys")
    except (ImportError, AttributeError):
        return []  # reported as missing by its Api entry
    try:
        import torch
        from vllm.sampling_params import SamplingParams
        from vllm.v1.request import Request

        request = Request("embeds", None, SamplingParams(max_tokens=1), None, prompt_embeds=torch.zeros(32, 4))
        result = fn(request, 0, 16)
        ok = isinstance(result, list) and len(result) == 1 and isinstance(result[0][1], bytes)
    except Exception as exc:  # noqa: BLE001 - reported with the others
        return [Problem(name, f"result changed: {_fail(exc)}", use)]
    if not ok:
        return [Problem(name, f"result changed: expected [(tag, digest bytes)], got {result!r}", use)]
    return []


def _check_borrowed_track_weights_loading(real: _Real) -> list[Problem]:
    """sealed_loader calls DefaultModelLoader.track_weights_loading with a BastionSealedLoader as self."""
    path = f"{_LOADERS}.default_loader:DefaultModelLoader.track_weights_loading"
    use = "BastionSealedLoader borrows it unbound, passing itself (not a DefaultModelLoader) as self"
    try:
        tree = _source_tree(path)
    except (ImportError, AttributeError):
        return []  # reported as missing by its Api entry
    except (OSError, TypeError, SyntaxError) as exc:
        return [Problem(_dotted(path), f"source unreadable: {exc}", use)]
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    if any(isinstance(n, ast.Name) and n.id == "self" for stmt in fn.body for n in ast.walk(stmt)):
        return [Problem(_dotted(path), "now uses self (a DefaultModelLoader's state)", use)]
    return []


def _check_vllm_logger(real: _Real) -> list[Problem]:
    try:
        config = _resolve("vllm.logger:DEFAULT_LOGGING_CONFIG")
    except (ImportError, AttributeError):
        return []  # reported as missing by its Api entry
    handlers = (config.get("loggers") or {}).get("vllm", {}).get("handlers") if isinstance(config, dict) else None
    if not handlers:
        return [
            Problem(
                "vllm.logger.DEFAULT_LOGGING_CONFIG",
                'no handler on the "vllm" logger any more',
                "sealed_loader's worker-side log lines go through the \"vllm\" logger's handler",
            )
        ]
    return []


_BEHAVIOUR: tuple[Callable[[_Real], list[Problem]], ...] = (
    _check_scheduler_cls_strings,
    _check_scheduler_shapes,
    _check_mm_keys,
    _check_embeds_keys,
    _check_borrowed_track_weights_loading,
    _check_vllm_logger,
)


def contract_problems() -> list[Problem]:
    """Every missing or changed vLLM name in CONTRACT, plus the behaviour checks (empty list: all hold)."""
    real = _build_real()
    problems = list(real.problems)
    for entry in CONTRACT:
        if isinstance(entry, Inst):
            problems.extend(_check_inst(entry, real))
            continue
        if isinstance(entry, Api):
            name, reason = _dotted(entry.path), _check_api(entry)
        elif isinstance(entry, Calls):
            name, reason = f"{_dotted(entry.where)} -> {entry.call}", _check_calls(entry)
        else:
            name, reason = f"{_dotted(entry.where)} -> {entry.target}", _check_assigns(entry)
        if reason is not None:
            problems.append(Problem(name, reason, entry.use))
    for check in _BEHAVIOUR:
        problems.extend(check(real))
    return problems


def contract_message(problems: list[Problem]) -> str:
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"vLLM internals bastion relies on are missing or changed (vllm {vllm.__version__}):\n{lines}"


# --- tests ----------------------------------------------------------------------------------------------------


def test_vllm_internals_contract() -> None:
    problems = contract_problems()
    assert not problems, contract_message(problems)


def test_contract_has_teeth_reports_a_deleted_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.engine.core as core

    monkeypatch.delattr(core, "get_request_block_hasher")
    problems = contract_problems()
    assert [(p.name, p.reason) for p in problems] == [("vllm.v1.engine.core.get_request_block_hasher", "missing")]
    message = contract_message(problems)
    assert "vllm.v1.engine.core.get_request_block_hasher (missing)" in message


def test_contract_reports_every_break_not_just_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import vllm.v1.core.kv_cache_utils as kv_cache_utils
    import vllm.v1.engine.core as core
    from vllm.v1.core.kv_cache_manager import KVCacheManager

    def free(self: Any, request: Any, now: bool) -> None:  # a reshaped signature
        raise AssertionError("never called")

    monkeypatch.delattr(core, "get_request_block_hasher")
    monkeypatch.delattr(kv_cache_utils, "_gen_mm_extra_hash_keys")
    monkeypatch.setattr(KVCacheManager, "free", free)
    problems = contract_problems()
    assert [p.name for p in problems] == [
        "vllm.v1.engine.core.get_request_block_hasher",
        "vllm.v1.core.kv_cache_utils._gen_mm_extra_hash_keys",
        "vllm.v1.core.kv_cache_manager.KVCacheManager.free",
    ]
    assert problems[2].reason.startswith("parameters changed: bastion overrides (self, request), vLLM has")
