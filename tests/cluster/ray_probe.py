"""Ray drivers for tests/cluster/live_cases.py, each run as its own process (a driver changes its
process for good: Ray's environment variables, its global state). Prints one JSON line.

``ray_probe.py driver CONFIG``: joins with bastion's own driver code (token + mutual TLS from the config's
``[cluster]``) and runs one task on each node address given after the config; reports the nodes the tasks
ran on and whether a Ray credential variable reached the workers' environment.

``ray_probe.py intruder ADDRESS NODE_IP CA CERT KEY [TOKEN_FILE]``: a driver that has a valid certificate
(the TLS layer lets it in) but not the cluster's token: no token at all, or the one in TOKEN_FILE. It
tries once (``RAY_gcs_server_port_wait_time_s=1``) and reports whether it was refused and how fast.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _driver(config: str, ips: list[str]) -> dict[str, object]:
    from bastion.cluster.driver import connect
    from bastion.config import load_settings

    settings = load_settings(config).cluster
    t0 = time.monotonic()
    connect(settings, namespace="bastion-test")
    import ray

    @ray.remote(num_cpus=0)
    def where() -> dict[str, object]:
        import ray as r

        ctx = r.get_runtime_context()
        node_id = ctx.get_node_id()
        ip = next(n["NodeManagerAddress"] for n in r.nodes() if n["NodeID"] == node_id)
        return {
            "ip": ip,
            "pid": os.getpid(),
            "auth_env": sorted(k for k in os.environ if k.startswith("RAY_AUTH")),
            "token_in_env": "RAY_AUTH_TOKEN" in os.environ,
        }

    refs = [where.options(resources={f"node:{ip}": 0.001}).remote() for ip in ips]
    results = ray.get(refs, timeout=120)
    ray.shutdown()
    return {"connected_s": round(time.monotonic() - t0, 2), "results": results}


def _intruder(address: str, node_ip: str, ca: str, cert: str, key: str, token_file: str | None) -> dict[str, object]:
    for name in [n for n in os.environ if n.startswith("RAY_")]:
        del os.environ[name]
    os.environ.update(
        {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": cert,
            "RAY_TLS_SERVER_KEY": key,
            "RAY_TLS_CA_CERT": ca,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_gcs_server_port_wait_time_s": "1",  # one attempt: the refusal, not Ray's 20 s of retries
        }
    )
    if token_file:
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": token_file})
    import ray

    t0 = time.monotonic()
    try:
        ray.init(address=address, _node_ip_address=node_ip, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 -- any failure to join is the expected outcome; its text is reported
        cause = exc.__cause__ or exc
        return {"refused": True, "seconds": round(time.monotonic() - t0, 2), "error": str(cause)[-2000:]}
    ray.shutdown()
    return {"refused": False, "seconds": round(time.monotonic() - t0, 2), "error": ""}


def main(argv: list[str]) -> int:
    if argv[0] == "driver":
        out = _driver(argv[1], argv[2:])
    elif argv[0] == "intruder":
        out = _intruder(*argv[1:6], argv[6] if len(argv) > 6 else None)
    else:
        raise SystemExit(f"unknown mode {argv[0]}")
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
