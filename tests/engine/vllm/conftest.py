"""The sealed-loader tests' fixtures: a small safetensors model and a KEK (from tests/sample_model.py)."""

from sample_model import kek, model

__all__ = ["kek", "model"]
