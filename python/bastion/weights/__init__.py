"""Model weights: the sealed (encrypted, integrity-checked) format. See ``docs/sealed-format.md``."""

from bastion.weights.sealed import (
    SealedReader,
    SealReport,
    TensorInfo,
    VerifyReport,
    create_kek,
    inspect,
    rekey,
    seal_dir,
    verify_ciphertext,
)

__all__ = [
    "SealReport",
    "SealedReader",
    "TensorInfo",
    "VerifyReport",
    "create_kek",
    "inspect",
    "rekey",
    "seal_dir",
    "verify_ciphertext",
]
