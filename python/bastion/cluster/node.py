"""Starting and stopping one locked-down Ray node (``bastion cluster start-head`` / ``start-worker`` /
``stop``).

A node is started with ``ray start`` (the executable beside this interpreter) after the checks of
``bastion.cluster.preflight`` passed, with:

* ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` (``ray start`` 2.60 leaves token auth off unless a
  token already exists in its default place: the mode is always set), the token itself only in its file;
* ``RAY_USE_TLS=1`` with the node's certificate, key and the cluster CA (mutual TLS on all of Ray's gRPC);
* ``--include-dashboard=false`` (no dashboard, no Jobs API listener), usage stats off, Ray's client server
  not started (a ``RAY_START_HOOK``, ``bastion.cluster.start_hook``), every port explicit;
* Ray's temp and spill directories inside the node's private directories, and raised health-check
  thresholds.

Its environment is this one less every inherited ``RAY_*`` variable (nothing may turn the above off) and
less anything that names or looks like a secret (``BASTION_API_KEY``, ``*_TOKEN``, a PEM block, ...):
whatever ``ray start`` gets, every Ray worker on the node inherits, and vLLM's Ray executor copies to
remote ranks. The names dropped are reported, never the values.

Every process of the node carries ``_BASTION_CLUSTER_NODE=<temp_dir>`` in its environment, so ``stop``
finds exactly this node's processes (and their children) — unlike ``ray stop``, which ends every Ray
process of the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bastion.cluster.preflight import NodePaths, check_node
from bastion.cluster.settings import FORBIDDEN_ENV_NAMES, ClusterSettings, looks_like_secret, secret_name, split_address
from bastion.errors import BastionError, ConfigError

MARKER = "_BASTION_CLUSTER_NODE"
START_HOOK = "bastion.cluster.start_hook.lock_down"
START_LOG = "ray-start.log"
_KEEP_SECRET_NAMED = ("_FILE", "_PATH", "_DIR", "_SOCK")
# Search paths and the like: kept whatever their value looks like (a store path may hold a long hash).
_STRUCTURAL = frozenset({"PATH", "HOME", "PWD", "OLDPWD", "SHELL", "USER", "LOGNAME", "TMPDIR", "VIRTUAL_ENV"})


@dataclass(frozen=True)
class StartedNode:
    head: bool
    gcs_address: str
    temp_dir: Path
    dropped_env: tuple[str, ...]


def ray_executable() -> Path:
    """``ray`` beside this interpreter (the same environment as bastion)."""
    exe = Path(sys.executable).with_name("ray")
    if not exe.is_file():
        raise ConfigError(f"the Ray command line is not installed beside {sys.executable} (ray[serve] is a dependency)")
    return exe


def scrub_env(env: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """``env`` less inherited ``RAY_*`` variables and anything secret (see the module); returns the kept
    variables and the names dropped (sorted)."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in env.items():
        upper = name.upper()
        if (
            upper.startswith("RAY_")
            or upper == MARKER
            or upper in FORBIDDEN_ENV_NAMES
            or upper.startswith("BASTION_")  # bastion's own settings and credentials (BASTION_API_KEY, ...)
            or (secret_name(name) and not upper.endswith(_KEEP_SECRET_NAMED))
            or (upper not in _STRUCTURAL and not upper.endswith("PATH") and looks_like_secret(value))
        ):
            dropped.append(name)
        else:
            kept[name] = value
    return kept, tuple(sorted(dropped))


def ray_env(settings: ClusterSettings, paths: NodePaths) -> dict[str, str]:
    """The ``RAY_*`` variables of a node: token auth, mutual TLS, no usage stats, health checks, the hook."""
    return {
        **paths.ray_security_env(),
        "RAY_health_check_failure_threshold": str(settings.health_check_failure_threshold),
        "RAY_health_check_timeout_ms": str(settings.health_check_timeout_ms),
        "RAY_health_check_period_ms": str(settings.health_check_period_ms),
        "RAY_START_HOOK": START_HOOK,
        # The head's two metrics servers otherwise take fixed ports of Ray's choosing (44227, 44217).
        "DASHBOARD_METRIC_PORT": str(settings.dashboard_metrics_port),
        "AUTOSCALER_METRIC_PORT": str(settings.autoscaler_metrics_port),
    }


def node_env(
    settings: ClusterSettings, paths: NodePaths, base: Mapping[str, str]
) -> tuple[dict[str, str], tuple[str, ...]]:
    """The whole environment of ``ray start``: ``base`` scrubbed, the node's ``RAY_*`` variables, the marker."""
    env, dropped = scrub_env(base)
    env.update(ray_env(settings, paths))
    env[MARKER] = str(paths.ray_temp_dir.parent)
    return env, dropped


