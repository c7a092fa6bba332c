"""bastion's vLLM plugin (entry point group ``vllm.general_plugins``).

vLLM calls ``register()`` in every process it starts: the API process, the EngineCore and each worker.
It is where bastion registers what must exist inside those processes: the sealed-model load format
``bastion`` (``bastion.engine.vllm.sealed_loader``) and the tenant-partitioned block hasher
(``bastion.engine.vllm.block_hasher``). It also
checks that the native extension in the worker matches the package, so a stale build can never load
weights, and records that it ran.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from bastion.engine.vllm.sealed_loader import register as register_sealed_loader
    from bastion.native import native_version  # refuses a stale extension (ImportError)

    register_sealed_loader()
    # Tenant-partitioned, keyed prefix-cache block hashing in the EngineCore (when the server asks for it).
    from bastion.engine.vllm.block_hasher import install as install_block_hasher

    install_block_hasher()
    from bastion.engine.vllm.proof import install as install_proof

    install_proof()  # the front end asks the EngineCore (and its workers) for the isolation proof
    _registered = True
    log.debug("bastion vLLM plugin registered in pid %d (native %s)", os.getpid(), native_version())
    marker = os.environ.get("BASTION_PLUGIN_MARKER_DIR")
    if marker:  # test hook: proves the plugin ran in vLLM's child processes
        with open(os.path.join(marker, f"plugin-{os.getpid()}"), "w") as fh:
            fh.write(native_version())


def is_registered() -> bool:
    return _registered
