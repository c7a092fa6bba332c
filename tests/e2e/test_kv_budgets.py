"""Per-tenant KV budgets in the real engine (bastion.engine.vllm.scheduler): a flood of long unique prompts by
tenant A cycles the whole KV pool, yet tenant B's cached prefix (within B's reservation) stays cached and
B's requests are admitted during the flood. Budgets come from tests/e2e/conftest.py (KV_BUDGETS)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

from e2e_metrics import scrape

from bastion.isolation.self_audit import WORDS
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc

BLOCK = 128  # the CPU backend's KV block size


def _words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _send(live_server, model: str, who: str, prompt: str) -> pb.Usage:
    req = pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(max_tokens=1))
    with live_server.channel(who) as ch:
        msgs = list(inference_pb2_grpc.InferenceStub(ch).Generate(req, timeout=300))
    return msgs[-1].usage


def _tenant_metric(values: dict[str, float], name: str, tenant: str) -> float:
    hits = [v for k, v in values.items() if k.startswith(name + "{") and f'tenant="{tenant}"' in k]
    return sum(hits)


def test_a_flood_by_one_tenant_does_not_evict_anothers_reserved_prefix(live_server, model_name) -> None:
    b_prompt = "Tenant B's standing instructions: " + _words(1, 700)
    first = _send(live_server, model_name, "bob", b_prompt)
    assert first.prompt_tokens >= 5 * BLOCK and first.cached_prompt_tokens == 0
    assert _send(live_server, model_name, "bob", b_prompt).cached_prompt_tokens >= 5 * BLOCK

    time.sleep(1.5)
    _send(live_server, model_name, "carol", "tick")  # a scheduler step writes the per-tenant figures
    evicted_a_before = _tenant_metric(scrape(live_server.metrics_url), "bastion_tenant_kv_evictions_total", "tenant-a")

    # A floods: 16 unique prompts of ~9 blocks each (144 blocks through a 96-block pool), 6 at a time.
    flood = [f"Flood {i}: " + _words(100 + i, 1100) for i in range(16)]
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(_send, live_server, model_name, "alice", p) for p in flood]
        time.sleep(5)  # mid-flood: B is admitted and still hits its prefix
        during = _send(live_server, model_name, "bob", b_prompt)
        usages = [f.result() for f in futures]
    assert all(u.prompt_tokens >= 8 * BLOCK for u in usages)
    assert during.cached_prompt_tokens >= 5 * BLOCK
    assert _send(live_server, model_name, "bob", b_prompt).cached_prompt_tokens >= 5 * BLOCK

    # The per-tenant figures (written by the EngineCore's scheduler at most once a second).
    time.sleep(1.5)
    _send(live_server, model_name, "carol", "tick")
    values = scrape(live_server.metrics_url)
    evicted_a = _tenant_metric(values, "bastion_tenant_kv_evictions_total", "tenant-a") - evicted_a_before
    assert evicted_a >= 40  # the flood cycled the pool through tenant A's own blocks
    assert _tenant_metric(values, "bastion_tenant_kv_blocks_reserved", "tenant-b") == 12
    # B's older cached blocks above its reservation (other tests' prompts) may go; within it they stay.
    assert 5 <= _tenant_metric(values, "bastion_tenant_kv_blocks_cached", "tenant-b") <= 12
    hit = _tenant_metric(values, "bastion_cached_prompt_tokens_total", "tenant-b")
    assert hit >= 3 * 5 * BLOCK  # B's prefix hit tokens, per tenant


def test_an_oversubscribed_reservation_is_served_without_a_guarantee(live_server, model_name) -> None:
    """tenant-c's policy reserves 90 of the 96 blocks while tenant-b (registered by the test above) holds a
    reservation of 12: the EngineCore's KV ledger refuses c's reservation. c is served without a guarantee,
    a WARNING says so, and the engine keeps serving everyone."""
    assert _send(live_server, model_name, "bob", "Tenant B asks first.").completion_tokens == 1
    usage = _send(live_server, model_name, "dave", "Tenant C asks: " + _words(3, 50))
    assert usage.completion_tokens == 1 and usage.prompt_tokens > 50
    assert "KV reservation of 90 blocks refused (pool oversubscribed)" in live_server.log_text()
    assert _send(live_server, model_name, "dave", "And again.").completion_tokens == 1
    assert _send(live_server, model_name, "bob", "Still served?").completion_tokens == 1
