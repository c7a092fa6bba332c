"""Logging setup: one stderr handler, the request id and the tenant from contextvars on every record.

Modules log through ``logging.getLogger(__name__)``. Prompts and completions are never logged at INFO
(the servicer logs sizes and ids, not content), and settings only through ``Settings.redacted()``.

``observability.log_format``: ``text`` (one line per record) or ``json`` (one JSON object per line, by
python-json-logger: ``ts``, ``level``, ``logger``, ``process``, ``pid``, ``request_id``, ``tenant``,
``message``, and ``exc_info`` when there is one). In JSON the vLLM engine's loggers — in this process and in
its EngineCore and worker processes — write the same objects: :func:`setup_logging` points vLLM's logging
configuration (``VLLM_LOGGING_CONFIG_PATH``, inherited by the engine processes) at a file that routes
them through :class:`JsonFormatter`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

# Set by the servicer for the duration of one RPC (each grpc.aio RPC runs in its own task/context).
request_id_var: ContextVar[str] = ContextVar("bastion_request_id", default="-")
# The caller's tenant, set with the caller once the call is authenticated and mapped (``-`` before).
tenant_var: ContextVar[str] = ContextVar("bastion_tenant", default="-")

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process_name)s %(process)d %(request_id)s %(tenant)s %(message)s"
_JSON_NAMES = {"asctime": "ts", "levelname": "level", "name": "logger", "process_name": "process", "process": "pid"}
LogFormat = Literal["text", "json"]


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` and ``record.tenant`` (``-`` outside an RPC) and ``record.process_name``
    (vLLM's name for its engine processes, else the process's)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "tenant"):
            record.tenant = tenant_var.get()
        if not hasattr(record, "process_name"):
            record.process_name = getattr(record, "vllm_process_name", record.processName)
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per record with bastion's field names (module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(_JSON_FIELDS, rename_fields=_JSON_NAMES, json_ensure_ascii=False, reserved_attrs=_RESERVED)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


# Record attributes never copied into the JSON object (besides the named fields): the standard ones and vLLM's.
_RESERVED = [
    *logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys(),
    "message",
    "asctime",
    "vllm_process_name",
    "color_message",
]


class _BastionHandler(logging.StreamHandler[TextIO]):
    """Marker type so setup_logging can run more than once without stacking handlers."""


def vllm_logging_config() -> dict[str, Any]:
    """vLLM's logging configuration (``logging.config.dictConfig``) for JSON: its loggers through
    :class:`JsonFormatter` on stderr, in every process that imports vLLM."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"ids": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["ids"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }


def _point_vllm_at_json() -> None:
    fd, path = tempfile.mkstemp(prefix="bastion-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(vllm_logging_config(), f)
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path  # read when vLLM is imported, here and in its processes


def setup_logging(level: str = "INFO", log_format: LogFormat = "text") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _BastionHandler):
            root.removeHandler(h)
    handler = _BastionHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_FORMAT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    if log_format == "json":
        _point_vllm_at_json()
    # Third-party chatter stays at WARNING unless we debug.
    if level != "DEBUG":
        for name in ("grpc", "opentelemetry", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
