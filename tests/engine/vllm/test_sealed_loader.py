"""The vLLM loader's weight iterator over a sealed model: every tensor exact, every byte read once and
verified, batch boundaries anywhere, tampering refused mid-stream with the file and segment named."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bastion.engine.vllm.sealed_loader import sealed_weights
from bastion.errors import IntegrityError
from bastion.weights import SealedReader, seal_dir

SEG = 64 * 1024


@pytest.fixture()
def sealed(model: Path, kek: Path) -> Path:
    out = model.parent / "sealed"
    seal_dir(model, out, kek, segment_size=SEG)
    return out


@pytest.mark.parametrize("batch", [1, 4096, SEG + 3, 1 << 30])
def test_every_tensor_exact_and_every_byte_verified(model: Path, sealed: Path, kek: Path, batch: int) -> None:
    expected: dict[str, torch.Tensor] = {}
    for f in sorted(model.glob("*.safetensors")):
        expected.update(load_file(str(f)))
    stats: dict[str, int] = {}
    with SealedReader(sealed, kek) as r:
        got = dict(sealed_weights(r, stats, batch_bytes=batch))
        total = sum(length for _, _, length in r.files())
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name], t), name
    assert stats == {"tensors": len(expected), "bytes": total, "files": 2}


def test_a_flipped_segment_stops_the_stream(sealed: Path, kek: Path) -> None:
    data = sealed / "weights-00001.ctxd"
    b = bytearray(data.read_bytes())
    b[SEG + 100] ^= 0x04
    data.write_bytes(bytes(b))
    with SealedReader(sealed, kek) as r, pytest.raises(IntegrityError, match=r"weights-00001\.ctxd segment 1"):
        for _ in sealed_weights(r, batch_bytes=4096):
            pass
