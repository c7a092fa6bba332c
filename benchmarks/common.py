"""Pure helpers for the serving benchmarks: workload, per-request accounting, statistics, machine info, and the
pieces of a server's TOML that several benchmarks write (the quiet defaults, API-key tenants).

Nothing here starts processes or opens sockets, so tests/unit/test_bench_stats.py can test it directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------------

_SENTENCES = (
    "The lighthouse keeper climbed the spiral stairs every evening to light the great lamp.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "In 1969 two astronauts walked on the surface of the Moon while a third orbited above.",
    "A binary search tree keeps its keys ordered so that lookups take logarithmic time.",
    "The recipe calls for two cups of flour, a pinch of salt and three ripe bananas.",
    "Rivers carve valleys over millions of years, carrying sediment down to the sea.",
    "The committee postponed its decision until the budget report had been reviewed.",
    "Honeybees communicate the direction of flowers through a waggle dance in the hive.",
    "A good night's sleep improves memory, mood and the ability to concentrate.",
    "The old train station was converted into a museum of local history and crafts.",
    "Compilers translate source code into machine instructions that a processor can run.",
    "Volcanic islands form when magma rises through the ocean floor and cools.",
    "She practised the violin for an hour each morning before walking to school.",
    "The stock market fell sharply after the central bank raised interest rates again.",
    "Penguins huddle together through the Antarctic winter to conserve their warmth.",
    "Encryption keeps messages private by scrambling them with a secret key.",
    "The village held a festival every autumn to celebrate the end of the harvest.",
    "Glaciers store about two thirds of the fresh water on our planet.",
    "The detective noticed that the clock on the mantelpiece had stopped at midnight.",
    "Electric cars use batteries and motors instead of petrol engines and gearboxes.",
    "A balanced diet includes vegetables, fruit, whole grains and enough protein.",
    "The library extended its opening hours so that students could study for exams.",
    "Sound travels faster through water than it does through the air.",
    "The architect designed a tower whose shape was inspired by a twisting seashell.",
)

_LEADS = (
    "Continue the story in a few sentences:",
    "Summarize the text above in plain words:",
    "Write the next paragraph:",
    "Explain why this matters:",
    "List three questions a curious reader might ask:",
    "Describe what happens next:",
)


def make_prompts(n: int, *, seed: int = 0, tag: str = "Request") -> list[str]:
    """``n`` deterministic, varied raw-text prompts of roughly 30-120 tokens each.

    Every prompt starts with a unique numeric prefix (``"<tag> <i>."``), so no two prompts share a first
    KV-cache block: prefix caching stays on in both servers but never produces a hit.
    """
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        k = 1 + (i * 7 + rng.randrange(6)) % 6  # 1..6 sentences: about 25..115 tokens with the prefix
        sentences = rng.sample(_SENTENCES, k)
        lead = _LEADS[rng.randrange(len(_LEADS))]
        prompts.append(f"{tag} {i:05d}. " + " ".join(sentences) + f"\n\n{lead}")
    return prompts


# --------------------------------------------------------------------------------------------------
# Per-request accounting
# --------------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    """One streamed request. ``chunks`` holds (monotonic time, tokens in that chunk) for every chunk
    that carried at least one token; ``start`` is when the request was sent."""

    start: float
    end: float = 0.0
    chunks: list[tuple[float, int]] = field(default_factory=list)
    text: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # as reported by the server's usage
    cached_prompt_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def streamed_tokens(self) -> int:
        return sum(n for _, n in self.chunks)

    @property
    def tokens(self) -> int:
        """Completion tokens: the server's usage figure, else what was counted on the stream."""
        return self.completion_tokens if self.completion_tokens is not None else self.streamed_tokens

    @property
    def ttft(self) -> float | None:
        return self.chunks[0][0] - self.start if self.chunks else None

    @property
    def latency(self) -> float:
        return self.end - self.start

    def itl_samples(self) -> list[float]:
        """Per-token inter-token gaps: each gap between consecutive token-carrying chunks, divided by
        the tokens the later chunk carried (one sample per such token)."""
        out: list[float] = []
        for (t0, _), (t1, n) in zip(self.chunks, self.chunks[1:], strict=False):
            out.extend([(t1 - t0) / n] * n)
        return out

    def tpot(self) -> float | None:
        """Mean time per output token after the first chunk."""
        if len(self.chunks) < 2:
            return None
        after_first = self.streamed_tokens - self.chunks[0][1]
        return (self.chunks[-1][0] - self.chunks[0][0]) / after_first if after_first > 0 else None


