"""The EngineCore forked from a process that has already imported vLLM (CPU): SERVING sooner.

vLLM's CPU platform starts its EngineCore with ``spawn``: a fresh interpreter that imports vLLM's engine and torch
again (about 30 s on 2 cores) after the server has imported them itself. :func:`start` launches Python's
forkserver as soon as the server knows it runs on CPU: a fresh interpreter as well (exec'd: nothing of the
server's memory, no key it has read, no listener; its environment, as a spawned EngineCore's), which imports those
modules while the server verifies the model; the EngineCore is then forked from it. The EngineCore receives what a spawned one would: its arguments pickled
(forkserver pickles the process object, as spawn does) and the server's environment as it is when the EngineCore
starts, applied before vLLM's code runs (:class:`EngineCoreProcess`).

What cannot be applied after a process has started must already agree, or the EngineCore is spawned as before and
a warning names the variables (never their values): the dynamic loader's variables (``LD_PRELOAD``, the existing
directories of ``LD_LIBRARY_PATH``) as the forkserver was started with them, and every other variable as a
process forked from the forkserver sees it (a probe process reports it: what the preloaded imports read), except
those read only inside vLLM's target (:data:`LAZY`). vLLM sets its CPU platform's variables when it configures
the engine; :func:`planned_env` sets the same ones before the forkserver starts (vLLM then finds them set), so a
vLLM upgrade that changes them shows as a fall back to spawn, never as a different engine.

The forkserver lives as long as the server: vLLM watches the EngineCore through it. CPU only: on CUDA vLLM forks,
or spawns once CUDA is initialised, and no forkserver is started. A cluster replica (a Ray actor) sets
``RAY_ADDRESS`` before it builds its engine, as vLLM does before it spawns one there (bastion.cluster.replica).
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.context import ForkServerContext, ForkServerProcess
from typing import Any

from bastion.engine.process import ENV_VAR

log = logging.getLogger(__name__)

# What the EngineCore imports before it loads the model (the default model's architecture included); imported
# once, in the forkserver.
PRELOAD = (
    "vllm.v1.engine.core",
    "vllm.v1.executor.uniproc_executor",
    "vllm.v1.worker.cpu_worker",
    "vllm.model_executor.models.llama",
)
# Read only by code that runs inside vLLM's target, after EngineCoreProcess.run applied the environment:
# bastion's engine-process contract (bastion's plugin, at the EngineCore's start) and the Mamba state layout that
# vLLM's CPU platform chooses from the CPU's features (read by vllm.envs when a Mamba layer is built).
LAZY = frozenset({ENV_VAR, "VLLM_SSM_CONV_STATE_LAYOUT"})
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PROBE_TIMEOUT_S = 300.0  # the forkserver's imports take about 30 s on 2 cores


def _package_dir(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(next(iter(spec.submodule_search_locations)))


def _ld_preload(current: str) -> str:
    """``LD_PRELOAD`` as vLLM's CPU platform sets it: torch's libgomp unless an OpenMP runtime is preloaded, and
    the tcmalloc vLLM bundles (first). Found without importing torch or vLLM."""
    value = current
    torch_dir, vllm_dir = _package_dir("torch"), _package_dir("vllm")
    if torch_dir and not any(omp in value for omp in ("libomp", "libgomp", "libiomp")):
        libs = [os.path.join(os.path.dirname(torch_dir), "torch.libs"), os.path.join(torch_dir, "lib")]
        found = [p for d in libs for p in glob.glob(os.path.join(d, "libgomp*.so*"))]
        if found:
            value = f"{value}:{found[0]}" if value else found[0]
    if vllm_dir and "libtcmalloc" not in value:
        for pattern in ("libtcmalloc_minimal*.so*", "libtcmalloc.so*"):
            found = glob.glob(os.path.join(vllm_dir, "libs", pattern))
            if found:
                value = f"{found[0]}:{value}" if value else found[0]
                break
    return value


def planned_env(environ: Mapping[str, str], tensor_parallel_size: int) -> dict[str, str]:
    """The variables vLLM's CPU platform sets when it configures an engine (``CpuPlatform.check_and_update_config``
    in vLLM 0.32), computed before vLLM is imported. vLLM overrides an operator's value of these, but keeps and
    extends an operator's ``LD_PRELOAD``."""
    planned = {
        "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        "NUMEXPR_MAX_THREADS": str(len(os.sched_getaffinity(0))),
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
        "VLLM_DISABLE_SHARED_EXPERTS_STREAM": "1",
        "TORCHINDUCTOR_CPP_DYNAMIC_THREADS": "1",
        "LOCAL_WORLD_SIZE": str(tensor_parallel_size),
    }
    planned["LD_PRELOAD"] = _ld_preload(environ.get("LD_PRELOAD", ""))
    return planned


