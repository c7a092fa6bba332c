"""Identity and audit on the real engine: tenants from API keys, refusals audited, one record per call,
content only as tenant-keyed HMACs, and `bastion audit verify` accepting the live log."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc

PROMPT = "Name three primary colours."


def _records(live_server) -> list[dict]:
    out = []
    for seg in sorted(live_server.audit_dir.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in seg.read_text().splitlines() if line]
    return out


def _generate(channel: grpc.Channel, model: str, md: tuple = ()) -> list[pb.GenerateResponse]:
    req = pb.GenerateRequest(model=model, prompt=PROMPT, sampling=pb.SamplingParams(max_tokens=8, temperature=0.0))
    return list(inference_pb2_grpc.InferenceStub(channel).Generate(req, metadata=md, timeout=120))


def test_tenants_refusals_and_records_on_the_real_engine(live_server, model_name) -> None:
    with live_server.channel("alice") as a, live_server.channel("bob") as b:
        ra, rb = _generate(a, model_name), _generate(b, model_name)
        for who, md, want in (
            (None, (), grpc.StatusCode.UNAUTHENTICATED),
            ("mallory", (), grpc.StatusCode.PERMISSION_DENIED),
            ("bob", (("x-tenant", "tenant-a"),), grpc.StatusCode.PERMISSION_DENIED),
        ):
            ch = grpc.insecure_channel(live_server.target) if who is None else live_server.channel(who)
            with ch, pytest.raises(grpc.RpcError) as err:
                _generate(ch, model_name, md)
            assert err.value.code() == want
    recs = {r.get("request_id"): r for r in _records(live_server)}
    rec_a, rec_b = recs[ra[-1].request_id], recs[rb[-1].request_id]
    assert rec_a["tenant"] == "tenant-a" and rec_b["tenant"] == "tenant-b"
    assert rec_a["completion_tokens"] == ra[-1].usage.completion_tokens
    assert rec_a["model_digest"] == ra[-1].model_digest
    # Same prompt and (greedy) same completion, but different tenant keys: different HMACs.
    assert "".join(m.text for m in ra) == "".join(m.text for m in rb)
    assert rec_a["prompt_hmac"] != rec_b["prompt_hmac"] and rec_a["completion_hmac"] != rec_b["completion_hmac"]
    assert PROMPT not in json.dumps(list(recs.values()))
    denials = [r for r in _records(live_server) if r["kind"] == "decision"][-3:]
    assert [r["event"] for r in denials] == [
        "authentication_failed",
        "authorization_denied",
        "identity_override_attempt",
    ]


def test_audit_verify_accepts_the_live_log(live_server, stub, model_name) -> None:
    stub.ListModels(pb.ListModelsRequest(), timeout=10)
    keys = live_server.audit_dir / "keys"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.cli.main",
            "audit",
            "verify",
            str(live_server.audit_dir),
            "--public-key",
            str(keys / "signing.pub"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["records"] >= 2 and report["problem"] is None


def test_prefix_cache_is_partitioned_by_tenant(live_server, model_name) -> None:
    """Tenant B sending tenant A's exact long prompt gets no cached tokens; A (and A's other principal,
    carol) repeating it do. The partition key comes from the server, never from the request."""
    long_prompt = "Tenant A's private context: " + " ".join(f"fact-{i} is {i * 7 % 13}." for i in range(160))

    def cached(who: str) -> int:
        req = pb.GenerateRequest(
            model=model_name, prompt=long_prompt, sampling=pb.SamplingParams(max_tokens=1, temperature=0.0)
        )
        with live_server.channel(who) as ch:
            msgs = list(inference_pb2_grpc.InferenceStub(ch).Generate(req, timeout=180))
        assert msgs[-1].usage.prompt_tokens > 600
        return msgs[-1].usage.cached_prompt_tokens

    assert cached("alice") == 0  # cold
    assert cached("bob") == 0  # another tenant: no hit on tenant A's blocks
    assert cached("alice") > 0  # the same tenant hits its own prefix
    assert cached("carol") > 0  # another principal of tenant A shares the tenant's partition