class VllmStreamAccumulator:
    """Token accounting for vLLM's streamed ``/v1/completions`` with
    ``stream_options={"include_usage": true, "continuous_usage_stats": true}``: every chunk carries the
    cumulative usage, so the tokens in a chunk are the growth of ``usage.completion_tokens``. Without
    per-chunk usage (older servers) a chunk with non-empty text counts as one token."""

    def __init__(self, result: RequestResult) -> None:
        self.r = result
        self._cum = 0
        self._parts: list[str] = []

    def feed(self, obj: dict[str, Any], now: float) -> None:
        choices = obj.get("choices") or []
        usage = obj.get("usage")
        n = 0
        if choices:
            c = choices[0]
            text = c.get("text") or ""
            self._parts.append(text)
            # Tokens in this chunk: from the cumulative usage when the server sends it, else one per text chunk.
            n = int(usage.get("completion_tokens") or 0) - self._cum if usage is not None else int(bool(text))
            if c.get("finish_reason"):
                self.r.finish_reason = c["finish_reason"]
        if usage is not None:
            self._cum = int(usage.get("completion_tokens") or 0)
            self.r.prompt_tokens = usage.get("prompt_tokens")
            self.r.completion_tokens = self._cum
            details = usage.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                self.r.cached_prompt_tokens = int(details["cached_tokens"])
        if n > 0:
            self.r.chunks.append((now, n))
        self.r.text = "".join(self._parts)


_BASTION_FINISH = {0: None, 1: "stop", 2: "length", 3: "abort"}


class BastionStreamAccumulator:
    """Token accounting for bastion's ``Generate`` stream: the tokens in a message are its ``token_ids``;
    the last message carries ``usage``. Works on any object with the GenerateResponse fields."""

    def __init__(self, result: RequestResult) -> None:
        self.r = result
        self._parts: list[str] = []

    def feed(self, msg: Any, now: float) -> None:
        n = len(msg.token_ids)
        if n:
            self.r.chunks.append((now, n))
        if msg.text:
            self._parts.append(msg.text)
        if msg.finish_reason:
            self.r.finish_reason = _BASTION_FINISH.get(int(msg.finish_reason), str(msg.finish_reason))
        has_usage = msg.HasField("usage") if hasattr(msg, "HasField") else getattr(msg, "usage", None) is not None
        if has_usage:
            self.r.prompt_tokens = int(msg.usage.prompt_tokens)
            self.r.completion_tokens = int(msg.usage.completion_tokens)
            self.r.cached_prompt_tokens = int(msg.usage.cached_prompt_tokens)
        self.r.text = "".join(self._parts)


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default);
    None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Iterable[float]) -> float | None:
    xs = list(values)
    return sum(xs) / len(xs) if xs else None


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000.0, 3)


