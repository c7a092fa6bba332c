"""Tenant isolation inside the real engine (SC-4): keyed, typed block hashing partitioned by tenant in the
EngineCore, operator-declared public prefixes, and the statistical self-audit (bastion audit-isolation)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from e2e_metrics import scrape

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc
from conftest import PUBLIC_SYSTEM

UNDECLARED = " ".join(
    f"Internal note {i}: client matter {i * 37 % 101} is billed in six-minute units and reviewed quarterly."
    for i in range(24)
)  # about 400 tokens, shared by the requests below but not declared public


def _cached(live_server, request: pb.GenerateRequest, who: str) -> tuple[int, int]:
    with live_server.channel(who) as ch:
        msgs = list(inference_pb2_grpc.InferenceStub(ch).Generate(request, timeout=180))
    return msgs[-1].usage.cached_prompt_tokens, msgs[-1].usage.prompt_tokens


def _raw(model: str, prompt: str) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt=prompt, sampling=pb.SamplingParams(max_tokens=1))


def _chat(model: str, system: str, user: str) -> pb.GenerateRequest:
    msgs = [pb.ChatMessage(role=pb.ROLE_SYSTEM, content=system), pb.ChatMessage(role=pb.ROLE_USER, content=user)]
    return pb.GenerateRequest(
        model=model, conversation=pb.Conversation(messages=msgs), sampling=pb.SamplingParams(max_tokens=1)
    )


def test_the_engine_proved_isolation_from_inside_its_processes(live_server) -> None:
    """The server asked the EngineCore (and its workers) before serving (bastion.engine.vllm.proof)."""
    assert "tenant isolation proven inside the engine: plugin, keyed block hasher, tenant scheduler" in (
        live_server.log_text()
    )


def test_a_declared_public_prefix_is_shared_across_tenants(live_server, model_name) -> None:
    a_cached, _ = _cached(live_server, _raw(model_name, PUBLIC_SYSTEM + " Where is order 1182?"), "alice")
    b_cached, b_prompt = _cached(live_server, _raw(model_name, PUBLIC_SYSTEM + " Can I return a lamp?"), "bob")
    assert a_cached == 0
    # Bob hits the public blocks alice's request filled: whole blocks of the declared text, nothing after it
    # (the CPU backend's blocks are 128 tokens; the declared text is about 300).
    assert b_cached >= 128 and b_cached <= b_prompt - 5
    # Chat: a conversation opening with the declared system prompt shares the rendered system turn.
    a_chat, _ = _cached(live_server, _chat(model_name, PUBLIC_SYSTEM, "Hello, my parcel is late."), "alice")
    b_chat, _ = _cached(live_server, _chat(model_name, PUBLIC_SYSTEM, "Do you ship abroad?"), "bob")
    assert a_chat == 0 and b_chat >= 128


def test_an_undeclared_common_prefix_is_not_shared(live_server, model_name) -> None:
    a1, _ = _cached(live_server, _raw(model_name, UNDECLARED + " Summarise the billing rule."), "alice")
    b, _ = _cached(live_server, _raw(model_name, UNDECLARED + " Summarise the deadline rule."), "bob")
    a2, _ = _cached(live_server, _raw(model_name, UNDECLARED + " Summarise the conflict rule."), "carol")
    assert a1 == 0 and b == 0  # another tenant gets nothing
    assert a2 >= 128  # within tenant A prefix caching keeps working


def test_principal_scope_shares_nothing_between_principals_of_one_tenant(live_server, model_name) -> None:
    """tenant-d's policy sets prefix_cache_scope = "principal" (tests/e2e/conftest.py): frank and grace, both of
    tenant-d, share no private block, while each still hits his or her own and the declared public prefix is
    still shared. The blocks of both are charged to tenant-d's one KV budget (its per-tenant figures)."""
    private = "Tenant D's matter file. " + UNDECLARED
    f1, _ = _cached(live_server, _raw(model_name, private + " Summarise the billing rule."), "frank")
    g1, _ = _cached(live_server, _raw(model_name, private + " Summarise the deadline rule."), "grace")
    f2, _ = _cached(live_server, _raw(model_name, private + " Summarise the conflict rule."), "frank")
    g2, _ = _cached(live_server, _raw(model_name, private + " Summarise the retention rule."), "grace")
    assert f1 == 0 and g1 == 0  # another principal of the same tenant gets nothing
    assert f2 >= 128 and g2 >= 128  # within a principal prefix caching keeps working
    _cached(live_server, _raw(model_name, PUBLIC_SYSTEM + " Is my parcel insured?"), "frank")
    g_pub, g_prompt = _cached(live_server, _raw(model_name, PUBLIC_SYSTEM + " May I pay by cheque?"), "grace")
    assert 128 <= g_pub <= g_prompt - 5  # the public blocks, nothing after them

    time.sleep(1.5)  # the EngineCore's schedulers write their per-tenant figures at most once a second
    _cached(live_server, _raw(model_name, "tick"), "frank")
    values = scrape(live_server.metrics_url)
    cached = sum(
        v for k, v in values.items() if k.startswith("bastion_tenant_kv_blocks_cached{") and 'tenant="tenant-d"' in k
    )
    assert cached >= 6  # frank's and grace's private blocks (3 each), under tenant-d's one ledger entry


