"""Unit tests of the serving benchmark's statistics and token accounting (benchmarks/common.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "common.py"
_spec = importlib.util.spec_from_file_location("bench_common", _PATH)
assert _spec is not None and _spec.loader is not None
common = importlib.util.module_from_spec(_spec)
sys.modules["bench_common"] = common
_spec.loader.exec_module(common)


# --- percentile ------------------------------------------------------------------------------------


def test_percentile_matches_linear_interpolation() -> None:
    xs = [15, 20, 35, 40, 50]
    assert common.percentile(xs, 0) == 15
    assert common.percentile(xs, 100) == 50
    assert common.percentile(xs, 50) == 35
    assert common.percentile(xs, 40) == pytest.approx(29.0)  # numpy.percentile(xs, 40) == 29.0
    assert common.percentile(xs, 99) == pytest.approx(49.6)


def test_percentile_unsorted_single_and_empty() -> None:
    assert common.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert common.percentile([7.0], 99) == 7.0
    assert common.percentile([], 50) is None


@pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
def test_percentile_rejects_bad_q(q: float) -> None:
    with pytest.raises(ValueError):
        common.percentile([1.0, 2.0], q)


def test_percentile_agrees_with_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    xs = rng.exponential(size=101).tolist()
    for q in (1, 25, 50, 90, 99):
        assert common.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


# --- per-request figures ---------------------------------------------------------------------------


def _result(start: float, chunks: list[tuple[float, int]], usage: int | None = None, end: float | None = None):
    r = common.RequestResult(start=start, chunks=list(chunks), completion_tokens=usage)
    r.end = end if end is not None else (chunks[-1][0] if chunks else start)
    return r


def test_ttft_itl_tpot_one_token_per_chunk() -> None:
    r = _result(10.0, [(10.5, 1), (10.6, 1), (10.8, 1)], usage=3)
    assert r.ttft == pytest.approx(0.5)
    assert r.itl_samples() == pytest.approx([0.1, 0.2])
    assert r.tpot() == pytest.approx(0.15)
    assert r.tokens == 3 and r.streamed_tokens == 3


def test_itl_divides_a_multi_token_chunk_per_token() -> None:
    r = _result(0.0, [(1.0, 2), (1.4, 4)])
    assert r.itl_samples() == pytest.approx([0.1] * 4)
    assert r.tpot() == pytest.approx(0.1)  # 0.4 s for the 4 tokens after the first chunk


def test_no_tokens_has_no_ttft() -> None:
    r = _result(0.0, [])
    assert r.ttft is None and r.tpot() is None and r.itl_samples() == []


# --- level summary and comparison ------------------------------------------------------------------


def test_summarize_level_throughput_uses_usage_tokens_over_wall_time() -> None:
    a = _result(0.0, [(0.2, 1), (0.3, 1)], usage=2, end=0.3)
    b = _result(0.0, [(0.4, 1), (0.6, 1), (0.8, 1)], usage=3, end=0.8)
    bad = common.RequestResult(start=0.0, end=0.1, error="UNAVAILABLE: x")
    s = common.summarize_level([a, b, bad], wall_s=2.0, concurrency=2)
    assert s["requests"] == 3 and s["ok"] == 2 and s["errors"] == 1
    assert s["error_samples"] == ["UNAVAILABLE: x"]
    assert s["completion_tokens"] == 5
    assert s["output_tok_s"] == pytest.approx(2.5)
    assert s["ttft_ms"]["p50"] == pytest.approx(300.0)  # median of 200 and 400 ms
    assert s["itl_ms"]["p50"] == pytest.approx(200.0)  # samples 100, 200, 200 ms
    assert s["token_count_mismatches"] == 0


def test_summarize_level_counts_usage_vs_stream_mismatch() -> None:
    r = _result(0.0, [(0.1, 1)], usage=2)
    s = common.summarize_level([r], wall_s=1.0, concurrency=1)
    assert s["token_count_mismatches"] == 1
    assert s["completion_tokens"] == 2  # usage wins


def test_compare_ratios_and_goals() -> None:
    def lv(c: int, tput: float, ttft: float) -> dict:
        return {
            "concurrency": c,
            "output_tok_s": tput,
            "ttft_ms": {"p50": ttft, "p99": ttft * 2},
            "itl_ms": {"p50": 10.0},
        }

    out = common.compare([lv(1, 110.0, 90.0), lv(4, 90.0, 120.0)], [lv(1, 100.0, 100.0), lv(4, 100.0, 100.0)])
    assert out[0]["throughput_ratio"] == pytest.approx(1.1) and out[0]["ttft_p50_ratio"] == pytest.approx(0.9)
    assert out[0]["goal_met"] == {"throughput": True, "ttft_p50": True}
    assert out[1]["goal_met"] == {"throughput": False, "ttft_p50": False}


def test_compare_handles_missing_figures() -> None:
    b = [{"concurrency": 1, "output_tok_s": None, "ttft_ms": {"p50": None, "p99": None}, "itl_ms": {"p50": None}}]
    v = [{"concurrency": 1, "output_tok_s": 0, "ttft_ms": {"p50": 1.0, "p99": 1.0}, "itl_ms": {"p50": 1.0}}]
    out = common.compare(b, v)
    assert out[0]["throughput_ratio"] is None and out[0]["goal_met"]["throughput"] is False


def test_compare_frontend_cpu_ratio_goal_and_missing_levels() -> None:
    def lv(c: int, cpu: float | None) -> dict:
        return {"concurrency": c, "frontend_cpu_s_per_1000_tokens": cpu}

    out = common.compare_frontend_cpu([lv(1, 0.4), lv(4, 0.9), lv(16, None)], [lv(1, 0.5), lv(4, 1.0), lv(16, 1.0)])
    assert [c["concurrency"] for c in out] == [1, 4]  # no figure at 16: left out, not counted as met
    assert out[0]["ratio"] == pytest.approx(0.8) and out[0]["goal_met"] is True  # the goal is <= 0.8
    assert out[1]["ratio"] == pytest.approx(0.9) and out[1]["goal_met"] is False


def test_cpu_per_1000_tokens() -> None:
    assert common.cpu_per_1000_tokens(0.25, 500) == pytest.approx(0.5)
    assert common.cpu_per_1000_tokens(None, 500) is None and common.cpu_per_1000_tokens(0.25, 0) is None


def test_process_tree_cpu_s_counts_the_process_and_its_children_apart() -> None:
    import os
    import subprocess
    import sys
    import time

    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 30
        while (kids := common.process_tree_cpu_s(os.getpid())[1]) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        own, kids = common.process_tree_cpu_s(os.getpid())
        assert own is not None and own > 0
        assert kids >= 0.3  # the child's CPU, apart from this process's own
        assert common.process_tree_cpu_s(child.pid)[1] == 0  # a process without children
    finally:
        child.kill()
        child.wait()
    assert common.proc_cpu_s(child.pid) is None  # gone


# --- stream accounting -----------------------------------------------------------------------------


def test_vllm_accumulator_uses_cumulative_usage() -> None:
    r = common.RequestResult(start=0.0)
    acc = common.VllmStreamAccumulator(r)
    acc.feed(
        {"choices": [{"text": "Hel", "finish_reason": None}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
        1.0,
    )
    acc.feed(
        {"choices": [{"text": "", "finish_reason": None}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}, 1.1
    )  # token with no text yet
    acc.feed(
        {
            "choices": [{"text": "lo!", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4},
        },
        1.2,
    )  # two tokens in one chunk
    acc.feed({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}}, 1.3)  # final usage chunk
    assert r.chunks == [(1.0, 1), (1.1, 1), (1.2, 2)]
    assert r.completion_tokens == 4 and r.prompt_tokens == 5 and r.streamed_tokens == 4
    assert r.text == "Hello!" and r.finish_reason == "length"


def test_vllm_accumulator_without_per_chunk_usage_counts_text_chunks() -> None:
    r = common.RequestResult(start=0.0)
    acc = common.VllmStreamAccumulator(r)
    acc.feed({"choices": [{"text": "a"}]}, 1.0)
    acc.feed({"choices": [{"text": ""}]}, 1.1)
    acc.feed({"choices": [{"text": "b", "finish_reason": "stop"}]}, 1.2)
    acc.feed({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, 1.3)
    assert r.chunks == [(1.0, 1), (1.2, 1)] and r.completion_tokens == 2


def test_bastion_accumulator_counts_token_ids() -> None:
    pb = pytest.importorskip("bastion.v1.inference_pb2")
    r = common.RequestResult(start=0.0)
    acc = common.BastionStreamAccumulator(r)
    acc.feed(pb.GenerateResponse(request_id="x", text="Hi", token_ids=[1, 2]), 1.0)
    acc.feed(pb.GenerateResponse(request_id="x", text="", token_ids=[]), 1.05)  # no tokens: not a chunk
    acc.feed(
        pb.GenerateResponse(
            request_id="x",
            text=" there",
            token_ids=[3],
            finish_reason=pb.FINISH_REASON_LENGTH,
            usage=pb.Usage(prompt_tokens=7, completion_tokens=3, cached_prompt_tokens=0),
        ),
        1.2,
    )
    assert r.chunks == [(1.0, 2), (1.2, 1)]
    assert r.text == "Hi there" and r.finish_reason == "length"
    assert (r.prompt_tokens, r.completion_tokens, r.cached_prompt_tokens) == (7, 3, 0)


def test_bastion_accumulator_usage_absent_until_last_message() -> None:
    r = common.RequestResult(start=0.0)
    acc = common.BastionStreamAccumulator(r)
    msg = SimpleNamespace(token_ids=[5], text="x", finish_reason=0, usage=None)
    acc.feed(msg, 1.0)
    assert r.completion_tokens is None and r.tokens == 1


# --- workload --------------------------------------------------------------------------------------


def test_prompts_are_deterministic_unique_and_varied() -> None:
    a = common.make_prompts(64, seed=0)
    assert a == common.make_prompts(64, seed=0)
    assert len(set(a)) == 64
    assert len({p.split(".", 1)[0] for p in a}) == 64  # unique numeric prefix: no shared first block
    words = [len(p.split()) for p in a]
    assert min(words) >= 15 and max(words) <= 110 and len(set(words)) > 10


def test_output_agreement() -> None:
    out = common.output_agreement({"p1": "a", "p2": "b", "p3": "c"}, {"p1": "a", "p2": "x"})
    assert out == {"compared": 2, "identical": 1, "fraction": 0.5}


def test_bootstrap_interval_brackets_the_statistic_and_narrows_with_agreement() -> None:
    import statistics

    def ratio_of_medians(a: list[float], b: list[float]) -> float:
        return statistics.median(a) / statistics.median(b)

    on, off = [90.0, 92.0, 95.0, 91.0, 93.0], [100.0, 99.0, 101.0, 100.0, 102.0]
    lo, hi = common.bootstrap_interval(ratio_of_medians, on, off)
    assert lo <= ratio_of_medians(on, off) <= hi and hi < 1.0  # every resample is below 1
    assert common.bootstrap_interval(ratio_of_medians, on, off) == (lo, hi)  # seeded
    noisy = [60.0, 92.0, 130.0, 75.0, 110.0]
    nlo, nhi = common.bootstrap_interval(ratio_of_medians, noisy, off)
    assert nhi - nlo > hi - lo and nlo < 1.0 < nhi
    with pytest.raises(ValueError):
        common.bootstrap_interval(ratio_of_medians, [], off)
