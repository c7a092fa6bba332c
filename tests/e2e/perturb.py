"""A deliberately perturbed copy of a plain (safetensors) model directory: every floating-point tensor gets
Gaussian noise of ``scale`` times its own standard deviation (seeded, so the copy is reproducible). The
copy has a different digest and, at a large enough scale, different behaviour: what the go-live gate and
the drift monitor must catch."""

from __future__ import annotations

import shutil
from pathlib import Path


def perturbed_copy(src: Path, dst: Path, *, scale: float, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    for f in sorted(src.iterdir()):
        if f.suffix == ".safetensors":
            tensors = load_file(str(f))
            out = {}
            for name, t in tensors.items():
                if t.is_floating_point() and t.numel() > 1:
                    noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * (float(t.float().std()) * scale)
                    t = (t.float() + noise).to(t.dtype)
                out[name] = t.contiguous()
            save_file(out, str(dst / f.name), metadata={"format": "pt"})
        elif f.is_file():
            shutil.copyfile(f, dst / f.name)
    return dst
