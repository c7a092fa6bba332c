"""OpenSSF Model Signing (OMS v1.0) bundles: ``model.sig`` over every file of a model directory.

Signing uses the stock library (PyPI ``model-signing``), so stock ``model_signing verify`` accepts what
``bastion seal`` writes, without the data key. Verification is split so that it happens in the process
that loads, on the bytes it loads, with no second read of the weights:

1. ``verify_signature`` checks the bundle's signature with the stock verifiers, against the signers the
   trust policy allows for this model name (and, for certificate chains, the leaf identity), and returns
   the signed manifest;
2. ``check_files`` compares the directory with that manifest: no missing, extra or symlinked file; each
   small file (config, tokenizer, chat template) is hashed and compared, read once from one descriptor
   (``O_NOFOLLOW``; refused if its size or modification time changes while it is read); ``weights.ctxh`` is compared on
   the exact bytes the Rust reader decoded; sealed data files (``*.ctxd``) are not re-read here: every
   ciphertext segment is checked against the hash table inside the signed ``weights.ctxh`` as the loader
   reads it, which covers every byte of them.

Accepted bundles: EC P-256/P-384 keys and X.509 chains, whole-file (``files``) and range-hashed
(``shards``, algorithm ``sha256-sharded-N``, float ``shard_size``) manifests, SHA-256, BLAKE2b, BLAKE3.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.digest import read_file_checked
from bastion.errors import ConfigError, IntegrityError
from bastion.files import atomic_write
from bastion.weights.policy import Signer, TrustPolicy

SIGNATURE_FILE = "model.sig"
HEADER_FILE = "weights.ctxh"
DATA_SUFFIX = ".ctxd"
MAX_SIGNATURE_BYTES = 16 << 20
# Paths the stock signer leaves out of every manifest; never loaded by vLLM.
IGNORED = frozenset({SIGNATURE_FILE, ".gitattributes", ".gitignore"})
IGNORED_DIRS = frozenset({".git", ".github"})


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed resource: a whole file (``start is None``) or the byte range [start, end)."""

    algorithm: str
    digest: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True, slots=True)
class SignedManifest:
    signer: str  # the policy's signer name
    identity: str  # key fingerprint (sha256 of the SPKI PEM) or the leaf certificate's identity
    model_name: str  # informative: the directory name when it was signed
    model_digest: str  # the OMS subject digest: sha256 over the resource digests sorted by name
    entries: dict[str, tuple[Entry, ...]]

    def files(self) -> set[str]:
        return set(self.entries)


def _stock() -> Any:
    import model_signing

    return model_signing


def create_signing_key(path: str | os.PathLike[str], curve: str = "p256") -> Path:
    """Writes a new EC private key (PKCS#8 PEM, mode 0600, never overwrites) and ``<path>.pub``
    (its public key, PEM); returns the public key path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    curves = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
    if curve not in curves:
        raise ConfigError(f"signing key curve must be one of {sorted(curves)}")
    p = Path(path).expanduser()
    key = ec.generate_private_key(curves[curve])
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        atomic_write(p, pem, mode=0o600, overwrite=False)
    except FileExistsError:
        raise ConfigError(f"signing key already exists (never overwritten): {p}") from None
    pub = p.with_name(p.name + ".pub")
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write(pub, public, mode=0o644)
    return pub


def sign_dir(
    model_dir: str | os.PathLike[str],
    *,
    private_key: str | os.PathLike[str],
    certificate: str | os.PathLike[str] | None = None,
    chain: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Signs every file of ``model_dir`` (SHA-256 per file) into ``model_dir/model.sig``."""
    ms = _stock()
    d = Path(model_dir).resolve()
    out = d / SIGNATURE_FILE
    # An existing model.sig (when re-signing) is never part of the manifest.
    hashing = (
        ms.hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256")
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=True)
    )
    cfg = ms.signing.Config().set_hashing_config(hashing)
    if certificate is not None:
        cfg.use_certificate_signer(
            private_key=private_key, signing_certificate=certificate, certificate_chain=list(chain)
        )
    else:
        cfg.use_elliptic_key_signer(private_key=private_key)
    try:
        # The stock signer writes the bundle by path: into a private directory outside the model, then
        # published whole (a reader sees the old bundle or the new one, never half of one).
        with tempfile.TemporaryDirectory(prefix="bastion-sign-") as scratch:
            bundle = Path(scratch) / SIGNATURE_FILE
            cfg.sign(d, bundle)
            atomic_write(out, bundle.read_bytes(), mode=0o644)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"signing {d} failed: {exc}") from None
    return out


