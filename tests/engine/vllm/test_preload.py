"""The vLLM import started beside the model's verification (bastion.engine.vllm.preload)."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from bastion.engine.vllm import preload


def test_the_import_runs_in_a_daemon_thread_and_loads_the_engine_modules(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bastion.engine.vllm.preload"):
        t = preload.preload_vllm()
        # A daemon: a start that fails before the engine (a model that does not verify) exits without waiting.
        assert t.daemon and t.name == "bastion-vllm-import"
        t.join(timeout=300)
    assert "preloading vLLM failed" not in caplog.text  # every module it names imported
    assert not t.is_alive()
    assert {"vllm.v1.engine.async_llm", "vllm.usage.usage_lib", "bastion.engine.vllm.engine"} <= set(sys.modules)


def test_a_failed_import_is_left_to_the_engine_to_raise(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "vllm.usage.usage_lib", None)  # importing it raises ImportError
    hooked: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    with caplog.at_level(logging.DEBUG, logger="bastion.engine.vllm.preload"):
        t = preload.preload_vllm()
        t.join(timeout=300)
    assert hooked == []  # nothing escaped the thread
    assert "preloading vLLM failed" in caplog.text
    with pytest.raises(ImportError):  # where the start's own import meets it
        import vllm.usage.usage_lib  # noqa: F401
