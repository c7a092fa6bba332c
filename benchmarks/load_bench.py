#!/usr/bin/env python3
"""Sealed-model load benchmark: the Rust core's verify+decrypt throughput against plain reads of the same
bytes, in the same run; optionally time to SERVING of the sealed default model vs the same model plain.

    .venv/bin/python benchmarks/load_bench.py --quick     # throughput only, 2 repeats (CI)
    .venv/bin/python benchmarks/load_bench.py             # throughput, 5 repeats, + time to ready (2 starts each)

Throughput is measured on a warm page cache (the file is read once first) so that it measures the CPU
work, not the disk. Every mode runs in a fresh subprocess with ``RAYON_NUM_THREADS`` set (1 = per core,
and all cores); ``--smoke`` (CI) runs each mode once in this process with one thread, which checks that every
mode works but measures a warmer process than a full run. Modes, each over every byte of every data file of the sealed model:

* ``plain_read``: ``readinto`` of the data files in 1 MiB chunks into one reused buffer (the anchor);
* ``hash_only``: the ciphertext hash of every segment against the header's table (no key);
* ``verify_decrypt``: hash check + AES-256-GCM authentication and decryption of every segment;
* ``loader_path``: what vLLM's worker does (``bastion.engine.vllm.sealed_loader.sealed_weights``): every byte
  in contiguous 16 MiB batches (hash, decrypt into batch buffers the loader reuses), tensors as zero-copy torch
  views of them.
* ``tensorizer``: the anchor for encrypted loading: CoreWeave tensorizer (PyPI ``tensorizer``, libsodium
  XSalsa20-Poly1305) deserializing the same weights, encrypted with a random key, into CPU tensors
  (``num_readers`` = the thread count; no integrity check beyond its MACs, no signature).

Goals (issues 3 and 19): verify+decrypt ≥ 1.5 GB/s per core; ≥ 0.8× plain read with all cores; bastion's
loader path ≥ 2× tensorizer's encrypted load on one thread and on all cores; time to ready sealed ≤ 1.10× plain. Output: a table and ``benchmarks/results/load_bench[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "python"), str(ROOT / "benchmarks"), str(ROOT)]  # bastion, common, testkit

from common import machine_info  # noqa: E402 - after the sys.path insert above
from testkit.launcher import NO_HEALTH_LISTENER, BastionServer, ServerStartError  # noqa: E402 - after the sys.path insert above

MODES = ("plain_read", "hash_only", "verify_decrypt", "loader_path", "tensorizer")


def _tensorizer_file(work: Path) -> tuple[Path, Path]:
    """The default model's weights serialized by tensorizer with a random encryption key (made once)."""
    import torch
    from safetensors.torch import load_file
    from tensorizer import EncryptionParams, TensorSerializer

    from bastion.config import load_settings
    from bastion.models.default import ensure_default_model

    out, key = work / "model.tensors", work / "tensorizer.key"
    if out.is_file() and key.is_file():
        return out, key
    work.mkdir(parents=True, exist_ok=True)
    plain = ensure_default_model(load_settings(None).cache_dir).path
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(plain.glob("*.safetensors")):
        sd.update(load_file(str(f)))
    enc = EncryptionParams.random()
    ser = TensorSerializer(str(out), encryption=enc)
    ser.write_state_dict(sd)
    ser.close()
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(enc.key)
    return out, key


def _child(mode: str, sealed: str, kek: str) -> None:
    """Runs one mode once in this (fresh) process; prints {"bytes", "seconds"}."""
    print(json.dumps(_measure(mode, sealed, kek)))


