"""bastion's server over FakeEngine, as a program: the real gRPC front end, authentication, tenancy and audit
log with a fake engine, so that hundreds of streams fit on a 2-core machine (tests/load) and the front end can be
measured without engine noise (benchmarks/security_bench.py, serve_bench.py --engine fake).

    python -m testkit.fake_server --config FILE [--address-file FILE] [--token-delay S] [--max-context N]
    BASTION_FAKE_SERVER_PROFILE=FILE python -m testkit.fake_server ...   # cProfile of the event loop's thread

The same TOML as `bastion serve --config FILE`. With ``--address-file`` it writes the address it bound there
(atomically) once listening (for ``listen = "127.0.0.1:0"``); it serves until SIGTERM. ``testkit.launcher``
starts it (``fake_server()``); benchmarks/open_server.py --engine fake serves the same engine (``serve_fake``) with
the security layer replaced by a pass-through.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bastion.config import Settings, load_settings
from bastion.engine.protocol import EnginePool
from bastion.observability.logs import setup_logging
from bastion.server import event_loop
from bastion.server.app import serve
from bastion.server.security import Security, build_security
from testkit.fakes import FakeEngine

DEFAULT_MAX_CONTEXT = 4096
# A file to write a cProfile of the server's event-loop thread to, when it exits (benchmarks only).
PROFILE_ENV = "BASTION_FAKE_SERVER_PROFILE"


def serve_fake(
    settings: Settings,
    *,
    address_file: str | None = None,
    token_delay: float = 0.0,
    max_context: int = DEFAULT_MAX_CONTEXT,
    security_factory: Callable[..., Security] = build_security,
) -> int:
    """Serves ``settings`` over one FakeEngine until SIGTERM; returns the server's exit status."""
    setup_logging("WARNING")

    async def pool(process: object) -> EnginePool:
        return EnginePool([FakeEngine(max_context=max_context, token_delay=token_delay)])

    def bound(address: str) -> None:
        if address_file is not None:
            tmp = Path(address_file + ".tmp")
            tmp.write_text(address, encoding="utf-8")
            os.replace(tmp, address_file)

    return event_loop.run(
        serve(settings, pool, on_bound=bound, security_factory=security_factory), settings.server.event_loop
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="bastion's server over FakeEngine")
    p.add_argument("--config", required=True, help="bastion's TOML settings")
    p.add_argument("--address-file", help="write the bound address here once listening")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds before each generated token")
    p.add_argument("--max-context", type=int, default=DEFAULT_MAX_CONTEXT, help="the fake model's context length")
    args = p.parse_args(argv)
    run = functools.partial(
        serve_fake,
        load_settings(args.config),
        address_file=args.address_file,
        token_delay=args.token_delay,
        max_context=args.max_context,
    )
    profile = os.environ.get(PROFILE_ENV)
    if not profile:
        return run()
    # Profiling the front end (benchmarks/security_bench.py --profile): the event loop's thread, written at exit.
    import cProfile

    prof = cProfile.Profile()
    try:
        return prof.runcall(run)
    finally:
        prof.dump_stats(profile)


if __name__ == "__main__":
    sys.exit(main())
