"""The ``pkcs11`` key provider: the KEK is a non-extractable AES-256 key inside a PKCS#11 token (an HSM;
SoftHSM2 in tests). DEKs are wrapped and unwrapped by the token with AES-GCM (random 96-bit IV, the key
block as associated data); the KEK never leaves the token (client: ``python-pkcs11``).

The user PIN comes from a 0600 file or ``BASTION_PKCS11_PIN``; vLLM's workers get the file path or inherit
the variable, never the PIN in argv.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.keys.base import ENV_PROVIDER
from bastion.keys.secrets import read_secret
from bastion.weights.sealed import SealedReader, SealReport, StrPath, seal_dir

ENV_MODULE = "BASTION_PKCS11_MODULE"
ENV_TOKEN = "BASTION_PKCS11_TOKEN"
ENV_KEY = "BASTION_PKCS11_KEY"
ENV_PIN_FILE = "BASTION_PKCS11_PIN_FILE"
PIN_ENV = ("BASTION_PKCS11_PIN",)
IV_BYTES = 12


class Pkcs11Provider:
    name = "pkcs11"

    def __init__(self, module: StrPath, token: str, key: str, *, pin_file: StrPath | None = None) -> None:
        self.module, self.token, self.key = Path(module), token, key
        self.pin_file = Path(pin_file) if pin_file else None

    def __repr__(self) -> str:
        return f"Pkcs11Provider({str(self.module)!r}, {self.token!r}, {self.key!r})"

    def _session(self) -> Any:
        import pkcs11

        if not self.module.is_file():
            raise ConfigError(f"pkcs11 module not found: {self.module}")
        pin = read_secret("pkcs11 PIN", self.pin_file, PIN_ENV)
        try:
            token = pkcs11.lib(str(self.module)).get_token(token_label=self.token)
            return token.open(user_pin=pin, rw=True)
        except pkcs11.exceptions.NoSuchToken:
            raise ConfigError(f"pkcs11: no token labelled {self.token!r}") from None
        except pkcs11.exceptions.PKCS11Error as exc:
            raise ConfigError(f"pkcs11: cannot open token {self.token!r} ({type(exc).__name__})") from None

    def _kek(self, session: Any) -> Any:
        import pkcs11

        try:
            return session.get_key(
                object_class=pkcs11.ObjectClass.SECRET_KEY, key_type=pkcs11.KeyType.AES, label=self.key
            )
        except pkcs11.exceptions.NoSuchKey:
            raise ConfigError(f"pkcs11: no AES key labelled {self.key!r} in token {self.token!r}") from None
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise ConfigError(f"pkcs11: several keys labelled {self.key!r} in token {self.token!r}") from None

    def describe(self) -> str:
        return f"pkcs11:{self.token}/{self.key}"

    def key_id(self) -> str:
        return f"pkcs11:{self.token}/{self.key}"

    def check(self) -> None:
        """The token opens with the PIN and holds exactly one AES key with this label, not extractable."""
        import pkcs11

        with self._session() as s:
            key = self._kek(s)
            if key[pkcs11.Attribute.EXTRACTABLE] or not key[pkcs11.Attribute.SENSITIVE]:
                raise ConfigError(f"pkcs11: key {self.key!r} must be sensitive and not extractable")

    def create_key(self) -> None:
        """Generates the AES-256 KEK inside the token: sensitive, never extractable."""
        import pkcs11

        with self._session() as s:
            s.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=self.key,
                store=True,
                template={
                    pkcs11.Attribute.SENSITIVE: True,
                    pkcs11.Attribute.EXTRACTABLE: False,
                    pkcs11.Attribute.ENCRYPT: True,
                    pkcs11.Attribute.DECRYPT: True,
                },
            )

    def wrap(self, dek: bytearray, aad: bytes) -> bytes:
        import pkcs11

        iv = os.urandom(IV_BYTES)
        with self._session() as s:
            # python-pkcs11 treats anything but `bytes` as a stream of chunks, so the key is handed over as
            # an immutable copy (which Python cannot wipe); the bytearray itself is zeroed by the caller.
            ct = self._kek(s).encrypt(
                bytes(dek), mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=pkcs11.GCMParams(iv, aad, 128)
            )
        return iv + bytes(ct)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytearray | None:
        import pkcs11

        if len(wrapped) != IV_BYTES + 32 + 16:
            return None
        with self._session() as s:
            try:
                pt = self._kek(s).decrypt(
                    wrapped[IV_BYTES:],
                    mechanism=pkcs11.Mechanism.AES_GCM,
                    mechanism_param=pkcs11.GCMParams(wrapped[:IV_BYTES], aad, 128),
                )
            except pkcs11.exceptions.PKCS11Error:
                return None  # wrong key, or the wrapped key or key block (AAD) was altered
        return bytearray(pt)

    def open(self, sealed_dir: StrPath) -> SealedReader:
        return SealedReader(sealed_dir, self)

    def seal(self, src: StrPath, out: StrPath, **options: Any) -> SealReport:
        return seal_dir(src, out, self, **options)

    def worker_env(self) -> dict[str, str]:
        env = {ENV_PROVIDER: self.name, ENV_MODULE: str(self.module), ENV_TOKEN: self.token, ENV_KEY: self.key}
        if self.pin_file:
            env[ENV_PIN_FILE] = str(self.pin_file.resolve())
        return env
