from __future__ import annotations

import logging

import pytest

from bastion.cli.main import _parser, _serve_overrides, main
from bastion.observability.logs import RequestIdFilter, request_id_var, setup_logging
from bastion.server.ids import new_request_id


def test_request_id_filter_uses_contextvar() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    RequestIdFilter().filter(record)
    assert record.request_id == "-"
    token = request_id_var.set("abc")
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        RequestIdFilter().filter(record)
        assert record.request_id == "abc"
    finally:
        request_id_var.reset(token)


def test_setup_logging_is_idempotent() -> None:
    root = logging.getLogger()
    before = len(root.handlers)
    level = root.level
    try:
        setup_logging("INFO")
        setup_logging("DEBUG")
        assert len(root.handlers) == before + 1
    finally:
        root.removeHandler(root.handlers[-1])
        root.setLevel(level)


def test_request_ids_random_hex() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_serve_flags_become_overrides() -> None:
    args = _parser().parse_args(["serve", "--listen", "unix:/tmp/s", "--model", "/m", "--device", "cpu"])
    assert _serve_overrides(args) == {"server": {"listen": "unix:/tmp/s"}, "model": {"source": "/m", "device": "cpu"}}
    assert _serve_overrides(_parser().parse_args(["serve"])) == {}


def test_config_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["health", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found") and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["serve", "--device", "tpu"])
    assert info.value.code == 2


def test_serve_with_cluster_replicas_never_runs_the_engine_here(
    capsys: pytest.CaptureFixture[str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[cluster] replicas`` > 0 means Serve replicas: never the model loaded in this process; without the
    nodes' config path, serve refuses at once."""
    import bastion.engine.factory

    monkeypatch.setattr(bastion.engine.factory, "build_pool", None)  # any use of the local engine fails loudly
    config = tmp_path / "bastion.toml"
    config.write_text("[cluster]\nreplicas = 2\n")
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == "error: cluster.replica_config_file: the vLLM replica needs each node's config file path\n"
