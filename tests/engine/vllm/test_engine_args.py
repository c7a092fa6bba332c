"""The server's engine settings reach vLLM's engine arguments."""

from __future__ import annotations

from bastion.config import load_settings
from bastion.engine.vllm.engine import _engine_args


def test_the_servers_stream_interval_is_vllms_engine_floor() -> None:
    """model.stream_interval becomes vLLM's engine-level stream_interval (vLLM applies the larger of it and a
    call's); unset, vLLM's default of 1 (every token)."""
    default = _engine_args(load_settings(overrides={"weights": {"allow_unsealed": True}}), "/m", "m", "cpu")
    assert default.stream_interval == 1
    settings = load_settings(overrides={"model": {"stream_interval": 4}, "weights": {"allow_unsealed": True}})
    assert _engine_args(settings, "/m", "m", "cpu").stream_interval == 4