def loader_view(env: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """What the dynamic loader takes from ``env`` when a process starts: ``LD_PRELOAD``, and the directories of
    ``LD_LIBRARY_PATH`` that exist (the loader skips the others)."""
    dirs = tuple(d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d and os.path.isdir(d))
    return env.get("LD_PRELOAD", ""), dirs


def _die_with_parent(parent: int | None) -> None:
    """SIGKILL this process when its parent, the forkserver, exits (Linux ``PR_SET_PDEATHSIG``); exits at once
    when it already has. The forkserver exits with the server, so no EngineCore outlives either one holding the
    weights and tenants' KV cache (a spawned one outlives a server killed with SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is None or os.getppid() != parent:
        os._exit(1)  # the forkserver died before the signal was armed: the server sees this as the EngineCore's end


class EngineCoreProcess(ForkServerProcess):
    """A process forked from the forkserver that runs with the environment its parent had at ``start()`` and does
    not outlive the forkserver."""

    _bastion_env: dict[str, str]
    _bastion_forkserver: int | None

    def start(self) -> None:
        self._bastion_env = dict(os.environ)  # pickled with the process object
        multiprocessing.forkserver.ensure_running()  # (again, if it died since): its pid is the parent's
        self._bastion_forkserver = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        super().start()

    def run(self) -> None:
        _die_with_parent(self._bastion_forkserver)
        # multiprocessing hands each forked process the write end of the pipe that keeps the forkserver alive (so
        # that it could fork more); held here it would keep the forkserver, and so this process, alive after the
        # server died. vLLM's processes start theirs with spawn.
        alive: Any = multiprocessing.forkserver._forkserver
        if alive._forkserver_alive_fd is not None:
            os.close(alive._forkserver_alive_fd)
            alive._forkserver_alive_fd = None
        os.environ.clear()
        os.environ.update(self._bastion_env)
        super().run()


class EngineCoreContext(ForkServerContext):
    Process = EngineCoreProcess  # what vLLM's CoreEngineProcManager starts


def _report_env(conn: multiprocessing.connection.Connection) -> None:
    conn.send(dict(os.environ))
    conn.close()


def differences(
    server: Mapping[str, str], forked: Mapping[str, str], loader_at_start: tuple[str, tuple[str, ...]]
) -> list[str]:
    """The names of the variables that would make a forked EngineCore differ from a spawned one, sorted."""
    names = {k for k in set(server) | set(forked) if k not in LAZY and server.get(k) != forked.get(k)}
    if loader_view(server) != loader_at_start:
        names.add("LD_PRELOAD/LD_LIBRARY_PATH")
    return sorted(names)


class Forkserver:
    """The running forkserver (:func:`start`); :meth:`context` is what the EngineCore starts from."""

    def __init__(self, loader_at_start: tuple[str, tuple[str, ...]]) -> None:
        self._loader = loader_at_start
        self._ctx = EngineCoreContext()

    def _forked_env(self) -> dict[str, str] | None:
        recv, send = self._ctx.Pipe(duplex=False)
        probe = ForkServerProcess(target=_report_env, args=(send,), name="bastion-env-probe", daemon=True)
        try:
            probe.start()  # a forkserver that died refuses the connection
            send.close()
            if not recv.poll(PROBE_TIMEOUT_S):
                return None
            env = recv.recv()
        except (EOFError, OSError):
            return None
        finally:
            send.close()
            recv.close()
            if probe.pid is not None:
                probe.join(timeout=10)
        return env if isinstance(env, dict) else None

    def context(self) -> EngineCoreContext | None:
        """The context to start the EngineCore from, or None (spawn) when it would not run as a spawned one."""
        forked = self._forked_env()
        if forked is None:
            log.warning("the preloaded EngineCore process did not answer; the EngineCore is spawned")
            return None
        names = differences(os.environ, forked, self._loader)
        if names:
            log.warning(
                "the EngineCore is spawned, not forked from the preloaded process: environment differs in %s",
                ", ".join(names),
            )
            return None
        return self._ctx


def start(tensor_parallel_size: int) -> Forkserver:
    """Sets vLLM's CPU platform variables in this process and starts the forkserver, which preloads :data:`PRELOAD`.
    Call before the model is verified (the imports run meanwhile), on CPU only."""
    # As vLLM sets them (unconditionally) when it configures the engine.
    os.environ.update(planned_env(os.environ, tensor_parallel_size))
    multiprocessing.forkserver.set_forkserver_preload(list(PRELOAD))
    multiprocessing.forkserver.ensure_running()
    return Forkserver(loader_view(os.environ))


@contextmanager
def engine_core_from(server: Forkserver | None) -> Iterator[None]:
    """While vLLM starts its EngineCore: from the forkserver when its environment agrees, else spawned."""
    ctx = server.context() if server is not None else None
    if ctx is None:
        yield
        return
    import vllm.v1.engine.utils as engine_utils

    # A module global vLLM's CoreEngineProcManager calls (tests/engine/vllm/test_vllm_contract.py).
    saved = engine_utils.get_mp_context  # type: ignore[attr-defined]
    engine_utils.get_mp_context = lambda: ctx  # type: ignore[attr-defined]
    log.info("the EngineCore is forked from the preloaded process (vLLM's imports done in advance)")
    try:
        yield
    finally:
        engine_utils.get_mp_context = saved  # type: ignore[attr-defined]
