"""Audit records exported as OpenTelemetry log records: after they are durable, fields only, no content."""

from __future__ import annotations

import json
from pathlib import Path

from audit_util import records, settings
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

from bastion.audit import AuditLog
from bastion.audit.export import OtelAuditExporter


def test_each_record_is_exported_with_its_fields(tmp_path: Path) -> None:
    memory = InMemoryLogRecordExporter()
    sink = OtelAuditExporter(memory, batch=False)
    log = AuditLog.open(settings(tmp_path), tmp_path, sink=sink)
    prompt = "my card number is 4111"
    log.append_sync(
        "request",
        {"request_id": "r1", "tenant": "acme", "prompt_tokens": 7, "prompt_hmac": log.content_hmac("acme", prompt)},
    )
    log.close()
    sink.shutdown()
    on_disk = records(log.directory)
    exported = [x.log_record for x in memory.get_finished_logs()]
    assert [e.attributes["audit.seq"] for e in exported] == [r["seq"] for r in on_disk]
    req = next(e for e in exported if e.attributes["audit.kind"] == "request")
    assert req.event_name == "bastion.audit.request"
    assert dict(req.attributes) == {f"audit.{k}": v for k, v in on_disk[2].items()}
    assert req.timestamp is not None and req.timestamp % 1_000_000 == 0
    assert all(prompt not in json.dumps(dict(e.attributes)) + str(e.body) for e in exported)


def test_a_failing_exporter_never_fails_the_log(tmp_path: Path) -> None:
    class Broken:
        def emit(self, line: bytes) -> None:
            raise RuntimeError("collector down")

    log = AuditLog.open(settings(tmp_path), tmp_path, sink=Broken())
    assert log.append_sync("request", {"request_id": "r"}) == 2
    log.close()
    assert not log.failed
