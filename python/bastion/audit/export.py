"""Exporting audit records as OpenTelemetry log records (optional, best effort, after the record is durable).

Each record becomes one log record: ``event_name`` ``bastion.audit.<kind>``, timestamp the record's time,
attributes ``audit.<field>`` for every field of the record (seq, kind, hash, prev, ids, counts, HMACs); records
hold no content, so none is exported. The on-disk log stays the authority; an export failure is logged and
never fails the log.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

SCOPE = "bastion.audit"


class OtelAuditExporter:
    """A ``RecordSink`` for ``AuditLog``: give it any OpenTelemetry ``LogRecordExporter`` (OTLP in production,
    ``InMemoryLogRecordExporter`` in tests). ``batch=True`` exports from a background thread, so a slow
    collector never delays the audit writer."""

    def __init__(self, exporter: LogRecordExporter, *, batch: bool = True, resource: Resource | None = None) -> None:
        processor = BatchLogRecordProcessor(exporter) if batch else SimpleLogRecordProcessor(exporter)
        self._provider = LoggerProvider(resource=resource or Resource.create({"service.name": "bastion"}))
        self._provider.add_log_record_processor(processor)
        self._logger = self._provider.get_logger(SCOPE)

    def emit(self, line: bytes) -> None:
        record: dict[str, Any] = json.loads(line)
        kind = str(record.get("kind", "unknown"))
        ts = datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00"))
        self._logger.emit(
            timestamp=round(ts.timestamp() * 1000) * 1_000_000,
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            body=f"audit {kind} seq {record.get('seq')}",
            attributes={f"audit.{k}": v for k, v in record.items()},
            event_name=f"bastion.audit.{kind}",
        )

    def shutdown(self) -> None:
        """Flush and stop (call after ``AuditLog.close``)."""
        self._provider.shutdown()
