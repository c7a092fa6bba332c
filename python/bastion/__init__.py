"""bastion: a self-hosted, hardened LLM inference server (gRPC in front of vLLM, Rust core).

Importing ``bastion`` loads nothing native: the Rust extension ``bastion._native`` is imported only by
the façades that need it (``bastion.digest``), which refuse an extension built for another version.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
