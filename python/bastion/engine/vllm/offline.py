"""A real vLLM v1 scheduler without a model: a tiny generated model config, a block pool of a chosen size,
no weights and no forward pass. For the scheduler tests and benchmarks/isolation_bench.py only."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_hidden_layers": 1,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "torch_dtype": "float32",
}
_model_dir: Path | None = None


def tiny_model_dir() -> Path:
    """A directory with only a config.json (created once per process)."""
    global _model_dir
    if _model_dir is None:
        d = Path(tempfile.mkdtemp(prefix="bastion-tiny-model-"))
        (d / "config.json").write_text(json.dumps(TINY_CONFIG))
        _model_dir = d
    return _model_dir


def make_scheduler(
    num_blocks: int,
    cls: Any = None,
    *,
    block_size: int = 16,
    max_num_seqs: int = 16,
    max_num_batched_tokens: int = 1024,
    max_model_len: int = 1024,
) -> Any:
    import torch
    from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    d = str(tiny_model_dir())
    model = ModelConfig(
        model=d, tokenizer=d, max_model_len=max_model_len, dtype="float32", seed=0, skip_tokenizer_init=True
    )
    sched = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_model_len=max_model_len,
        enable_chunked_prefill=True,
        is_encoder_decoder=False,
    )
    cache = CacheConfig(block_size=block_size, enable_prefix_caching=True)
    cache.num_gpu_blocks = num_blocks
    config = VllmConfig(
        scheduler_config=sched, model_config=model, cache_config=cache, device_config=DeviceConfig("cpu")
    )
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["l"], spec)])
    return (cls or Scheduler)(
        vllm_config=config,
        kv_cache_config=kv,
        structured_output_manager=StructuredOutputManager(config),
        block_size=block_size,
        log_stats=True,
    )


def step(scheduler: Any, token: int = 7) -> Any:
    """One engine step without a model: schedule, then one sampled token for every request that finished
    its prefill chunk (as the model runner would report). Returns the SchedulerOutput. Under vLLM's
    AsyncScheduler a request expecting a token holds an output placeholder from its schedule()."""
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.outputs import ModelRunnerOutput

    out = scheduler.schedule()
    ids = list(out.num_scheduled_tokens)
    sampled = []
    is_async = isinstance(scheduler, AsyncScheduler)
    for rid in ids:
        req = scheduler.requests[rid]
        # schedule() has already advanced num_computed_tokens by this step's tokens
        done = req.num_output_placeholders > 0 if is_async else req.num_computed_tokens >= req.num_prompt_tokens
        sampled.append([token] if done else [])
    runner = ModelRunnerOutput(
        req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)}, sampled_token_ids=sampled
    )
    scheduler.update_from_output(out, runner)
    return out
