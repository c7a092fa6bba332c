#!/usr/bin/env python3
"""Sealed weights into accelerator memory vs plain safetensors into accelerator memory (issue 19, item 5).

    python3 benchmarks/gpu_load_bench.py --device cuda --gib 8 --threads 1,4,16     # on the lent GPU machine
    .venv/bin/python benchmarks/gpu_load_bench.py --device cpu --gib 0.0625 --threads 1 --repeats 1   # CI smoke

It needs only torch, numpy, safetensors and the built extension (``python/bastion/_native.abi3.so``: abi3, so it
loads on the GPU machine's Python 3.12; it is git-ignored, so a device run must carry it), and of bastion's Python
only ``bastion.native`` and ``bastion.errors`` (no vLLM, no pydantic). Steps, all on the machine it runs on:

1. a synthetic model of bf16 tensors (``--gib``, at most 8: writing more eats the device budget) written with
   safetensors, then sealed by the Rust core (AES-256-GCM, BLAKE3 segment hashes, 1 MiB segments) with a fresh KEK;
2. per thread count, in a fresh process (``RAYON_NUM_THREADS``), alternating the two sides ``--repeats`` times:
   * ``sealed``: open the sealed directory (unwrap the DEK, check the key commitment and the header), then for each
     chunk of the data file: read, hash-check, authenticate and decrypt it on the CPU threads straight into one of
     a few pinned host buffers (``read_range_into``), and copy it to the device asynchronously on a side stream, so
     the copy of chunk *k* overlaps the decryption of chunk *k + 1*; a pinned buffer is reused once its copy's
     event completed. Tensors are views of the device buffer at the safetensors offsets.
   * ``plain``: the same pipeline over the plain safetensors file (``preadv`` into the pinned buffers by the same
     number of threads, the same asynchronous copies): the anchor measured beside it.
   * ``safetensors``: ``safetensors.torch.load_file(device=...)``, the library's own path, for reference;
   * the CPU work alone, nothing copied to the device (where the sealed side's time goes): ``read_only`` (the plain
     side's reads), ``hash_only`` (read + BLAKE3 check of every ciphertext segment) and ``verify_decrypt`` (read +
     hash check + AES-GCM decryption into reused buffers), reported as seconds per GB beyond the previous step.
3. every side's device bytes are compared (the sealed load must equal the plain one) before any time counts.

Times are from the first byte read to ``synchronize()``, on a warm page cache (each file is read once first), so
they measure the load path, not the disk. The goal: sealed ≤ 1.10× plain's time at each thread count. Output: a
table and ``benchmarks/results/gpu_load_bench[-cpu].json``, rewritten after every thread count (a run stopped at the
device's time limit keeps what it measured; ``complete`` says whether every thread count ran). The OMS signature check of a real load (it hashes
the header and the small files) is not part of this path.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python")]  # bastion.native and bastion.errors only

SIDES = ("sealed", "plain", "safetensors")
# The CPU work of the two pipelines alone (no device copy), on the same threads: where the sealed side's time goes.
PROFILE = ("read_only", "hash_only", "verify_decrypt")
CHUNK = 16 << 20  # bytes per pinned buffer and per copy: a multiple of the 1 MiB segment
SLOTS = 4  # pinned buffers in flight
SEGMENT = 1 << 20
GOAL = 1.10


def make_model(work: Path, gib: float) -> tuple[Path, Path, Path, int]:
    """A synthetic bf16 model of about ``gib`` GiB (safetensors) and its sealed copy; returns (plain file, sealed
    directory, KEK, bytes of tensor data)."""
    import torch
    from safetensors.torch import save_file

    from bastion import native

    src = work / "plain"
    src.mkdir(parents=True)
    # Layers the size of a 7B model's projections (4096 x 4096 bf16 = 32 MiB), fewer when the model is small.
    total = int(gib * (1 << 30))
    side = 4096 if total >= 64 * 32 << 20 else 1024
    count = max(2, total // (side * side * 2))
    gen = torch.Generator().manual_seed(19)
    tensors = {f"layers.{i}.weight": torch.randn(side, side, generator=gen).to(torch.bfloat16) for i in range(count)}
    tensors["norm.weight"] = torch.ones(side, dtype=torch.bfloat16)  # an odd-sized last tensor
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text('{"model_type": "llama"}')
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    del tensors
    kek = work / "kek"
    native.create_kek(kek)
    sealed = work / "sealed"
    native.seal_dir(src, sealed, kek, segment_size=SEGMENT)
    return src / "model.safetensors", sealed, kek, nbytes


def _warm(paths: list[Path]) -> None:
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


class Pipeline:
    """Pinned host buffers, a side stream and one device buffer for the whole data file."""

    def __init__(self, device: str, length: int) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        pin = self.cuda
        self.host = [torch.empty(CHUNK, dtype=torch.uint8, pin_memory=pin) for _ in range(SLOTS)]
        self.host_np = [h.numpy() for h in self.host]  # writable, C-contiguous buffers over the same memory
        self.events: list[Any] = [None] * SLOTS
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.out = torch.empty(length, dtype=torch.uint8, device=self.device)

    def run(self, length: int, fill: Any) -> Any:
        """Fills ``out`` chunk by chunk: ``fill(begin, numpy view)`` writes host bytes; the copy is queued."""
        torch = self.torch
        for k, begin in enumerate(range(0, length, CHUNK)):
            slot = k % SLOTS
            if self.events[slot] is not None:
                self.events[slot].synchronize()  # that buffer's previous copy is done: it may be overwritten
            n = min(CHUNK, length - begin)
            fill(begin, self.host_np[slot][:n])
            if self.cuda:
                with torch.cuda.stream(self.stream):
                    self.out[begin : begin + n].copy_(self.host[slot][:n], non_blocking=True)
                    ev = torch.cuda.Event()
                    ev.record(self.stream)
                self.events[slot] = ev
            else:
                self.out[begin : begin + n].copy_(self.host[slot][:n])
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return self.out


def _views(buf: Any, plain_file: Path) -> dict[str, Any]:
    """Tensors as views of a device buffer holding the whole safetensors file (its header parsed by json)."""
    import torch

    with open(plain_file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        b, e = meta["data_offsets"]
        out[name] = buf[base + b : base + e].view(torch.bfloat16).reshape(meta["shape"])
    return out


def checksum(tensors: dict[str, Any]) -> list[int]:
    """Exact and order-free: per tensor, by name, the sum of its bf16 bit patterns as integers."""
    import torch

    return [int(tensors[n].view(torch.int16).to(torch.int64).sum().item()) for n in sorted(tensors)]


def _plain_fill(fd: int, pool: ThreadPoolExecutor, threads: int) -> Any:
    """``fill(begin, view)``: ``preadv`` of the plain file into ``view``, split across ``threads``."""

    def fill(begin: int, view: Any) -> None:
        part = -(-len(view) // threads)
        parts = [(i, min(i + part, len(view))) for i in range(0, len(view), part)]

        def read(lo: int, hi: int) -> None:
            mv = memoryview(view)[lo:hi]
            got = 0
            while got < hi - lo:
                n = os.preadv(fd, [mv[got:]], begin + lo + got)
                assert n > 0, "short read"
                got += n

        list(pool.map(lambda r: read(*r), parts))

    return fill


def profile(side: str, plain_file: Path, sealed: Path, kek: Path, threads: int) -> dict[str, Any]:
    """CPU work only, nothing copied to the device: ``read_only`` (the plain side's reads into one reused host
    buffer), ``hash_only`` (every ciphertext segment read and BLAKE3-checked: ``verify_ciphertext``) and
    ``verify_decrypt`` (read, hash-checked, authenticated and decrypted into reused buffers: ``verify_all``)."""
    import numpy as np

    from bastion import native

    length = plain_file.stat().st_size
    if side == "read_only":
        pool = ThreadPoolExecutor(max_workers=threads)
        fd = os.open(plain_file, os.O_RDONLY)
        host = np.empty(CHUNK, dtype=np.uint8)
        fill = _plain_fill(fd, pool, threads)
        started = time.perf_counter()
        for begin in range(0, length, CHUNK):
            fill(begin, host[: min(CHUNK, length - begin)])
        seconds = time.perf_counter() - started
        os.close(fd)
        pool.shutdown()
        return {"seconds": seconds, "bytes": length}
    started = time.perf_counter()
    reader = native.SealedReader(str(sealed), str(kek))
    _files, _segments, nbytes = reader.verify_ciphertext() if side == "hash_only" else reader.verify_all()
    return {"seconds": time.perf_counter() - started, "bytes": nbytes}


def measure(side: str, device: str, plain_file: Path, sealed: Path, kek: Path, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    length = plain_file.stat().st_size
    if side == "safetensors":
        from safetensors.torch import load_file

        started = time.perf_counter()
        tensors = load_file(str(plain_file), device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "bytes": length, "checksum": checksum(tensors)}
    pipe = Pipeline(device, length)
    if side == "sealed":
        from bastion import native

        started = time.perf_counter()
        reader = native.SealedReader(str(sealed), str(kek))
        (_data, _source, plain_len) = reader.files()[0]
        assert plain_len == length, (plain_len, length)
        buf = pipe.run(length, lambda b, view: reader.read_range_into(0, b, view))
    else:
        pool = ThreadPoolExecutor(max_workers=threads)
        fd = os.open(plain_file, os.O_RDONLY)
        started = time.perf_counter()
        buf = pipe.run(length, _plain_fill(fd, pool, threads))
        os.close(fd)
        pool.shutdown()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": length, "checksum": checksum(_views(buf, plain_file))}


def child(args: argparse.Namespace) -> int:
    work = Path(args.work)
    plain_file, sealed, kek = work / "plain" / "model.safetensors", work / "sealed", work / "kek"
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in (*SIDES, *PROFILE)}
    for _ in range(args.repeats):
        for side in SIDES:
            runs[side].append(measure(side, args.device, plain_file, sealed, kek, args.threads))
        for side in PROFILE:
            runs[side].append(profile(side, plain_file, sealed, kek, args.threads))
    print(json.dumps(runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the lent GPU) or cpu (the CI smoke run)")
    ap.add_argument("--gib", type=float, default=8.0, help="synthetic model size in GiB (at most 8)")
    ap.add_argument("--threads", default="1,4,16", help="comma-separated CPU thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.threads = int(args.threads)
        return child(args)
    if not 0 < args.gib <= 8:
        raise SystemExit(f"--gib must be in (0, 8], got {args.gib}")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu for the CPU smoke run)")
    threads = [int(t) for t in args.threads.split(",")]
    suffix = "" if args.device.startswith("cuda") else "-cpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_load_bench{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "gpu_load_bench",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "loadavg_at_start": list(os.getloadavg()),
        "chunk_bytes": CHUNK,
        "pinned_slots": SLOTS,
        "repeats": args.repeats,
        "goal_sealed_vs_plain_time": GOAL,
    }
    with tempfile.TemporaryDirectory(prefix="gpu-load-bench-", dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        plain_file, sealed, kek, nbytes = make_model(work, args.gib)
        made_s = time.perf_counter() - started
        print(f"model: {nbytes / 2**30:.2f} GiB of bf16 tensors, written and sealed in {made_s:.1f} s", flush=True)
        report["model_bytes"] = nbytes
        report["model_written_and_sealed_s"] = round(made_s, 1)
        _warm([plain_file, *sorted(sealed.glob("*.ctxd"))])
        results: dict[str, Any] = {}
        for t in threads:
            env = {**os.environ, "RAYON_NUM_THREADS": str(t), "OMP_NUM_THREADS": str(t)}
            cmd = [sys.executable, __file__, "--child", "--work", str(work), "--device", args.device]
            cmd += ["--threads", str(t), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"threads={t}: child exited {proc.returncode}\n{proc.stderr[-3000:]}")
            runs = json.loads(proc.stdout.strip().splitlines()[-1])
            sums = {json.dumps(r["checksum"]) for s in SIDES for r in runs[s]}
            if len(sums) != 1:
                raise SystemExit(f"threads={t}: the sides loaded different bytes ({len(sums)} different checksums)")
            row: dict[str, Any] = {}
            for side in (*SIDES, *PROFILE):
                secs = [r["seconds"] for r in runs[side]]
                row[side] = {
                    "seconds_median": round(statistics.median(secs), 4),
                    "seconds_runs": [round(s, 4) for s in secs],
                    "gb_s_median": round(runs[side][0]["bytes"] / statistics.median(secs) / 1e9, 3),
                }
            row["sealed_vs_plain_time"] = round(row["sealed"]["seconds_median"] / row["plain"]["seconds_median"], 3)
            row["sealed_vs_safetensors_time"] = round(
                row["sealed"]["seconds_median"] / row["safetensors"]["seconds_median"], 3
            )
            med = {side: row[side]["seconds_median"] / (runs[side][0]["bytes"] / 1e9) for side in PROFILE}  # s/GB
            row["profile_s_per_gb"] = {
                "read": round(med["read_only"], 4),
                "hash_beyond_read": round(med["hash_only"] - med["read_only"], 4),
                "decrypt_beyond_hash": round(med["verify_decrypt"] - med["hash_only"], 4),
            }
            # The CPU work alone bounds the pipelines: what the format costs beyond a plain read, on these threads.
            row["verify_decrypt_vs_read_time"] = round(med["verify_decrypt"] / med["read_only"], 3)
            results[str(t)] = row
            print(
                f"threads={t:2d}  sealed {row['sealed']['gb_s_median']:6.2f} GB/s  plain {row['plain']['gb_s_median']:6.2f}"
                f"  safetensors {row['safetensors']['gb_s_median']:6.2f}  sealed/plain time {row['sealed_vs_plain_time']}",
                flush=True,
            )
            print(
                f"           profile s/GB: read {med['read_only']:.3f}  +hash {med['hash_only'] - med['read_only']:.3f}"
                f"  +decrypt {med['verify_decrypt'] - med['hash_only']:.3f}"
                f"  (verify+decrypt/read time {row['verify_decrypt_vs_read_time']})",
                flush=True,
            )
            report["threads"] = results
            report["complete"] = t == threads[-1]
            report["goal_met"] = report["complete"] and all(r["sealed_vs_plain_time"] <= GOAL for r in results.values())
            # Written after every thread count: a run stopped at the device's time limit keeps what it measured.
            out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
