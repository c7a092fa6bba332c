"""tests/http: the in-process server harness lives in tests/grpc/grpc_harness.py; make it importable here."""

from __future__ import annotations

import sys
from pathlib import Path

_GRPC_TESTS = str(Path(__file__).resolve().parent.parent / "grpc")
if _GRPC_TESTS not in sys.path:
    sys.path.insert(0, _GRPC_TESTS)
