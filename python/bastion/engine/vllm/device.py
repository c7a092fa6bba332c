"""Device selection: CUDA when present, else vLLM's CPU backend; can be forced."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from bastion.errors import ConfigError

if TYPE_CHECKING:
    from bastion.config import ModelSettings

Device = Literal["cpu", "cuda"]


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(requested: str) -> Device:
    """Picks the device before vLLM is imported (vLLM fixes its platform at import)."""
    if requested == "cpu":
        # Forces vLLM's CPU platform even on a CUDA host (needs the CPU build: the `cpu` extra).
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"
        return "cpu"
    has_cuda = cuda_available()
    if requested == "cuda":
        if not has_cuda:
            raise ConfigError("model.device: cuda was requested but no CUDA device is available")
        return "cuda"
    if requested != "auto":
        raise ConfigError("model.device: must be auto, cpu or cuda")
    return "cuda" if has_cuda else "cpu"


def resolve_dtype(requested: str, device: Device) -> str:
    if requested != "auto":
        return requested
    # On AVX2 CPUs float32 ran about 2x faster than bfloat16 for small models.
    return "float32" if device == "cpu" else "auto"


def cpu_engine_env(model: ModelSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """What bastion sets in the environment for vLLM's CPU backend (read when the engine is built, and by the
    EngineCore and worker processes, which inherit it)."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(model.cpu_kv_cache_gib)))}
    # vLLM 0.32's AOT compile cache (the default with torch >= 2.10) saves the compiled model but cannot load it
    # back under torch 2.13 ("'function' object has no attribute 'finalize_loading'"), so every start compiled
    # again (2-7 min). Its inductor graph cache loads: a warm start's engine init took 31 s instead of 105-145 s
    # here. An operator's own setting wins. (Not measured on CUDA: left as is.)
    env["VLLM_USE_AOT_COMPILE"] = environ.get("VLLM_USE_AOT_COMPILE", "0")
    if model.fast_start and model.tensor_parallel_size == 1:
        # The EngineCore runs the model itself (vLLM's uniprocess executor): one process fewer.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env
