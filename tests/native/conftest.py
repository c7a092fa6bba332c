"""The native tests' fixtures: a small safetensors model and a KEK (shared with tests/engine/vllm)."""

from sample_model import kek, model

__all__ = ["kek", "model"]
