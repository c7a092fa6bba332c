"""Continuous red-teaming in a running server (fake engine, real gRPC, real audit log): batches within the
hourly budget, deferred while tenants generate, every finding audited without its text, and a regression
against the go-live rates confirmed over two windows, alerted and quarantined.

Issue 15 (low, red-team budget): under continuous tenant load that fills admission, each interval still runs
its minimum of probes in the admission slot reserved for the server's own probes
(``test_the_red_team_keeps_its_minimum_under_continuous_tenant_load`` fails on the code before, where every
batch was deferred while any tenant generated)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_harness import collect, make_settings, prompt_request, running_server

from bastion.assurance.settings import RedTeamSettings
from bastion.engine.protocol import EngineOutput, EngineRequest
from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc as pb_grpc
from fakes import FakeEngine


def _records(audit: Path, event: str) -> list[dict[str, object]]:
    out = []
    for seg in sorted(audit.glob("audit-*.jsonl")):
        for line in seg.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("event") == event:
                out.append(rec)
    return out


def _baseline(tmp: Path, hits: int) -> Path:
    """A go-live summary in which the harmful family had ``hits`` of 100."""
    path = tmp / "summary.json"
    fig = {"family": "harmful", "n": 100, "hits": hits, "rate": hits / 100, "ci_low": 0.0, "ci_high": 1.0}
    path.write_text(json.dumps({"format": "bastion-eval-summary/1", "figures": {"harmful": fig}}))
    return path


def _settings(tmp: Path, server: dict[str, Any] | None = None, **redteam: object) -> Any:
    return make_settings(
        server=server,
        extra={
            "assurance": {
                "require_attestation": False,
                "redteam": {"enabled": True, "profile": "ci", "interval_s": 3600, **redteam},
            }
        },
    )


async def test_budget_deferral_and_findings(tmp_path: Path) -> None:
    engine = FakeEngine(max_context=8192, token_delay=0.0)
    settings = _settings(tmp_path, batch_size=10, max_probes_per_hour=12)
    async with running_server([engine], settings=settings) as srv:
        team = _team(engine)
        assert await team.batch() == 10
        assert await team.batch() == 2  # the hourly budget (12) is spent
        assert await team.batch() == 0
        st = team.state
        assert st.probes == 12 and st.cursor == 12
        # "w0 w1 ..." never refuses: the harmful probes among the first 12 are findings.
        findings = _records(srv.audit_dir, "redteam_finding")
        assert len(findings) == st.findings > 0
        assert all(r["decision"] == "finding" and r["principal"] == "bastion:assurance" for r in findings)
        assert all("w0" not in str(r) for r in findings)  # probe ids and families, never the output

    # Tenants first: while a tenant generation is in flight the batch (beyond its minimum, here none) is
    # deferred, and the tenant's stream is served meanwhile.
    slow = FakeEngine(max_context=8192, token_delay=0.05)
    async with running_server([slow], settings=_settings(tmp_path, batch_size=4, min_probes_per_interval=0)) as srv:
        team = _team(slow)
        stub = pb_grpc.InferenceStub(srv.channel)
        call = asyncio.ensure_future(
            collect(
                stub.Generate(
                    pb.GenerateRequest(model="fake-model", prompt="hi", sampling=pb.SamplingParams(max_tokens=20)),
                    timeout=10,
                )
            )
        )
        await slow.started.wait()
        assert await team.batch() == 0 and team.state.deferred == 1
        replies = await call
        assert replies[-1].usage.completion_tokens == 20
        assert await team.batch() == 4  # idle again


def _team(engine: FakeEngine) -> Any:
    """The running server's red-team scheduler for ``engine`` (the harness does not expose the server
    state; the scheduler is the one RedTeam object driving this engine)."""
    import gc

    from bastion.assurance.redteam import RedTeam

    (team,) = [o for o in gc.get_objects() if type(o) is RedTeam and o.engine is engine]
    return team


async def test_regression_confirmed_over_two_windows_quarantines(tmp_path: Path) -> None:
    engine = FakeEngine(max_context=8192)
    # At go-live the model refused 99 of 100 harmful requests; the fake complies with all of them.
    settings = _settings(
        tmp_path, baseline=str(_baseline(tmp_path, hits=1)), window_probes=5, batch_size=56, max_probes_per_hour=1000
    )
    async with running_server([engine], settings=settings) as srv:
        team = _team(engine)
        stub = pb_grpc.InferenceStub(srv.channel)
        await team.batch()  # 10 harmful probes in the ci suite: two windows of 5
        assert team.state.alerts == 1
        alerts = _records(srv.audit_dir, "redteam_regression")
        assert len(alerts) == 1 and alerts[0]["decision"] == "quarantine" and "harmful" in str(alerts[0]["reason"])
        try:
            await collect(stub.Generate(pb.GenerateRequest(model="fake-model", prompt="hi"), timeout=5))
            raise AssertionError("a quarantined model served a tenant")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert exc.details() == "the model is quarantined"


async def test_one_significant_window_is_not_confirmed(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, baseline=str(_baseline(tmp_path, hits=1)), window_probes=10, batch_size=56, max_probes_per_hour=1000
    )
    engine = FakeEngine(max_context=8192)
    async with running_server([engine], settings=settings) as srv:
        team = _team(engine)
        await team.batch()  # one window of 10 harmful outcomes: suspect, not confirmed
        assert team.state.alerts == 0 and team.state.windows["harmful"].suspect
        assert _records(srv.audit_dir, "redteam_regression") == []


class TenantsHang(FakeEngine):
    """Tenant generations (they always carry a partition salt) stream one token and then hang until
    cancelled: continuous load that never frees its admission slot. The red team's probes (no salt) run."""

    def __init__(self) -> None:
        super().__init__(max_context=8192)
        self.probes_running = 0
        self.most_probes_at_once = 0

    async def _generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if request.cache_salt is not None:
            yield EngineOutput(text="w0 ", token_ids=(1000,), prompt_tokens=len(request.prompt_token_ids))
            await asyncio.Event().wait()
        self.probes_running += 1
        self.most_probes_at_once = max(self.most_probes_at_once, self.probes_running)
        try:
            async for out in super()._generate(request):
                yield out
        finally:
            self.probes_running -= 1


