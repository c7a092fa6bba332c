"""The ``openbao`` key provider: the KEK is an OpenBao (or HashiCorp Vault) Transit key; DEKs are wrapped
by Transit ``encrypt`` with the key block as associated data and unwrapped by ``decrypt`` (client: ``hvac``).

The Transit key should be ``aes256-gcm96`` (the default) so that associated data is authenticated. The
token comes from a 0600 file or ``BAO_TOKEN`` / ``VAULT_TOKEN``; vLLM's workers get the file path or
inherit the variable, never the token in argv. Rotating the Transit key (``transit/keys/NAME/rotate``)
and rewrapping is the provider's own rotation; ``bastion rekey`` moves a model between keys or providers.
The address must be https, or http to ``localhost`` or a loopback IP literal (``bastion.urls``: the URL is
parsed, so ``http://localhost.evil.example`` or ``http://127.0.0.1@evil.example`` is refused).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from bastion.errors import ConfigError
from bastion.keys.base import ENV_PROVIDER
from bastion.keys.secrets import read_secret
from bastion.urls import check_service_url
from bastion.weights.sealed import SealedReader, SealReport, StrPath, seal_dir

ENV_ADDR = "BASTION_OPENBAO_ADDR"
ENV_KEY = "BASTION_OPENBAO_KEY"
ENV_MOUNT = "BASTION_OPENBAO_MOUNT"
ENV_TOKEN_FILE = "BASTION_OPENBAO_TOKEN_FILE"
ENV_CA_FILE = "BASTION_OPENBAO_CA_FILE"
TOKEN_ENV = ("BAO_TOKEN", "VAULT_TOKEN")
TIMEOUT_S = 10


class OpenBaoTransitProvider:
    name = "openbao"

    def __init__(
        self,
        addr: str,
        key: str,
        *,
        mount: str = "transit",
        token_file: StrPath | None = None,
        ca_file: StrPath | None = None,
    ) -> None:
        try:  # the URL parsed, never a prefix test: http://localhost.evil.example is not loopback
            check_service_url(addr, "weights.openbao.addr")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.addr, self.key, self.mount = addr, key, mount
        self.token_file = Path(token_file) if token_file else None
        self.ca_file = Path(ca_file) if ca_file else None

    def __repr__(self) -> str:
        return f"OpenBaoTransitProvider({self.addr!r}, {self.key!r}, mount={self.mount!r})"

    def _client(self) -> Any:
        import hvac

        token = read_secret("openbao token", self.token_file, TOKEN_ENV)
        return hvac.Client(
            url=self.addr, token=token, verify=str(self.ca_file) if self.ca_file else True, timeout=TIMEOUT_S
        )

    def _call(self, what: str, fn: Any) -> Any:
        import hvac
        import requests

        try:
            return fn(self._client())
        except hvac.exceptions.Forbidden:
            raise ConfigError(f"openbao {self.addr}: permission denied for {what} on {self.mount}/{self.key}") from None
        except hvac.exceptions.InvalidPath:
            raise ConfigError(f"openbao {self.addr}: no transit key {self.mount}/{self.key}") from None
        except requests.exceptions.RequestException as exc:
            raise ConfigError(f"openbao {self.addr}: unreachable ({type(exc).__name__})") from None

    def describe(self) -> str:
        return f"openbao:{self.addr}/{self.mount}/{self.key}"

    def key_id(self) -> str:
        return f"openbao:{self.mount}/{self.key}"

    def check(self) -> None:
        """The token works and the Transit key exists (and is an AEAD key)."""
        info = self._call("read", lambda c: c.secrets.transit.read_key(name=self.key, mount_point=self.mount))
        kind = info["data"].get("type")
        if kind not in ("aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"):
            raise ConfigError(f"openbao transit key {self.mount}/{self.key} is {kind}; an AEAD key is required")

    def create_key(self) -> None:
        self._call(
            "create",
            lambda c: c.secrets.transit.create_key(name=self.key, key_type="aes256-gcm96", mount_point=self.mount),
        )

    def wrap(self, dek: bytearray, aad: bytes) -> bytes:
        b64 = base64.b64encode(dek).decode()
        r = self._call(
            "encrypt",
            lambda c: c.secrets.transit.encrypt_data(
                name=self.key, plaintext=b64, associated_data=base64.b64encode(aad).decode(), mount_point=self.mount
            ),
        )
        return str(r["data"]["ciphertext"]).encode()

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytearray | None:
        import hvac

        def decrypt(c: Any) -> Any:
            try:
                return c.secrets.transit.decrypt_data(
                    name=self.key,
                    ciphertext=wrapped.decode("ascii", "replace"),
                    associated_data=base64.b64encode(aad).decode(),
                    mount_point=self.mount,
                )
            except hvac.exceptions.InvalidRequest:
                return None  # not this key's ciphertext, or the key block (AAD) was altered

        r = self._call("decrypt", decrypt)
        if r is None:
            return None
        return bytearray(base64.b64decode(r["data"]["plaintext"]))

    def open(self, sealed_dir: StrPath) -> SealedReader:
        return SealedReader(sealed_dir, self)

    def seal(self, src: StrPath, out: StrPath, **options: Any) -> SealReport:
        return seal_dir(src, out, self, **options)

    def worker_env(self) -> dict[str, str]:
        env = {ENV_PROVIDER: self.name, ENV_ADDR: self.addr, ENV_KEY: self.key, ENV_MOUNT: self.mount}
        if self.token_file:
            env[ENV_TOKEN_FILE] = str(self.token_file.resolve())
        if self.ca_file:
            env[ENV_CA_FILE] = str(self.ca_file.resolve())
        return env
