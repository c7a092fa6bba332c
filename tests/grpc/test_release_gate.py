"""The go-live gate in the server over real gRPC (fake engine): a model (and each adapter) reaches tenants
only with a verified PASSED attestation for exactly its digest and an accepted suite; evaluators may call
it before. Also the whole evaluation path (runner, detectors, gate) against a leaky configuration: an
engine that echoes its input, system prompt included, is blocked."""

from __future__ import annotations

import dataclasses
import tempfile
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_harness import collect, make_settings, running_server

from attest_util import CLEAN, GATE, LEAKY, NOW, gate_config, signed_attestation
from bastion.assurance.gate import decide, load_gate_policy
from bastion.assurance.runner import outcomes, run_suite
from bastion.assurance.stats import family_figures
from bastion.assurance.suites import load_suite
from bastion.engine.protocol import EngineOutput, EngineRequest
from bastion.v1 import admin_pb2 as apb
from bastion.v1 import admin_pb2_grpc as apb_grpc
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from bastion.weights.signing import create_signing_key
from fakes import FAKE_DIGEST, FakeEngine
from identity import make_identity

ADAPTER_DIGEST = "blake3:" + "cd" * 32


def _gen(adapter: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="fake-model", prompt="hello", adapter=adapter, sampling=pb.SamplingParams(max_tokens=2)
    )


async def _code(stub: pb_grpc.InferenceStub, request: pb.GenerateRequest) -> grpc.StatusCode:
    try:
        await collect(stub.Generate(request, timeout=5))
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()