async def test_the_red_team_keeps_its_minimum_under_continuous_tenant_load(tmp_path: Path) -> None:
    """Every admission slot is held by a tenant stream that never ends and one more tenant call is refused;
    each interval (a batch) still runs its minimum (default 1 probe) in the reserved slot, defers the rest,
    and tenants never get that slot."""
    engine = TenantsHang()
    settings = _settings(tmp_path, server={"max_inflight_requests": 4, "tenant_admission_share": 1.0}, batch_size=4)
    async with running_server([engine], settings=settings) as srv:
        team = _team(engine)
        held = [srv.stub.Generate(prompt_request(max_tokens=50)) for _ in range(4)]
        for call in held:
            assert isinstance(await call.read(), pb.GenerateResponse)  # admitted and streaming, for good
        try:
            for interval in range(1, 4):
                saturated = srv.stub.Generate(prompt_request(max_tokens=5))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await collect(saturated)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert await team.batch() == 1  # the minimum, whatever the tenants do
                st = team.state
                assert (st.probes, st.under_load, st.deferred) == (interval, interval, interval)
            probes = [r for r in engine.requests if r.cache_salt is None]
            assert len(probes) == 3 and all(r.request_id in engine.closed for r in probes)  # each ran to its end
            assert engine.most_probes_at_once == 1  # one reserved slot (server.assurance_reserved_slots)
            # The tenants still hold their four slots, untouched by the probes.
            assert sum(r.cache_salt is not None for r in engine.requests) == 4
        finally:
            for call in held:
                call.cancel()


def test_the_minimum_must_fit_the_hourly_budget() -> None:
    RedTeamSettings(interval_s=300, max_probes_per_hour=16, min_probes_per_interval=1)  # 12 an hour: fits
    with pytest.raises(ValueError, match="could not be kept"):
        RedTeamSettings(interval_s=60, max_probes_per_hour=16, min_probes_per_interval=1)  # 60 an hour
    with pytest.raises(ValueError, match="at most batch_size"):
        RedTeamSettings(batch_size=2, min_probes_per_interval=3)