def ray_start_argv(
    settings: ClusterSettings, paths: NodePaths, *, head: bool, head_address: str | None = None
) -> list[str]:
    """The ``ray start`` command line (paths and ports only; nothing secret)."""
    s = settings
    argv = [str(ray_executable()), "start"]
    if head:
        argv += ["--head", f"--port={s.gcs_port}", "--include-dashboard=false"]
    else:
        if not head_address:
            raise ConfigError("cluster.head_address (or --address) is needed to start a worker node")
        argv += [f"--address={head_address}"]
    argv += [
        f"--node-ip-address={s.node_ip}",
        f"--node-manager-port={s.node_manager_port}",
        f"--object-manager-port={s.object_manager_port}",
        f"--min-worker-port={s.min_worker_port}",
        f"--max-worker-port={s.max_worker_port}",
        f"--dashboard-agent-listen-port={s.agent_http_port}",
        f"--dashboard-agent-grpc-port={s.agent_grpc_port}",
        f"--runtime-env-agent-port={s.runtime_env_agent_port}",
        f"--metrics-export-port={s.metrics_export_port}",
        f"--temp-dir={paths.ray_temp_dir}",
        f"--object-spilling-directory={paths.ray_spill_dir}",
        "--disable-usage-stats",
        "--log-style=record",
        "--log-color=false",
    ]
    if s.num_cpus is not None:
        argv.append(f"--num-cpus={s.num_cpus}")
    if s.num_gpus is not None:
        argv.append(f"--num-gpus={s.num_gpus}")
    if s.object_store_bytes is not None:
        argv.append(f"--object-store-memory={s.object_store_bytes}")
    return argv


def start_node(
    settings: ClusterSettings, *, head: bool, head_address: str | None = None, timeout_s: float = 180.0
) -> StartedNode:
    """Checks, then starts this node (see the module). On failure whatever started is stopped and
    a ``BastionError`` names the log (``<temp_dir>/ray-start.log``)."""
    paths = check_node(settings)
    address = f"{settings.node_ip}:{settings.gcs_port}"
    if not head:
        head_address = head_address or settings.head_address
        if not head_address:
            raise ConfigError("cluster.head_address (or --address) is needed to start a worker node")
        host, port = split_address(head_address, "--address")
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    node_dir = paths.ray_temp_dir.parent
    if node_processes(node_dir):
        raise ConfigError(f"a cluster node already runs with cluster.temp_dir {node_dir}; `bastion cluster stop` it")
    argv = ray_start_argv(settings, paths, head=head, head_address=None if head else address)
    env, dropped = node_env(settings, paths, os.environ)
    log_path = node_dir / START_LOG
    with open(log_path, "wb") as log:  # in the private temp_dir
        os.chmod(log_path, 0o600)
        try:
            proc = subprocess.run(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s
            )
            failed = f"exit status {proc.returncode}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            failed = f"no answer within {timeout_s:.0f} s"
    if failed:
        stop_node(node_dir)
        raise BastionError(f"ray start failed ({failed}); its output is in {log_path}")
    return StartedNode(head=head, gcs_address=address, temp_dir=node_dir, dropped_env=dropped)


def _proc_ids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def node_processes(temp_dir: Path) -> list[int]:
    """The live processes of the node whose ``cluster.temp_dir`` is ``temp_dir``: those of this user that
    carry the marker for it, and all their descendants."""
    marker = f"{MARKER}={Path(temp_dir).absolute()}".encode()
    me, uid = os.getpid(), os.geteuid()
    parents: dict[int, int] = {}
    roots: set[int] = set()
    for pid in _proc_ids():
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X") or pid == me:
            continue
        parents[pid] = st[1]
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            roots.add(pid)
    found = set(roots)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found and pid not in found}
        found |= children
        grew = bool(children)
    return sorted(found)


def _alive(pids: Iterable[int]) -> list[int]:
    out = []
    for pid in pids:
        st = _stat(pid)
        if st is not None and st[0] not in ("Z", "X"):
            out.append(pid)
    return out


def _signal(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_node(temp_dir: Path, *, grace_s: float = 10.0) -> int:
    """Ends the node's processes (``node_processes``): SIGTERM, then SIGKILL for what is left after
    ``grace_s``. Returns how many there were."""
    pids = node_processes(temp_dir)
    if not pids:
        return 0
    _signal(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(pids) + [p for p in node_processes(temp_dir) if p not in pids]  # and anything forked meanwhile
    if left:
        _signal(left, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while _alive(left) and time.monotonic() < deadline:
            time.sleep(0.05)
    return len(set(pids) | set(left))