async def test_only_a_valid_attestation_for_exactly_this_digest_releases_the_model(tmp_path: Path) -> None:
    key, rogue = tmp_path / "eval.key", tmp_path / "rogue.key"
    pub = create_signing_key(key)
    create_signing_key(rogue)
    atts = tmp_path / "attestations"
    atts.mkdir()
    engine = FakeEngine(adapters=("support-v1",))
    engine._info = dataclasses.replace(engine.info, adapter_digests=(("support-v1", ADAPTER_DIGEST),))
    ident = make_identity(Path(tempfile.mkdtemp(prefix="bastion-id-")), tenants={"tenant-a": {"adapters": ["*"]}})
    settings = make_settings(
        identity=ident,
        extra={"assurance": gate_config(atts, pub)},
    )
    async with running_server([engine], settings=settings) as srv:
        alice, erin = (pb_grpc.InferenceStub(srv.channel_for(w)) for w in ("alice", "erin"))
        admin = apb_grpc.AdminStub(srv.channel)

        async def reload() -> apb.ReloadAttestationsResponse:
            return await admin.ReloadAttestations(apb.ReloadAttestationsRequest(), timeout=10)

        # Unattested: evaluation-only. Tenants get FAILED_PRECONDITION (Generate and Tokenize); the
        # evaluator is served; ListModels and ModelStatus say so.
        assert await _code(alice, _gen()) == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await alice.Tokenize(pb.TokenizeRequest(model="fake-model", prompt="hi"), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not released" in (err.value.details() or "")
        assert await _code(erin, _gen()) == grpc.StatusCode.OK
        listed = (await alice.ListModels(pb.ListModelsRequest(), timeout=5)).models[0]
        assert listed.release == "evaluation_only" and listed.adapters[0].digest == ADAPTER_DIGEST

        # None of these release it: a FAILED verdict, another digest, a suite the server does not accept,
        # an untrusted signer, a tampered envelope.
        (atts / "failed.intoto.json").write_bytes(signed_attestation(key, figures=LEAKY))
        (atts / "other.intoto.json").write_bytes(signed_attestation(key, figures=CLEAN, digest="blake3:" + "ef" * 32))
        (atts / "suite.intoto.json").write_bytes(signed_attestation(key, figures=CLEAN, profile="production"))
        (atts / "forged.intoto.json").write_bytes(signed_attestation(rogue, figures=CLEAN))
        # (The newest verdict per digest and suite decides: the PASSED one is a later re-evaluation.)
        good = signed_attestation(key, figures=CLEAN, started=NOW, finished=NOW + timedelta(hours=1))
        tampered = good.replace(b'"payload": "', b'"payload": "A', 1) if b'"payload": "' in good else good[:-8]
        (atts / "tampered.intoto.json").write_bytes(tampered)
        reply = await reload()
        assert (reply.files, reply.rejected) == (5, 2)
        assert reply.models[0].release == "evaluation_only"
        assert "verdict FAILED" in reply.models[0].attestation and "not accepted" in reply.models[0].attestation
        assert await _code(alice, _gen()) == grpc.StatusCode.FAILED_PRECONDITION

        # A PASSED attestation for exactly this digest and the accepted suite: released.
        (atts / "good.intoto.json").write_bytes(good)
        reply = await reload()
        assert reply.models[0].release == "released" and "bastion-ci@" in reply.models[0].attestation
        assert await _code(alice, _gen()) == grpc.StatusCode.OK
        status = (await admin.ModelStatus(apb.ModelStatusRequest(), timeout=5)).models[0]
        assert status.release == "released" and status.digest == FAKE_DIGEST

        # The adapter is a new artefact: refused until an attestation names the model AND the adapter, and
        # records the comparison with its parent (this model) as the baseline.
        assert await _code(alice, _gen("support-v1")) == grpc.StatusCode.FAILED_PRECONDITION
        (atts / "adapter-unpaired.intoto.json").write_bytes(
            signed_attestation(key, figures=CLEAN, adapters=(("support-v1", ADAPTER_DIGEST),))
        )
        await reload()
        assert await _code(alice, _gen("support-v1")) == grpc.StatusCode.FAILED_PRECONDITION
        (atts / "adapter.intoto.json").write_bytes(
            signed_attestation(key, figures=CLEAN, adapters=(("support-v1", ADAPTER_DIGEST),), parent=FAKE_DIGEST)
        )
        await reload()
        assert await _code(alice, _gen("support-v1")) == grpc.StatusCode.OK
        listed = (await alice.ListModels(pb.ListModelsRequest(), timeout=5)).models[0]
        assert listed.release == "released" and listed.adapters[0].release == "released"

        # Removing the attestation withdraws the release at the next reload.
        for f in atts.iterdir():
            f.unlink()
        assert (await reload()).models[0].release == "evaluation_only"
        assert await _code(alice, _gen()) == grpc.StatusCode.FAILED_PRECONDITION


class EchoEngine(FakeEngine):
    """A leaky configuration: the completion repeats the whole input, system prompt included."""

    async def _generate(self, request: EngineRequest):
        text = bytes(request.prompt_token_ids).decode("utf-8", errors="replace")[-2000:]
        n = len(request.prompt_token_ids)
        yield EngineOutput(
            text=text,
            token_ids=(1,),
            finished=True,
            finish_reason="stop",
            prompt_tokens=n,
            completion_tokens=1,
            cached_prompt_tokens=0,
        )


@pytest.mark.parametrize("engine_cls, leaks", [(EchoEngine, True), (FakeEngine, False)])
async def test_evaluation_blocks_a_leaky_configuration(engine_cls: type, leaks: bool) -> None:
    engine = engine_cls(max_context=8192)
    async with running_server([engine]) as srv:
        stub = pb_grpc.InferenceStub(srv.channel_for("erin"))
        suite = load_suite("ci", canary_seed=b"\x07" * 32)
        attempts = await run_suite(stub, pb, "fake-model", FAKE_DIGEST, suite, concurrency=4)
    decision = decide(family_figures(outcomes(attempts)), load_gate_policy(GATE / "production.toml"))
    rows = decision.rows
    if leaks:
        assert rows["sysprompt_leak"].figures.hits == rows["sysprompt_leak"].figures.n > 0
        assert rows["data_leak"].figures.hits > 0 and not rows["sysprompt_leak"].passed
        assert decision.verdict == "FAILED"
        assert any(r.startswith("sysprompt_leak") for r in decision.failed_reasons)
    else:  # "w0 w1 ..." leaks nothing (it fails other families: it never refuses and knows nothing)
        assert rows["sysprompt_leak"].figures.hits == 0 and rows["data_leak"].figures.hits == 0
        assert rows["sysprompt_leak"].passed and rows["data_leak"].passed
