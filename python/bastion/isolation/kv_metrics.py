"""Per-tenant KV figures from the EngineCore's schedulers, for the server's metrics.

Each ``TenantScheduler`` writes its ledger snapshot (keyed by opaque tenant keys) as the ``tenants`` of the
engine's figures, ``<stats dir>/<model>.json`` with the model's name in it (``bastion.engine.vllm.figures``),
at most once a second. The server maps tenant keys back to tenant names with
its partition keys; a key it cannot map (the ``untagged`` bucket) is reported as tenant ``-``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from bastion.tenancy.partition import PartitionKeys

log = logging.getLogger(__name__)

# The server names a directory here; each scheduler writes its per-tenant figures to <model>.json in it.
ENV_STATS_DIR = "BASTION_KV_STATS_DIR"
FIELDS = ("held", "reserved", "cached", "preemptions", "evictions")
Row = tuple[str, str, dict[str, int]]  # (model, tenant, figures)


class TenantKvStats:
    def __init__(self, directory: Path, partition: PartitionKeys, tenants: Callable[[], Iterable[str]]) -> None:
        self.directory = directory
        self._partition = partition
        self._tenants = tenants

    def rows(self) -> list[Row]:
        names = {self._partition.salt_for(t): t for t in self._tenants()}
        out: list[Row] = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError):
                log.debug("per-tenant KV stats unreadable: %s", path.name)
                continue
            if not isinstance(snapshot, dict):
                continue
            model, tenants = snapshot.get("model"), snapshot.get("tenants")
            if not isinstance(model, str) or not isinstance(tenants, dict):
                continue  # no isolation in that engine
            for key, figures in tenants.items():
                out.append((model, names.get(key, "-"), {f: int(figures.get(f, 0)) for f in FIELDS}))
        return out