def _measure(mode: str, sealed: str, kek: str) -> dict[str, float]:
    """One run of ``mode``: {"bytes", "seconds"} (Rayon's and torch's thread counts as this process has them)."""
    from bastion.weights import SealedReader, verify_ciphertext

    if mode == "tensorizer":
        import torch
        from tensorizer import DecryptionParams, TensorDeserializer

        threads = int(os.environ.get("RAYON_NUM_THREADS", "1"))
        torch.set_num_threads(threads)
        path, key = _tensorizer_file(ROOT / "benchmarks" / "results" / "tmp" / "tensorizer")
        started = time.perf_counter()
        d = TensorDeserializer(
            str(path), device="cpu", num_readers=threads, encryption=DecryptionParams.from_key(Path(key).read_bytes())
        )
        n = sum(t.nbytes for t in d.values())
        d.close()
        return {"bytes": n, "seconds": time.perf_counter() - started}

    from bastion.engine.vllm.sealed_loader import sealed_weights  # imports torch: outside the timed region

    data = sorted(Path(sealed).glob("*.ctxd"))
    total = sum(p.stat().st_size for p in data)
    started = time.perf_counter()
    if mode == "plain_read":
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        n = 0
        for p in data:
            with open(p, "rb", buffering=0) as f:
                while True:
                    got = f.readinto(view)
                    if not got:
                        break
                    n += got
        assert n == total
    elif mode == "hash_only":
        rep = verify_ciphertext(sealed)
        assert rep.bytes == total
    elif mode == "verify_decrypt":
        with SealedReader(sealed, kek) as r:
            rep = r.verify_all()
        assert rep.bytes == total
    elif mode == "loader_path":
        with SealedReader(sealed, kek) as r:
            n = sum(t.nbytes for _, t in sealed_weights(r))
        total = n  # tensor bytes (each data file's small embedded safetensors header excluded)
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {"bytes": total, "seconds": time.perf_counter() - started}


def run_mode(mode: str, sealed: Path, kek: Path, threads: int, *, in_process: bool = False) -> dict[str, float]:
    if in_process:  # --smoke: main() set one thread for Rayon and torch before anything started a pool
        r = _measure(mode, str(sealed), str(kek))
        return {"bytes": r["bytes"], "seconds": r["seconds"], "gb_s": r["bytes"] / r["seconds"] / 1e9}
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--sealed", str(sealed), "--kek", str(kek)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {"bytes": r["bytes"], "seconds": r["seconds"], "gb_s": r["bytes"] / r["seconds"] / 1e9}


def warm(sealed: Path) -> None:
    for p in sealed.iterdir():
        with open(p, "rb") as f:
            while f.read(8 << 20):
                pass


