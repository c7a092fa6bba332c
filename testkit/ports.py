"""Free local ports for the Ray nodes of tests and benchmarks (Ray binds every interface, whatever its node
address says)."""

from __future__ import annotations

import random
import socket


def free_port_block(count: int, *, start: int = 20000, stop: int = 32000, step: int = 97) -> int:
    """A port ``p`` such that ``p .. p+count-1`` can all be bound on every interface now (Ray binds 0.0.0.0
    whatever its node address), below Linux's ephemeral range (32768 up) so no outgoing connection takes one
    meanwhile; tried at random so parallel runs rarely collide."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(start, stop - count, step)
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free block of ports")
