"""Per-tenant KV figures read back from the engines' stats files (bastion.isolation.kv_metrics)."""

from __future__ import annotations

import json
from pathlib import Path

from bastion.isolation.kv_metrics import TenantKvStats
from bastion.tenancy.partition import PartitionKeys

KEYS = PartitionKeys(b"k" * 32)
FIGS = {"held": 3, "reserved": 4, "cached": 1, "preemptions": 0, "evictions": 2, "cap": 9}


def test_rows_name_tenants_and_models_from_the_files(tmp_path: Path) -> None:
    a = KEYS.salt_for("tenant-a")
    (tmp_path / "m%2Fone.json").write_text(
        json.dumps(
            {"model": "m/one", "running": 1, "waiting": 0, "kv_usage": 0.1, "tenants": {a: FIGS, "untagged": {}}}
        )
    )
    # an engine without isolation writes no tenants; a torn or foreign file is skipped, not fatal
    (tmp_path / "plain.json").write_text(json.dumps({"model": "plain", "running": 0, "waiting": 0, "kv_usage": 0.0}))
    (tmp_path / "torn.json").write_text('{"model": "torn", "tenants": {')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "nameless.json").write_text(json.dumps({"tenants": {a: FIGS}}))
    rows = TenantKvStats(tmp_path, KEYS, lambda: ["tenant-a", "tenant-b"]).rows()
    expected = {f: FIGS[f] for f in ("held", "reserved", "cached", "preemptions", "evictions")}
    zeros = dict.fromkeys(expected, 0)
    assert rows == [("m/one", "tenant-a", expected), ("m/one", "-", zeros)]
