"""The key-provider protocol and how a vLLM worker process finds its provider."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from bastion.errors import ConfigError
from bastion.weights.sealed import SealedReader, SealReport, StrPath

# Set by the server before it starts the engine; inherited by vLLM's EngineCore and worker processes.
ENV_PROVIDER = "BASTION_KEY_PROVIDER"
ENV_KEK_FILE = "BASTION_KEK_FILE"


@runtime_checkable
class KeyProvider(Protocol):
    """Opens and seals models under one key-encryption key. Holds references only, never key bytes."""

    #: the ``key.provider`` value this provider writes into (and accepts from) a sealed header
    name: str

    def describe(self) -> str:
        """A loggable one-line description (a path or key name; never key material)."""
        ...

    def check(self) -> None:
        """Raises ``ConfigError`` when the key cannot be used (missing, wrong type or permissions)."""
        ...

    def open(self, sealed_dir: StrPath) -> SealedReader:
        """Opens a sealed model: unwraps its data key and checks the key commitment."""
        ...

    def seal(self, src: StrPath, out: StrPath, **options: Any) -> SealReport:
        """Seals the safetensors directory ``src`` into the new directory ``out``."""
        ...

    def worker_env(self) -> dict[str, str]:
        """Environment variables from which ``provider_from_env`` rebuilds this provider in a worker."""
        ...


def provider_from_settings(weights: Any) -> KeyProvider:
    """The provider ``[weights]`` configures (``bastion.config.WeightsSettings``) for a sealed model.source."""
    if weights.key_provider == "openbao":
        from bastion.keys.openbao import OpenBaoTransitProvider

        o = weights.openbao
        return OpenBaoTransitProvider(o.addr, o.key, mount=o.mount, token_file=o.token_file, ca_file=o.ca_file)
    if weights.key_provider == "pkcs11":
        from bastion.keys.pkcs11 import Pkcs11Provider

        k = weights.pkcs11
        return Pkcs11Provider(k.module, k.token, k.key, pin_file=k.pin_file)
    if weights.kek_file is None:
        raise ConfigError("model.source is a sealed model: set weights.kek_file (the key that opens it)")
    from bastion.keys.file import FileKeyProvider

    return FileKeyProvider(weights.kek_file)


def provider_from_env(env: Mapping[str, str] | None = None) -> KeyProvider:
    """The provider the server configured for this process tree (vLLM workers call this)."""
    env = os.environ if env is None else env
    kind = env.get(ENV_PROVIDER, "file")
    if kind == "file":
        from bastion.keys.file import FileKeyProvider

        path = env.get(ENV_KEK_FILE)
        if not path:
            raise ConfigError(f"no key for the sealed model: {ENV_KEK_FILE} is not set in this process")
        return FileKeyProvider(path)
    if kind == "openbao":
        from bastion.keys import openbao as ob

        return ob.OpenBaoTransitProvider(
            _need(env, ob.ENV_ADDR),
            _need(env, ob.ENV_KEY),
            mount=env.get(ob.ENV_MOUNT, "transit"),
            token_file=env.get(ob.ENV_TOKEN_FILE) or None,
            ca_file=env.get(ob.ENV_CA_FILE) or None,
        )
    if kind == "pkcs11":
        from bastion.keys import pkcs11 as p11

        return p11.Pkcs11Provider(
            _need(env, p11.ENV_MODULE),
            _need(env, p11.ENV_TOKEN),
            _need(env, p11.ENV_KEY),
            pin_file=env.get(p11.ENV_PIN_FILE) or None,
        )
    raise ConfigError(f"unknown key provider {kind!r} in {ENV_PROVIDER}")


def _need(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    if not value:
        raise ConfigError(f"the sealed model's key provider needs {name} in this process")
    return value
