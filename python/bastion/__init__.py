"""bastion: a self-hosted, hardened LLM inference server (gRPC in front of vLLM, Rust core).

Importing ``bastion`` loads nothing native: the Rust extension ``bastion._native`` is imported only by
``bastion.native`` (on first use of a façade such as ``bastion.digest``), which refuses an extension built
for another version.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
