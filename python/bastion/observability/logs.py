"""Logging setup: one stderr handler, the request id from a contextvar on every record.

Modules log through ``logging.getLogger(__name__)``. Prompts and completions are never logged at INFO
(the servicer logs sizes and ids, not content), and settings only through ``Settings.redacted()``.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import TextIO

# Set by the servicer for the duration of one RPC (each grpc.aio RPC runs in its own task/context).
request_id_var: ContextVar[str] = ContextVar("bastion_request_id", default="-")

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside an RPC)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


class _BastionHandler(logging.StreamHandler[TextIO]):
    """Marker type so setup_logging can run more than once without stacking handlers."""


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _BastionHandler):
            root.removeHandler(h)
    handler = _BastionHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RequestIdFilter())
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we debug.
    if level != "DEBUG":
        for name in ("grpc", "opentelemetry", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
