"""A bastion server process over FakeEngine for load and crash tests: the real gRPC front end, auth,
tenancy and audit log, with a fake engine so hundreds of streams fit on a 2-core machine.

Usage: python fake_server.py CONFIG.json ADDRESS_FILE — writes the bound address to ADDRESS_FILE once
listening, then serves until SIGTERM (or dies by SIGKILL).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bastion.config import Settings
from bastion.engine.protocol import EnginePool
from bastion.observability.logs import setup_logging
from bastion.server.app import serve
from fakes import FakeEngine


def main() -> int:
    settings = Settings.model_validate(json.loads(Path(sys.argv[1]).read_text()))
    address_file = Path(sys.argv[2])
    setup_logging("WARNING")

    async def pool() -> EnginePool:
        return EnginePool([FakeEngine(token_delay=0.005)])

    def bound(address: str) -> None:
        tmp = address_file.with_suffix(".tmp")
        tmp.write_text(address)
        tmp.rename(address_file)

    return asyncio.run(serve(settings, pool, on_bound=bound))


if __name__ == "__main__":
    sys.exit(main())
