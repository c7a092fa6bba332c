"""Importing vLLM beside the model's verification: SERVING that much sooner.

vLLM's import takes about 13 s on a 2-core CPU; the model's hashing and the verified copy (bastion.models) take
several seconds more and run outside the GIL, so :func:`preload_vllm` starts the import in a thread before them.
Nothing of the model is read by the import, and vLLM reads what the engine sets in the environment when it
builds the engine (bastion.engine.vllm.engine), not when imported. A daemon thread: a start that fails before the
engine (a model that does not verify) exits without waiting for the import.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


def _import() -> None:
    # Imported for the side effect (loaded once, here). A failure is the engine's own import's to raise again,
    # where it is the start's error.
    try:
        import vllm.usage.usage_lib
        import vllm.v1.engine.async_llm

        import bastion.engine.vllm.engine

        del vllm, bastion
    except Exception:
        log.debug("preloading vLLM failed", exc_info=True)


def preload_vllm() -> threading.Thread:
    """Starts importing vLLM's engine modules; join the thread before using them."""
    t = threading.Thread(target=_import, name="bastion-vllm-import", daemon=True)
    t.start()
    return t