def _leaf_identities(signature: Any) -> list[str]:
    """SAN URIs, emails and DNS names, then the subject CN, of the bundle's signing certificate."""
    from cryptography import x509

    certs = signature.bundle.verification_material.x509_certificate_chain.certificates
    if not certs:
        return []
    leaf = x509.load_der_x509_certificate(certs[0].raw_bytes)
    out: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.UniformResourceIdentifier, x509.RFC822Name, x509.DNSName):
            out.extend(str(v) for v in san.get_values_for_type(kind))
    except x509.ExtensionNotFound:
        pass
    out.extend(str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    return out


def _key_fingerprint(public_key: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key.read_bytes())
    spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _verify_with(signer: Signer, signature: Any) -> tuple[Any, str] | None:
    """The signed manifest and the signer identity if ``signer`` verifies ``signature``; else None."""
    from model_signing._signing import sign_certificate, sign_ec_key

    try:
        if signer.public_key is not None:
            manifest = sign_ec_key.Verifier(signer.public_key).verify(signature)
            return manifest, _key_fingerprint(signer.public_key)
        manifest = sign_certificate.Verifier(list(signer.certificate_chain)).verify(signature)
    except Exception:  # noqa: BLE001 - any failure of this signer means "not this signer"; try the next
        return None
    identities = _leaf_identities(signature)
    if not signer.identity_allowed(identities):
        return None
    return manifest, identities[0]


def _entries(manifest: Any) -> dict[str, tuple[Entry, ...]]:
    method = manifest.serialization_type.get("method")
    out: dict[str, list[Entry]] = defaultdict(list)
    for rd in manifest.resource_descriptors():
        ident = str(rd.identifier)
        if method == "shards":
            name, start, end = ident.rsplit(":", 2)
            out[name].append(Entry(rd.digest.algorithm, rd.digest.digest_hex, int(start), int(end)))
        elif method == "files":
            out[ident].append(Entry(rd.digest.algorithm, rd.digest.digest_hex))
        else:
            raise IntegrityError(f"{SIGNATURE_FILE}: unsupported serialization method {method!r}")
    return {k: tuple(sorted(v, key=lambda e: e.start or 0)) for k, v in out.items()}


def _subject_digest(manifest: Any) -> str:
    h = hashlib.sha256()
    for rd in manifest.resource_descriptors():
        h.update(rd.digest.digest_value)
    return "sha256:" + h.hexdigest()


def verify_signature(model_dir: str | os.PathLike[str], policy: TrustPolicy, model: str) -> SignedManifest | None:
    """Checks ``model.sig`` against the signers the policy allows for ``model``; returns the manifest.

    Returns None only for a model without ``model.sig`` whose name the policy lists in
    ``unsigned_models``. Raises ``IntegrityError`` for a missing, malformed, forged or untrusted bundle.
    """
    from model_signing._signing import sign_sigstore_pb

    sig = Path(model_dir) / SIGNATURE_FILE
    try:
        st = os.lstat(sig)
    except FileNotFoundError:
        if policy.unsigned_allowed(model):
            return None
        raise IntegrityError(f"{sig}: missing; the trust policy does not allow model {model!r} unsigned") from None
    if not stat.S_ISREG(st.st_mode):
        raise IntegrityError(f"{sig}: not a regular file")
    if st.st_size > MAX_SIGNATURE_BYTES:
        raise IntegrityError(f"{sig}: larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        signature = sign_sigstore_pb.Signature.read(sig)
    except Exception:  # noqa: BLE001 - a bundle that does not parse is refused, whatever the parser raised
        raise IntegrityError(f"{sig}: not a valid OMS (Sigstore bundle) signature") from None
    candidates = policy.signers_for(model)
    if not candidates:
        raise IntegrityError(f"{sig}: the trust policy names no signer for model {model!r}")
    for signer in candidates:
        verified = _verify_with(signer, signature)
        if verified is None:
            continue
        manifest, identity = verified
        return SignedManifest(signer.name, identity, manifest.model_name, _subject_digest(manifest), _entries(manifest))
    raise IntegrityError(f"{sig}: not signed by any signer the trust policy allows for model {model!r}")


def _hasher(algorithm: str) -> Any:
    base = algorithm.split("-sharded-", 1)[0]
    if base == "sha256":
        return hashlib.sha256()
    if base in ("blake2b", "blake2"):
        return hashlib.blake2b()
    if base == "blake3":
        import blake3

        return blake3.blake3()
    raise IntegrityError(f"{SIGNATURE_FILE}: unsupported hash algorithm {algorithm!r}")


class FileCheck:
    """A file's signed entries checked against its bytes as they stream by, in one pass: feed every chunk
    to ``update`` in order, then call ``finish`` with the total. A whole-file entry is hashed over all of
    it; range entries (``shards``) must cover the file exactly, from 0, contiguous, each hashed over its
    range. ``IntegrityError`` names the file (and the range)."""

    def __init__(self, path: str | os.PathLike[str], entries: tuple[Entry, ...]) -> None:
        self.path = Path(path)
        self._entries = entries
        self._whole = len(entries) == 1 and entries[0].start is None
        if not self._whole:
            pos = 0
            for e in entries:
                if e.start is None or e.end is None or e.start != pos or e.end < e.start:
                    raise self._coverage()
                if e.end == e.start and len(entries) > 1:
                    raise self._coverage()  # an empty range only stands for an empty file
                pos = e.end
        self._i = 0
        self._pos = 0
        self._h = _hasher(entries[0].algorithm) if entries else None
        self._finish_empty_ranges()

    def _coverage(self) -> IntegrityError:
        return IntegrityError(f"{self.path}: signed byte ranges do not cover the file exactly")

    def _compare(self, e: Entry) -> None:
        assert self._h is not None
        if str(self._h.hexdigest()) != e.digest:
            where = "" if e.start is None else f" bytes {e.start}..{e.end}"
            raise IntegrityError(f"{self.path}{where}: digest does not match {SIGNATURE_FILE}")

    def _finish_empty_ranges(self) -> None:
        while not self._whole and self._i < len(self._entries) and self._entries[self._i].end == self._pos:
            self._compare(self._entries[self._i])
            self._i += 1
            if self._i < len(self._entries):
                self._h = _hasher(self._entries[self._i].algorithm)

    def update(self, chunk: bytes) -> None:
        if self._whole:
            assert self._h is not None
            self._h.update(chunk)
            self._pos += len(chunk)
            return
        view = memoryview(chunk)
        while view:
            if self._i >= len(self._entries):
                self._pos += len(view)  # bytes past the last signed range: refused in finish
                return
            e = self._entries[self._i]
            take = min(len(view), (e.end or 0) - self._pos)
            assert self._h is not None
            self._h.update(view[:take])
            self._pos += take
            view = view[take:]
            self._finish_empty_ranges()

    def finish(self, total: int) -> None:
        """After the last chunk: ``total`` is how many bytes the file had (what was fed)."""
        if total != self._pos:
            raise IntegrityError(f"{self.path}: read {total} bytes but checked {self._pos}")
        if not self._entries:
            raise IntegrityError(f"{self.path}: no digest in {SIGNATURE_FILE}")
        if self._whole:
            self._compare(self._entries[0])
        elif self._i != len(self._entries) or self._pos != self._entries[-1].end:
            raise self._coverage()


def check_file(path: str | os.PathLike[str], entries: tuple[Entry, ...], data: bytes | None = None) -> None:
    """One signed file against its entries: ``data`` when given (bytes already in use), else read once from
    one descriptor (``bastion.digest.read_file_checked``: no symlink, refused if it changes while read)."""
    check = FileCheck(path, entries)
    if data is not None:
        check.update(data)
        check.finish(len(data))
        return
    check.finish(read_file_checked(path, check.update))


def _listing(root: Path) -> set[str]:
    out: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not (rel_dir == Path(".") and d in IGNORED_DIRS)]
        for d in dirnames:
            if (Path(dirpath) / d).is_symlink():
                raise IntegrityError(f"{Path(dirpath) / d}: symbolic links are refused in a model directory")
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if rel in IGNORED:
                continue
            p = Path(dirpath) / name
            if not stat.S_ISREG(os.lstat(p).st_mode):
                raise IntegrityError(f"{p}: not a regular file (symbolic links are refused)")
            out.add(rel)
    return out


def check_files(
    model_dir: str | os.PathLike[str], manifest: SignedManifest, *, header_file: bytes | None = None
) -> int:
    """Compares the directory with the signed manifest; returns how many files were hashed here.

    ``header_file``: the bytes of ``weights.ctxh`` the Rust reader decoded (a sealed model); its data
    files are then checked segment by segment by the loader, not here.
    """
    root = Path(model_dir)
    present = _listing(root)
    signed = manifest.files()
    extra, missing = sorted(present - signed), sorted(signed - present)
    if extra:
        raise IntegrityError(f"{root / extra[0]}: not covered by {SIGNATURE_FILE} (unsigned file)")
    if missing:
        raise IntegrityError(f"{root / missing[0]}: signed in {SIGNATURE_FILE} but missing")
    hashed = 0
    for name, entries in sorted(manifest.entries.items()):
        sealed_data = header_file is not None and name.endswith(DATA_SUFFIX) and "/" not in name
        if sealed_data:
            continue
        data = header_file if (header_file is not None and name == HEADER_FILE) else None
        check_file(root / name, entries, data)
        hashed += 1
    if header_file is not None and HEADER_FILE not in signed:
        raise IntegrityError(f"{root / HEADER_FILE}: not covered by {SIGNATURE_FILE}")
    return hashed


def verify_sealed(
    model_dir: str | os.PathLike[str], policy: TrustPolicy, model: str, *, header_file: bytes, origin: str | None
) -> SignedManifest | None:
    """The whole load-time check of a sealed directory short of its data segments: the bundle against the
    policy, the signer's allowed origins against the header's (authenticated) origin, and every file but
    the ``*.ctxd`` data against the manifest (``weights.ctxh`` on ``header_file``, the bytes in use)."""
    manifest = verify_signature(model_dir, policy, model)
    if manifest is None:
        return None
    signer = next(s for s in policy.signer if s.name == manifest.signer)
    if not signer.origin_allowed(origin):
        raise IntegrityError(
            f"{Path(model_dir) / HEADER_FILE}: origin {origin or '(none)'} is not allowed for signer {signer.name}"
        )
    check_files(model_dir, manifest, header_file=header_file)
    return manifest
