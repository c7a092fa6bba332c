"""Key providers: where the key-encryption key (KEK) that wraps a sealed model's data key lives.

Only the local ``file`` provider exists today; OpenBao/Vault Transit and PKCS#11 come later behind the
same ``KeyProvider`` protocol. Key material never passes through Python: a provider hands the Rust core
a *reference* (a file path today, a key name and a token reference later), and vLLM's worker processes
rebuild the provider from environment variables (``worker_env`` / ``provider_from_env``), never from
argv or logs.
"""

from bastion.keys.base import ENV_KEK_FILE, ENV_PROVIDER, KeyProvider, provider_from_env
from bastion.keys.file import FileKeyProvider

__all__ = ["ENV_KEK_FILE", "ENV_PROVIDER", "FileKeyProvider", "KeyProvider", "provider_from_env"]
