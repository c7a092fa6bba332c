"""The replica spec Ray ships to replicas: names, numbers and absolute paths only, never key material."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from pydantic import ValidationError

from bastion.cluster.pool import DeployOptions, deploy, expected_record, map_error, replica_pool_factory
from bastion.cluster.settings import ClusterSettings
from bastion.cluster.spec import ReplicaSpec
from bastion.config import Settings
from bastion.errors import ConfigError, EngineError, FailedPrecondition, InvalidArgument, Overloaded, Unavailable
from bastion.server.status import status_code


def test_a_fake_spec_and_its_application_name() -> None:
    spec = ReplicaSpec(engine="fake", model="smollm2-135m-instruct")
    assert spec.app_name == "bastion-smollm2-135m-instruct"
    assert spec.fake_options.max_context == 256
    assert ReplicaSpec(engine="vllm", model="m", config_file=Path("/etc/bastion/bastion.toml")).config_file


@pytest.mark.parametrize(
    "fields",
    [
        {"engine": "fake", "model": "ab" * 32},  # 64 hex digits: a token or a key
        {"engine": "fake", "model": "m y"},
        {"engine": "fake", "model": ""},
        {"engine": "vllm", "model": "m", "config_file": "bastion.toml"},  # relative
        {"engine": "vllm", "model": "m", "fake": {}},
        {"engine": "fake", "model": "m", "token": "x"},  # no field for anything else
        {"engine": "remote", "model": "m"},
    ],
)
def test_the_spec_refuses(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ReplicaSpec.model_validate(fields)


def test_the_refusal_never_echoes_the_value() -> None:
    secret = "9f" * 32
    with pytest.raises(ValidationError) as info:
        ReplicaSpec(engine="fake", model=secret)
    assert secret not in str(info.value).split("input_value")[0]


def test_deploy_options_from_settings() -> None:
    with pytest.raises(FailedPrecondition):
        DeployOptions.from_settings(ClusterSettings(), 64)
    options = DeployOptions.from_settings(ClusterSettings(replicas=3), 48)
    assert (options.replicas, options.max_ongoing_requests, options.max_queued_requests) == (3, 48, 64)
    cluster = ClusterSettings(replicas=1, replica_max_ongoing_requests=8, replica_env={"HF_HOME": "/srv/hf"})
    options = DeployOptions.from_settings(cluster, 48)
    assert options.max_ongoing_requests == 8 and options.env == (("HF_HOME", "/srv/hf"),)


def test_the_vllm_replica_needs_the_nodes_config_path() -> None:
    settings = Settings.model_validate({"cluster": {"replicas": 2}})
    with pytest.raises(ConfigError, match=r"^cluster.replica_config_file: the vLLM replica needs each node's config"):
        replica_pool_factory(settings, ReplicaSpec(engine="vllm", model="m"))


async def test_the_front_doors_vllm_model_record_needs_a_fixed_context_and_no_adapters() -> None:
    spec = ReplicaSpec(engine="vllm", model="m", config_file=Path("/etc/bastion/bastion.toml"))
    with pytest.raises(ConfigError, match=r"^model.max_model_len: required with cluster.replicas"):
        expected_record(spec, Settings.model_validate({"cluster": {"replicas": 1}}))
    with_adapters = Settings.model_validate(
        {
            "cluster": {"replicas": 1},
            "model": {"max_model_len": 512, "adapters": {"a": "/srv/a"}},
            "weights": {"allow_unsealed": True},
        }
    )
    with pytest.raises(ConfigError, match=r"^model.adapters: not served by Serve replicas yet"):
        expected_record(spec, with_adapters)


def test_serve_errors_map_to_bastions() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError
    from ray.serve.exceptions import BackPressureError

    full = map_error(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    assert isinstance(full, Overloaded) and status_code(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
    gone = map_error(ActorDiedError())
    assert isinstance(gone, Unavailable) and status_code(gone) == grpc.StatusCode.UNAVAILABLE
    other = map_error(RuntimeError("secret internals /etc/passwd"))
    assert isinstance(other, EngineError) and "passwd" not in str(other)
    own = Unavailable("x")
    assert map_error(own) is own
    # An error raised inside the replica comes back wrapped: its own class and public text are kept.
    raised = InvalidArgument("prompt", "at most 256 tokens")
    back = map_error(RayTaskError("tokenize", "traceback", raised))
    assert back is raised and status_code(back) == grpc.StatusCode.INVALID_ARGUMENT
    hidden = map_error(RayTaskError("generate", "traceback", RuntimeError("boom /etc/passwd")))
    assert isinstance(hidden, EngineError) and "passwd" not in str(hidden) and "RuntimeError" in str(hidden)


def _deploy_with(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> list[str]:
    """``deploy`` with Serve's ``run`` raising ``errors`` first; returns the application names it ran."""
    from ray import serve

    calls: list[str] = []

    def run(app: object, *, name: str, route_prefix: object) -> str:
        calls.append(name)
        if errors:
            raise errors.pop(0)
        return "handle"

    monkeypatch.setattr(serve, "run", run)
    monkeypatch.setattr("bastion.cluster.pool.time.sleep", lambda s: None)
    spec = ReplicaSpec(engine="fake", model="m")
    options = DeployOptions(replicas=1, max_ongoing_requests=2, max_queued_requests=2)
    assert deploy(spec, options) == "handle"
    return calls


RACE = ValueError("<module 'bastion.cluster.router'> is not registered for pickle by value")


def test_deploy_runs_again_after_rays_router_pickling_race(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _deploy_with(monkeypatch, [RACE, RACE]) == ["bastion-m"] * 3


def test_deploy_gives_up_on_the_race_after_three_tries_and_never_retries_another_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="pickle by value"):
        _deploy_with(monkeypatch, [RACE, RACE, RACE])
    with pytest.raises(RuntimeError, match="no cluster"):
        _deploy_with(monkeypatch, [RuntimeError("no cluster")])


def test_replicas_run_their_code_on_serves_main_loop_beside_the_operators_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread hop less per call and per streamed output (benchmarks/cluster_bench.py, part A)."""
    from ray import serve

    seen: list[dict[str, object]] = []
    monkeypatch.setattr(serve, "run", lambda app, **kw: seen.append(app._bound_deployment.ray_actor_options))
    options = DeployOptions(replicas=1, max_ongoing_requests=2, max_queued_requests=2, env=(("OMP_NUM_THREADS", "2"),))
    deploy(ReplicaSpec(engine="fake", model="m"), options)
    (actor_options,) = seen
    assert actor_options["runtime_env"] == {
        "env_vars": {"OMP_NUM_THREADS": "2", "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    }