def time_to_ready(sealed: bool, workdir: Path) -> float:
    """Seconds from `bastion serve` start to health SERVING, with the default model sealed or plain."""
    from bastion.config import load_settings
    from bastion.models.default import ensure_default_model

    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "b.sock"
    sock.unlink(missing_ok=True)
    model = (
        'source = "default"'
        if sealed
        else f'source = "{ensure_default_model(load_settings(None).cache_dir).path}"\nserved_name = "smollm2-135m-instruct"'
    )
    weights = "" if sealed else "[weights]\nallow_unsealed = true\n"
    # The server refuses to start without authentication and a tenancy policy: an API key store and a
    # one-tenant policy (health, which this measures, is public).
    from bastion.auth.api_keys import issue

    store, policy = workdir / "api-keys.json", workdir / "tenants.toml"
    if not store.exists():
        key_id, _ = issue(store, "load-bench")
        policy.write_text(
            f'[[principals]]\nid = "apikey:{key_id}"\ntenant = "bench"\n[tenants.bench]\nmodels = ["*"]\n'
        )
    security = (
        f'[auth.api_keys]\nfile = "{store}"\n[tenancy]\npolicy_file = "{policy}"\n'
        f'[audit]\ndir = "{workdir / "audit"}"\n'
        # Load time only: no drift checks competing for the CPU after start.
        "[assurance.drift]\nenabled = false\n[assurance.redteam]\nenabled = false\n"
    )
    config = (
        f'[server]\nlisten = "unix:{sock}"\n[model]\n{model}\ncpu_kv_cache_gib = 1\nmax_num_seqs = 16\n'
        f'{weights}[observability]\nmetrics_listen = ""\n{NO_HEALTH_LISTENER}{security}'
    )
    server = BastionServer(workdir, config, target=f"unix:{sock}", config_name="b.toml").start()
    try:
        server.wait_serving(900, poll_s=0.25)
        return time.monotonic() - server.started_at
    except ServerStartError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        server.stop(grace_s=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="throughput only, 2 repeats")
    ap.add_argument("--repeats", type=int, help="runs per mode and thread count (median reported)")
    ap.add_argument("--smoke", action="store_true", help="with --quick: one thread, one run per mode (CI smoke test)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--sealed", help=argparse.SUPPRESS)
    ap.add_argument("--kek", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.sealed, args.kek)
        return 0
    if args.smoke:  # every mode in this process, one thread: set before Rayon's or torch's pool starts
        os.environ["RAYON_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)

    from bastion.config import load_settings
    from bastion.models.resolve import default_kek_path, ensure_default_sealed

    cache = load_settings(None).cache_dir
    sealed = ensure_default_sealed(cache).path
    kek = default_kek_path(cache)
    repeats = 1 if args.smoke else args.repeats or (2 if args.quick else 5)
    thread_counts = [1] if args.smoke else sorted({1, os.cpu_count() or 1})
    cores = thread_counts[-1]
    _tensorizer_file(ROOT / "benchmarks" / "results" / "tmp" / "tensorizer")  # made once, outside timing
    warm(sealed)
    results: dict[str, dict[str, Any]] = {}
    for threads in thread_counts:
        for mode in MODES:
            runs = [run_mode(mode, sealed, kek, threads, in_process=args.smoke) for _ in range(repeats)]
            key = f"{mode}@{threads}"
            results[key] = {
                "mode": mode,
                "threads": threads,
                "bytes": runs[0]["bytes"],
                "gb_s_median": round(statistics.median(r["gb_s"] for r in runs), 3),
                "gb_s_runs": [round(r["gb_s"], 3) for r in runs],
            }
            print(
                f"{mode:15s} threads={threads}  {results[key]['gb_s_median']:7.3f} GB/s  (runs {results[key]['gb_s_runs']})",
                flush=True,
            )
    per_core = results["verify_decrypt@1"]["gb_s_median"]
    all_cores = results[f"verify_decrypt@{cores}"]["gb_s_median"]
    plain = results[f"plain_read@{cores}"]["gb_s_median"]
    vs_tensorizer = results["loader_path@1"]["gb_s_median"] / results["tensorizer@1"]["gb_s_median"]
    vs_tensorizer_all = results[f"loader_path@{cores}"]["gb_s_median"] / results[f"tensorizer@{cores}"]["gb_s_median"]
    goals: dict[str, Any] = {
        "loader_path_vs_tensorizer_per_core": round(vs_tensorizer, 3),
        "loader_path_vs_tensorizer_all_cores": round(vs_tensorizer_all, 3),
        "vs_tensorizer_goal": 2.0,
        "vs_tensorizer_met": min(vs_tensorizer, vs_tensorizer_all) >= 2.0,
        "loader_path_vs_plain_read_all_cores": round(results[f"loader_path@{cores}"]["gb_s_median"] / plain, 3),
        "verify_decrypt_per_core_gb_s": per_core,
        "per_core_goal_gb_s": 1.5,
        "per_core_met": per_core >= 1.5,
        "all_cores_vs_plain_read": round(all_cores / plain, 3),
        "all_cores_goal": 0.8,
        "all_cores_met": all_cores / plain >= 0.8,
    }
    ready: dict[str, Any] | None = None
    if not args.quick:
        work = ROOT / "benchmarks" / "results" / "tmp" / "ready"
        # one start of each first, so both measured starts find vLLM's compile cache warm
        time_to_ready(False, work / "warm")
        plain_s = [time_to_ready(False, work / f"plain{i}") for i in range(2)]
        sealed_s = [time_to_ready(True, work / f"sealed{i}") for i in range(2)]
        ready = {
            "plain_s": [round(x, 1) for x in plain_s],
            "sealed_s": [round(x, 1) for x in sealed_s],
            "ratio_median": round(statistics.median(sealed_s) / statistics.median(plain_s), 3),
        }
        goals.update(
            {
                "time_to_ready_ratio": ready["ratio_median"],
                "time_to_ready_goal": 1.10,
                "time_to_ready_met": ready["ratio_median"] <= 1.10,
            }
        )
        print(
            f"time to SERVING: plain {ready['plain_s']} s, sealed {ready['sealed_s']} s, ratio {ready['ratio_median']}"
        )
    report = {
        "benchmark": "load_bench",
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "model": str(sealed),
        "aead": "aes-256-gcm",
        "hash": "blake3",
        "segment_size": 1 << 20,
        "repeats": repeats,
        "throughput": results,
        "time_to_ready": ready,
        "goals": goals,
    }
    out = args.out or ROOT / "benchmarks" / "results" / ("load_bench-quick.json" if args.quick else "load_bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(goals, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
