"""End-to-end fixtures: one real `bastion serve` process (real vLLM engine, real default model, real gRPC
on a Unix socket) per test session. Tests that end that server (SIGTERM) are marked `terminal_server`
and run last.

Nothing here skips: without vLLM or the model these tests fail, because they are the proof that the
capability works.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bastion.v1 import inference_pb2_grpc
from identity import Identity, bearer_channel, make_identity
from testkit.launcher import BastionServer, free_ports

START_TIMEOUT_S = float(os.environ.get("BASTION_E2E_START_TIMEOUT", "900"))

# KV budgets of the live server's tenants (96 blocks of 128 tokens): tenant-a may use at most 72 blocks,
# tenant-b has 12 guaranteed (tests/e2e/test_kv_budgets.py).
# tenant-c reserves 90: with tenant-b's 12 that is more than the pool, so its reservation is refused.
KV_BUDGETS = {
    "tenant-a": {"kv_max_blocks": 72},
    "tenant-b": {"kv_reserved_blocks": 12},
    "tenant-c": {"kv_reserved_blocks": 90},
}
# tenant-d partitions its prefix cache per principal; frank and grace are two of its principals
# (tests/e2e/test_isolation.py). Its KV budget is the tenancy default (no reservation, no cap).
TENANTS = {**KV_BUDGETS, "tenant-d": {"prefix_cache_scope": "principal"}}
MORE_PEOPLE: dict[str, tuple[str | None, list[str]]] = {
    "frank": ("tenant-d", ["user"]),
    "grace": ("tenant-d", ["user"]),
}

# Declared in the live server's tenancy policy as a public prefix (tests/e2e/test_isolation.py).
PUBLIC_SYSTEM = " ".join(
    [
        "You are the support assistant of Example Corp. Answer questions about orders, deliveries, returns and",
        "invoices politely and briefly. Never reveal internal notes. Our opening hours are Monday to Friday,",
        "nine to five, and our returns window is thirty days from delivery. Refunds go back to the original",
        "payment method within five working days. Delivery inside the country takes two to four days; abroad",
        "it takes up to two weeks. If a parcel is lost, open a claim after ten days without tracking updates.",
        "Gift cards cannot be refunded or exchanged for cash. Damaged items are replaced free of charge when the",
        "customer sends a photo within seven days. Invoices are emailed when the order ships; a corrected invoice",
        "needs the order number and the new billing address. Business customers may pay by bank transfer within",
        "thirty days. We do not sell customer data and we never ask for passwords by email or phone. Large items",
        "are delivered by a freight partner who calls the day before to agree on a two-hour window. Customers",
        "can change the delivery address until the parcel leaves the warehouse; after that, the carrier decides.",
        "Always end with a short summary of the next step the customer should take.",
    ]
)  # about 300 tokens: more than two KV blocks (128 tokens each on the CPU backend)


_E2E_DIR = Path(__file__).resolve().parent


def _is_e2e(item: pytest.Item) -> bool:
    return _E2E_DIR in Path(str(item.path)).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # e2e tests run after every other test directory (their live server boots meanwhile), and the tests that
    # end the live server run last.
    items.sort(key=lambda it: (_is_e2e(it), bool(it.get_closest_marker("terminal_server"))))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the session's servers now when a selected test needs them, so their engines start while the
    tests that need no engine run (two cores: each start is mostly one process importing torch and vLLM).
    The fixtures wait for them."""
    if session.config.option.collectonly:
        return
    factory: pytest.TempPathFactory = session.config._tmp_path_factory
    for fixture, (dirname, model_toml) in _SESSION_SERVERS.items():
        if fixture not in _prelaunched and any(fixture in getattr(it, "fixturenames", ()) for it in session.items):
            _prelaunched[fixture] = launch_server(factory.mktemp(dirname), model_toml=model_toml)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for server in _prelaunched.values():  # launched, but no test took it (deselected, or an error before)
        stop_server(server)


@dataclass
class LiveServer:
    """A `bastion serve` process (testkit.launcher) and what the tests need to talk to it."""

    server: BastionServer
    metrics_url: str
    marker_dir: Path
    identity: Identity
    audit_dir: Path
    # The health listener ([health] listen: grpc.health.v1 only, no credentials), on a free loopback port.
    health_target: str = ""
    # The OpenAI-compatible HTTP API ([http] listen, plaintext on a free loopback port): its base URL.
    http_url: str = ""

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.server.proc is not None
        return self.server.proc

    @property
    def target(self) -> str:
        return self.server.target

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    def channel(self, who: str = "alice") -> grpc.Channel:
        """A channel carrying ``who``'s API key (see tests/identity.py)."""
        return bearer_channel(self.target, self.identity.keys[who])

    def log_text(self) -> str:
        return self.server.log_text()


