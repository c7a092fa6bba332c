"""Key providers: where the key-encryption key (KEK) that wraps a sealed model's data key lives.

Providers: ``file`` (a local 32-byte KEK that only Rust reads: the key never passes through Python),
``openbao`` (OpenBao/Vault Transit, ``hvac``) and ``pkcs11`` (an HSM token, ``python-pkcs11``), all
behind the same ``KeyProvider`` protocol. For the last two the KEK never leaves the service; the data
key crosses Python only inside the wrap/unwrap calls (``bastion.weights.sealed.KekWrapper``). vLLM's
worker processes rebuild the provider from environment variables holding references (addresses, key
names, credential *file paths*), never from argv or logs (``worker_env`` / ``provider_from_env``).
"""

from bastion.keys.base import ENV_KEK_FILE, ENV_PROVIDER, KeyProvider, provider_from_env, provider_from_settings
from bastion.keys.file import FileKeyProvider

__all__ = [
    "ENV_KEK_FILE",
    "ENV_PROVIDER",
    "FileKeyProvider",
    "KeyProvider",
    "provider_from_env",
    "provider_from_settings",
]