def _key_file(live_server, tmp_path: Path, who: str) -> Path:
    f = tmp_path / f"{who}.key"
    f.write_text(live_server.identity.keys[who])
    f.chmod(0o600)
    return f


def _audit(live_server, tmp_path: Path, victim: str, other: str, seed: int) -> tuple[int, dict]:
    """Runs `bastion audit-isolation`. Each audit on the shared server needs its own ``seed``: the same seed
    gives the same prompts, whose blocks an earlier audit may have left cached (its "miss" prompts included)."""
    out = tmp_path / f"audit-{victim}-{other}.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.cli.main",
            "audit-isolation",
            "--target",
            live_server.target,
            "--api-key-file",
            str(_key_file(live_server, tmp_path, victim)),
            "--other-api-key-file",
            str(_key_file(live_server, tmp_path, other)),
            # Sized for CI: 8 hit and 8 miss timings per condition. The exact one-sided two-sample KS test
            # (hits faster) rejects at alpha 0.05 once D+ >= 5/8 (p 0.044; full separation gives p 7.8e-5). A
            # cache hit on ~500 prompt tokens skips most of the prefill, so within a tenant the timings separate
            # fully; across tenants there is no hit, and a chance difference (about one run in 23) is checked
            # by the CLI's confirmation audit before it is a LEAK.
            "--samples",
            "8",
            "--prompt-words",
            "400",
            "--seed",
            str(seed),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.exists(), proc.stderr[-2000:]
    return proc.returncode, json.loads(out.read_text())


def test_isolation_self_audit_passes_across_tenants(live_server, tmp_path) -> None:
    rc, report = _audit(live_server, tmp_path, "alice", "bob", seed=7)
    within, across = report["within_tenant"], report["across_tenants"]
    print(
        json.dumps(
            {k: {x: v[x] for x in v if x not in ("hit", "miss")} for k, v in report.items() if isinstance(v, dict)},
            indent=1,
        )
    )
    assert within["distinguishable"] and within["p_value"] < 0.05  # the audit has power
    assert within["max_cached_prompt_tokens_hit"] > 0
    assert across["max_cached_prompt_tokens_hit"] == 0
    confirmation = report["across_tenants_confirmation"]
    # no difference, or a chance one that the independent confirmation audit did not reproduce
    assert (confirmation is None) is (not across["distinguishable"])
    assert confirmation is None or (
        confirmation["max_cached_prompt_tokens_hit"] == 0 and not confirmation["distinguishable"]
    )
    assert rc == 0 and report["passed"], report["verdict"]


def test_isolation_self_audit_detects_a_shared_partition(live_server, tmp_path) -> None:
    """Control: carol is another principal of alice's tenant, so they share one partition; the same audit
    must report the sharing (a leak verdict, exit 1). The server's cached-token counts are the evidence the
    verdict needs; the timing test (8 samples a side) is reported beside them but not required here: under CI
    load its p-value can miss 0.05 although the medians differ twofold."""
    rc, report = _audit(live_server, tmp_path, "alice", "carol", seed=11)
    across = report["across_tenants"]
    assert across["max_cached_prompt_tokens_hit"] > 0 and across["max_cached_prompt_tokens_miss"] == 0
    assert rc == 1 and not report["passed"] and report["verdict"].startswith("LEAK")
