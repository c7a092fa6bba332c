"""``observability.log_format = "json"`` (issue 18, item 2): one JSON object per line with the request id and
the tenant, bastion's loggers and vLLM's alike (vLLM's through its logging configuration file, which its
engine processes inherit)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from bastion.observability.logs import request_id_var, setup_logging, tenant_var


def test_json_lines_carry_request_id_and_tenant(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_LOGGING_CONFIG_PATH", raising=False)  # restored after the test
    monkeypatch.delenv("VLLM_CONFIGURE_LOGGING", raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        setup_logging("INFO", "json")
        rid, tenant = request_id_var.set("rid-123"), tenant_var.set("tenant-a")
        try:
            logging.getLogger("bastion.test").info("served %d tokens", 7)
        finally:
            request_id_var.reset(rid)
            tenant_var.reset(tenant)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("bastion.test").exception("failed")
        config = os.environ["VLLM_LOGGING_CONFIG_PATH"]
    finally:  # this process's logging as it was
        root.handlers[:] = handlers
        root.setLevel(level)
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "served 7 tokens" and first["level"] == "INFO" and first["logger"] == "bastion.test"
    assert (first["request_id"], first["tenant"]) == ("rid-123", "tenant-a")
    assert first["ts"].endswith("+00:00") and first["pid"] == os.getpid()
    assert (second["request_id"], second["tenant"]) == ("-", "-") and "ValueError: boom" in second["exc_info"]

    # vLLM's loggers, in a process of their own, configured as its EngineCore and workers configure theirs (the
    # engine's LoggingConfig, whose pylogging_config_file defaults to VLLM_LOGGING_CONFIG_PATH).
    code = (
        "from vllm.config.logging import LoggingConfig; from vllm.logger import configure_logging, init_logger; "
        "configure_logging(LoggingConfig()); init_logger('vllm.engine.test').info('engine says %s', 'hi')"
    )
    env = {**os.environ, "VLLM_LOGGING_CONFIG_PATH": config, "VLLM_CONFIGURE_LOGGING": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    assert [(r["logger"], r["message"], r["request_id"]) for r in lines if r["logger"] == "vllm.engine.test"] == [
        ("vllm.engine.test", "engine says hi", "-")
    ], out.stderr[-2000:]
