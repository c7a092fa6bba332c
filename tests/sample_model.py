"""Fixtures shared by the native (extension contract) tests: a small safetensors model and a KEK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from bastion.weights import create_kek


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    src = tmp_path / "src"
    src.mkdir()
    save_file(
        {
            "embed.weight": rng.standard_normal((256, 128), dtype=np.float32),
            "layers.0.w": rng.standard_normal((300, 100)).astype(np.float16),
            "layers.0.idx": rng.integers(0, 1 << 40, size=(33,), dtype=np.int64),
            "scalar": np.array(3.5, dtype=np.float32),
        },
        str(src / "model-00001-of-00002.safetensors"),
        metadata={"format": "pt"},
    )
    save_file(
        {"lm_head.weight": rng.standard_normal((100, 170), dtype=np.float32), "mask": np.array([True, False])},
        str(src / "model-00002-of-00002.safetensors"),
    )
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "tokenizer_config.json").write_text("{}")
    (src / "chat_template.jinja").write_text("{{ messages }}")
    return src


@pytest.fixture()
def kek(tmp_path: Path) -> Path:
    p = tmp_path / "kek"
    create_kek(p)
    return p
