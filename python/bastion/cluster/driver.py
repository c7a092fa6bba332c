"""Joining the cluster as a Ray driver (what the front door will do with ``[cluster]`` settings).

A driver runs on a cluster node (Ray attaches it to the raylet at ``cluster.node_ip``) and needs the same
credentials as a node: the token file and a certificate from the cluster CA that names ``node_ip``. It
passes the same checks (``bastion.cluster.preflight``) and connects with token auth and mutual TLS; the
token is read by Ray from its file, never placed in the environment. This is the only module of bastion
that imports Ray at run time (``import-linter``: ``ray-home``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from bastion.cluster.preflight import check_node
from bastion.cluster.settings import ClusterSettings, split_address
from bastion.errors import ConfigError

#: Serve's request router runs on the loop of the caller (the server's), not a loop of its own in another
#: thread: two thread hops less per call. Read once, when Serve is imported (after this).
FRONT_DOOR_SERVE_ENV = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def driver_env(settings: ClusterSettings) -> dict[str, str]:
    """The ``RAY_*`` variables a driver needs (paths only)."""
    return check_node(settings, dirs=False).ray_security_env()


def connect(settings: ClusterSettings, *, namespace: str | None = None, **init_kwargs: Any) -> Any:
    """Checks, then ``ray.init`` against ``cluster.head_address`` with token auth and mutual TLS. Sets the
    ``RAY_*`` variables in this process (Ray reads them from the environment) and removes any inherited
    ``RAY_AUTH_TOKEN`` (a token in the environment would reach every process this one starts)."""
    if not settings.head_address:
        raise ConfigError("cluster.head_address is not set: the head node's HOST:PORT")
    split_address(settings.head_address, "cluster.head_address")
    env = driver_env(settings)
    if "ray" in sys.modules and os.environ.get("RAY_USE_TLS") != env["RAY_USE_TLS"]:
        # Ray's core reads its RAY_* settings once, when its native module loads: imported before they were
        # set, it would speak plaintext to the TLS cluster (and retry for ever rather than fail).
        raise ConfigError("ray was imported before the cluster's TLS settings were set: join before importing ray")
    for name in [n for n in os.environ if n.upper().startswith("RAY_AUTH") or n.upper() == "RAY_USE_TLS"]:
        del os.environ[name]
    os.environ.update(env)
    os.environ.update(FRONT_DOOR_SERVE_ENV)
    import ray  # only here: bastion.cluster is Ray's one home, and importing Ray takes seconds

    init_kwargs.setdefault("logging_level", logging.WARNING)
    init_kwargs.setdefault("log_to_driver", False)
    return ray.init(
        address=settings.head_address, _node_ip_address=settings.node_ip, namespace=namespace, **init_kwargs
    )