# Every e2e server runs the same engine settings (max_num_seqs, max_model_len), so they can share vLLM's
# compile cache. ``fast_start``: no torch.compile and no separate worker process — about a minute to SERVING
# instead of several. test_engine_death.py starts the one server on the default (production) path.
ENGINE_TOML = """
cpu_kv_cache_gib = 1
max_num_seqs = 16
"""
FAST_ENGINE_TOML = ENGINE_TOML + "fast_start = true\n"
DEFAULT_MODEL_TOML = f"""
[model]
source = "default"
num_kv_blocks = 96
{FAST_ENGINE_TOML}"""
# The live server's model settings on the default start path (torch.compile, a worker process).
DEFAULT_PATH_TOML = DEFAULT_MODEL_TOML.replace(FAST_ENGINE_TOML, ENGINE_TOML)

# The session-scoped servers: fixture name -> (directory name, [model] TOML). Launched at collection
# (pytest_collection_finish) when a selected test asks for the fixture.
_SESSION_SERVERS = {
    "live_server": ("live", DEFAULT_MODEL_TOML),
    "default_path_server": ("default-path", DEFAULT_PATH_TOML),
}
_prelaunched: dict[str, LiveServer] = {}


def launch_server(
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    model_toml: str = DEFAULT_MODEL_TOML,
    assurance_toml: str | None = None,
) -> LiveServer:
    """Starts `bastion serve` (a Unix socket in ``workdir``; config ``bastion.toml``, log ``server.log``);
    ``model_toml`` holds its [model]/[weights], ``assurance_toml`` its [assurance] table (default: models
    released without an attestation)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "bastion.sock"
    marker = workdir / "plugin-markers"
    marker.mkdir(exist_ok=True)
    port, health_port, http_port = free_ports(3)
    identity = make_identity(
        workdir / "identity", tenants=TENANTS, public_prefixes={"support": PUBLIC_SYSTEM}, people=MORE_PEOPLE
    )
    audit_dir = workdir / "audit"
    config = f"""
[server]
listen = "unix:{sock}"
grace_period_s = 30
max_inflight_requests = 8
# bastion eval (concurrency 8) and the KV flood run one tenant against these 8 slots; the per-tenant share
# is tested in tests/grpc/test_tenant_limits_first.py.
tenant_admission_share = 1.0
{model_toml}
[observability]
metrics_listen = "127.0.0.1:{port}"
[health]
listen = "127.0.0.1:{health_port}"
[http]
listen = "127.0.0.1:{http_port}"
{identity.toml(audit_dir, assurance_toml)}
"""
    env = {**os.environ, "BASTION_PLUGIN_MARKER_DIR": str(marker), **(extra_env or {})}
    server = BastionServer(workdir, config, target=f"unix:{sock}", env=env).start()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    return LiveServer(
        server, metrics_url, marker, identity, audit_dir, f"127.0.0.1:{health_port}", f"http://127.0.0.1:{http_port}"
    )


def start_server(
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    model_toml: str = DEFAULT_MODEL_TOML,
    assurance_toml: str | None = None,
) -> LiveServer:
    """Starts `bastion serve` and waits until health says SERVING."""
    return wait_serving(launch_server(workdir, extra_env, model_toml, assurance_toml))


def wait_serving(server: LiveServer) -> LiveServer:
    """Waits until ``server``'s health says SERVING; fails (ServerStartError, a RuntimeError) with its log's
    tail if it exits or times out."""
    server.server.wait_serving(START_TIMEOUT_S)
    return server


def stop_server(server: LiveServer) -> None:
    """SIGTERM, up to 60 s to drain and exit, then SIGKILL to what is left of its process group."""
    server.server.stop(grace_s=60)


def _session_server(fixture: str, factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = _prelaunched.pop(fixture, None)
    if server is None:
        dirname, model_toml = _SESSION_SERVERS[fixture]
        server = launch_server(factory.mktemp(dirname), model_toml=model_toml)
    try:
        yield wait_serving(server)
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The shared server (fast start) that most e2e modules use."""
    yield from _session_server("live_server", tmp_path_factory)


@pytest.fixture(scope="session")
def default_path_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server on the default start path; test_engine_death.py owns it (it kills its engine)."""
    yield from _session_server("default_path_server", tmp_path_factory)


@pytest.fixture(scope="session")
def stub(live_server: LiveServer) -> Iterator[inference_pb2_grpc.InferenceStub]:
    with live_server.channel() as ch:
        yield inference_pb2_grpc.InferenceStub(ch)


@pytest.fixture(scope="session")
def model_name(stub: inference_pb2_grpc.InferenceStub) -> str:
    from bastion.v1 import inference_pb2

    models = stub.ListModels(inference_pb2.ListModelsRequest(), timeout=10).models
    assert len(models) == 1
    return models[0].name
