"""Shared test setup: import bastion from the source tree (python/) when it is not installed."""

from __future__ import annotations

import sys
from pathlib import Path

_SRC = Path(__file__).resolve().parent.parent / "python"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))