def summarize_level(results: Sequence[RequestResult], wall_s: float, concurrency: int) -> dict[str, Any]:
    """Aggregates one concurrency level. Output tokens/s = completion tokens of the successful requests
    divided by the wall time of the level (first request sent to last response done)."""
    ok = [r for r in results if r.ok]
    errors = [r.error for r in results if not r.ok]
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    itls = [x for r in ok for x in r.itl_samples()]
    tpots = [t for r in ok if (t := r.tpot()) is not None]
    lat = [r.latency for r in ok]
    tokens = sum(r.tokens for r in ok)
    prompt = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    cached = [r.cached_prompt_tokens for r in ok if r.cached_prompt_tokens is not None]
    mismatched = sum(1 for r in ok if r.completion_tokens is not None and r.completion_tokens != r.streamed_tokens)
    finish: dict[str, int] = {}
    for r in ok:
        key = r.finish_reason or "none"
        finish[key] = finish.get(key, 0) + 1
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": round(wall_s, 4),
        "completion_tokens": tokens,
        "output_tok_s": round(tokens / wall_s, 3) if wall_s > 0 else None,
        "requests_s": round(len(ok) / wall_s, 4) if wall_s > 0 else None,
        "ttft_ms": {"p50": _ms(percentile(ttfts, 50)), "p99": _ms(percentile(ttfts, 99)), "mean": _ms(mean(ttfts))},
        "itl_ms": {"p50": _ms(percentile(itls, 50)), "p99": _ms(percentile(itls, 99)), "mean": _ms(mean(itls))},
        "tpot_ms_mean": _ms(mean(tpots)),
        "latency_ms": {"p50": _ms(percentile(lat, 50)), "p99": _ms(percentile(lat, 99)), "mean": _ms(mean(lat))},
        "prompt_tokens": {"min": min(prompt), "mean": round(sum(prompt) / len(prompt), 2), "max": max(prompt)}
        if prompt
        else None,
        "cached_prompt_tokens": sum(cached) if cached else None,
        "token_count_mismatches": mismatched,  # usage != tokens counted on the stream
        "finish_reasons": finish,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 4 places; None when either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def compare(bastion_levels: Sequence[dict[str, Any]], vllm_levels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency: bastion/vLLM ratios and goal flags (throughput ratio >= 1, TTFT p50 ratio <= 1)."""
    by_c = {lv["concurrency"]: lv for lv in vllm_levels}
    out = []
    for b in bastion_levels:
        v = by_c.get(b["concurrency"])
        if v is None:
            continue
        tput = ratio(b["output_tok_s"], v["output_tok_s"])
        ttft = ratio(b["ttft_ms"]["p50"], v["ttft_ms"]["p50"])
        out.append(
            {
                "concurrency": b["concurrency"],
                "throughput_ratio": tput,
                "ttft_p50_ratio": ttft,
                "ttft_p99_ratio": ratio(b["ttft_ms"]["p99"], v["ttft_ms"]["p99"]),
                "itl_p50_ratio": ratio(b["itl_ms"]["p50"], v["itl_ms"]["p50"]),
                "goal_met": {
                    "throughput": tput is not None and tput >= 1.0,
                    "ttft_p50": ttft is not None and ttft <= 1.0,
                },
            }
        )
    return out


def compare_frontend_cpu(
    bastion_levels: Sequence[dict[str, Any]], vllm_levels: Sequence[dict[str, Any]], goal: float = 0.8
) -> list[dict[str, Any]]:
    """Per concurrency: the front-end process's CPU seconds per 1,000 output tokens, bastion / vLLM (issue 19:
    goal <= 0.8 — on 2 cores the front end competes with the engine). Levels without the figure are left out."""
    by_c = {lv["concurrency"]: lv for lv in vllm_levels}
    out = []
    for b in bastion_levels:
        v = by_c.get(b["concurrency"])
        bc, vc = b.get("frontend_cpu_s_per_1000_tokens"), (v or {}).get("frontend_cpu_s_per_1000_tokens")
        if bc is None or vc is None:
            continue
        r = ratio(bc, vc)
        out.append(
            {
                "concurrency": b["concurrency"],
                "bastion_cpu_s_per_1000_tokens": bc,
                "vllm_cpu_s_per_1000_tokens": vc,
                "ratio": r,
                "goal_met": r is not None and r <= goal,
            }
        )
    return out


def cpu_per_1000_tokens(cpu_s: float | None, tokens: int) -> float | None:
    """CPU seconds per 1,000 output tokens, 4 places; None without a reading or tokens."""
    if cpu_s is None or tokens <= 0:
        return None
    return round(cpu_s * 1000 / tokens, 4)


def process_tree_cpu_s(pid: int) -> tuple[float | None, float]:
    """CPU seconds used so far by one process (all its threads) and, apart, by all its descendants alive now
    (a descendant that exited is not counted: read around a phase in which none exits)."""
    kids = sum(c for p in descendants(pid) if (c := proc_cpu_s(p)) is not None)
    return proc_cpu_s(pid), kids


def compare_security(
    on_levels: Sequence[dict[str, Any]],
    off_levels: Sequence[dict[str, Any]],
    throughput_goals: dict[int, float] | None = None,
) -> list[dict[str, Any]]:
    """Per concurrency: security on / off. Goals: TTFT p50 delta <= +1 ms; throughput ratio >= the level's entry in
    ``throughput_goals`` (None: 0.97 at every level, issue 4's real-engine goal), ``goal_met.throughput`` None at a
    level without a goal."""
    by_c = {lv["concurrency"]: lv for lv in off_levels}
    out = []
    for on in on_levels:
        off = by_c.get(on["concurrency"])
        if off is None:
            continue
        tput = ratio(on["output_tok_s"], off["output_tok_s"])
        goal = 0.97 if throughput_goals is None else throughput_goals.get(on["concurrency"])
        a, b = on["ttft_ms"]["p50"], off["ttft_ms"]["p50"]
        delta = round(a - b, 2) if a is not None and b is not None else None
        out.append(
            {
                "concurrency": on["concurrency"],
                "throughput_ratio": tput,
                "ttft_p50_delta_ms": delta,
                "ttft_p50_ratio": ratio(a, b),
                "throughput_goal": goal,
                "goal_met": {
                    "throughput": None if goal is None else tput is not None and tput >= goal,
                    "ttft_p50": delta is not None and delta <= 1.0,
                },
            }
        )
    return out


def bootstrap_interval(
    statistic: Any, a: Sequence[float], b: Sequence[float], *, rounds: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(a, b)`` (e.g. the ratio of two medians): ``a`` and ``b`` (the
    runs of each side) are resampled with replacement, each on its own, ``rounds`` times. Seeded: the same runs
    give the same interval."""
    if not a or not b:
        raise ValueError("bootstrap_interval needs runs on both sides")
    rng = random.Random(seed)
    values = sorted(statistic(rng.choices(a, k=len(a)), rng.choices(b, k=len(b))) for _ in range(rounds))
    tail = (1 - level) / 2
    return values[int(tail * rounds)], values[min(rounds - 1, int((1 - tail) * rounds))]


def add_on_off_intervals(
    comparison: list[dict[str, Any]],
    on_levels: Sequence[dict[str, Any]],
    off_levels: Sequence[dict[str, Any]],
    cpu_key: str = "server_cpu_ms_per_call",
) -> None:
    """95 % bootstrap intervals (runs resampled per side) of each level's throughput ratio (on / off, medians), TTFT
    p50 delta (on - off, medians of the runs' p50s) and, where every run has a non-zero ``cpu_key``, CPU ratio, beside the
    point figures of ``compare_security``. Each level needs its repeated runs under ``runs``."""
    med = statistics.median
    for cmp, on, off in zip(comparison, on_levels, off_levels, strict=True):
        tput_on, tput_off = [r["output_tok_s"] for r in on["runs"]], [r["output_tok_s"] for r in off["runs"]]
        ttft_on, ttft_off = [r["ttft_ms"]["p50"] for r in on["runs"]], [r["ttft_ms"]["p50"] for r in off["runs"]]
        lo, hi = bootstrap_interval(lambda a, b: med(a) / med(b), tput_on, tput_off)
        cmp["throughput_ratio_ci95"] = [round(lo, 4), round(hi, 4)]
        lo, hi = bootstrap_interval(lambda a, b: med(a) - med(b), ttft_on, ttft_off)
        cmp["ttft_p50_delta_ms_ci95"] = [round(lo, 3), round(hi, 3)]
        cpu_on, cpu_off = [r.get(cpu_key) for r in on["runs"]], [r.get(cpu_key) for r in off["runs"]]
        if None in cpu_on or None in cpu_off or 0 in cpu_off:  # 0: under one clock tick, no ratio at that resolution
            continue
        cmp[cpu_key] = {"on": on[cpu_key], "off": off[cpu_key]}
        name = "server_cpu_ratio" if cpu_key == "server_cpu_ms_per_call" else f"{cpu_key}_ratio"
        cmp[name] = round(med(cpu_on) / med(cpu_off), 4)
        lo, hi = bootstrap_interval(lambda a, b: med(a) / med(b), cpu_on, cpu_off)
        cmp[f"{name}_ci95"] = [round(lo, 4), round(hi, 4)]


def output_agreement(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    """How many prompts got the identical (greedy) completion text from both servers."""
    common = sorted(set(a) & set(b))
    same = sum(1 for k in common if a[k] == b[k])
    return {"compared": len(common), "identical": same, "fraction": round(same / len(common), 4) if common else None}


# --------------------------------------------------------------------------------------------------
# Server configuration
# --------------------------------------------------------------------------------------------------

# Off in benchmarks of the serving path: the go-live gate (models released without an attestation), the drift
# and red-team probes (no background load competing with the measured calls) and the metrics listener.
QUIET_SERVER_TOML = (
    "[assurance]\nrequire_attestation = false\n[assurance.drift]\nenabled = false\n"
    '[assurance.redteam]\nenabled = false\n[observability]\nmetrics_listen = ""\n'
)


def api_key_tenants(d: Path, tenants: Mapping[str, Mapping[str, Any]]) -> tuple[str, dict[str, str]]:
    """One API key per tenant (a real key store under ``d``), a tenancy policy giving each key's principal its
    tenant with the given limits (TenantPolicy fields), and an audit log under ``d/audit``. Returns the
    ``[auth.api_keys]``, ``[tenancy]`` and ``[audit]`` tables, and {tenant: plaintext key}."""
    from bastion.auth.api_keys import issue
    from bastion.auth.principal import api_key_principal_id

    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    store, policy = d / "api-keys.json", d / "tenants.toml"
    keys: dict[str, str] = {}
    principals: list[str] = []
    limits: list[str] = []
    for name, fields in tenants.items():
        key_id, keys[name] = issue(store, f"bench-{name}")
        principals += ["[[principals]]", f"id = {json.dumps(api_key_principal_id(key_id))}", f'tenant = "{name}"', ""]
        limits += [f'[tenants."{name}"]', *(f"{k} = {json.dumps(v)}" for k, v in fields.items()), ""]
    policy.write_text("\n".join(principals + limits), encoding="utf-8")
    toml = f'[auth.api_keys]\nfile = "{store}"\n[tenancy]\npolicy_file = "{policy}"\n[audit]\ndir = "{d / "audit"}"\n'
    return toml, keys


# --------------------------------------------------------------------------------------------------
# Machine and process information
# --------------------------------------------------------------------------------------------------


def save_report(report: Mapping[str, Any], out: str | Path | None, default: Path) -> Path:
    """Writes a benchmark's JSON report to ``out`` (``--out``) or ``default``; prints and returns the path."""
    path = Path(out) if out else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not cpu_model:
                    cpu_model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    cpu_model = cpu_model or platform.processor()
    mem_total_kb = read_proc_kv("/proc/meminfo").get("MemTotal")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = None
    return {
        "cpu_model": cpu_model or None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "simd": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"}),
        "mem_total_gib": round(mem_total_kb / (1 << 20), 1) if mem_total_kb else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        # Settings given to bastion's servers through the environment (a run's A/B side); secrets by name only.
        "bastion_env": {
            k: ("(set)" if any(w in k for w in ("KEY", "TOKEN", "SECRET", "PASS")) else v)
            for k, v in sorted(os.environ.items())
            if k.startswith("BASTION_")
        },
    }


def read_proc_kv(path: str) -> dict[str, int]:
    """``Key:   123 kB`` lines of a /proc file as {key: int}; {} when unreadable (process gone)."""
    out: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if parts and parts[0].isdigit():
                    out[key.strip()] = int(parts[0])
    except OSError:
        pass
    return out


def proc_memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process, in kB."""
    st = read_proc_kv(f"/proc/{pid}/status")
    return {k: st[k] for k in ("VmRSS", "VmHWM") if k in st}


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) one process has used so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[-1].split()  # comm may hold spaces: fixed fields after the last ')'
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def add_stream_interval(p: argparse.ArgumentParser, whom: str) -> None:
    """``--stream-interval N``: tokens per streamed message (vLLM's stream_interval, 1 to 16), asked on every call."""
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        choices=range(1, 17),
        metavar="N",
        help=f"tokens per streamed message, asked on every call of {whom} (vLLM's stream_interval; default 1)",
    )
