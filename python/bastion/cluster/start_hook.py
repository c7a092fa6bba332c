"""``RAY_START_HOOK`` of bastion's nodes: ``ray start`` calls ``lock_down(ray_params, head)`` after parsing
its options and before it starts anything. Tied to Ray 2.60 (pinned exactly); the cluster tests fail if a
Ray upgrade changes what it relies on.

* Ray's client server (``ray://``, port 10001 on the head) is not started: ``ray start`` has no option to
  turn it off, and it would be one more code-execution endpoint on the network. bastion's front door
  connects as a driver through the GCS, never through it.
* The dashboard stays off whatever an option said.
* The raylet is told the dashboard agent's HTTP port. Ray 2.60 does not pass it, so its raylet waits for the
  agent to report it, 15 seconds at most (not configurable in 2.60), and aborts when a loaded machine makes
  the agent's start slower than that. bastion chose the port (``cluster.agent_http_port``), so nothing has
  to be waited for.
"""

from __future__ import annotations

from typing import Any

_FLAG = "--dashboard_agent_listen_port="


def lock_down(ray_params: Any, head: bool) -> None:
    """Called by ``ray start`` (``RAY_START_HOOK``) with its ``RayParams``; runs in that process only."""
    ray_params.ray_client_server_port = None
    ray_params.include_dashboard = False
    port = ray_params.dashboard_agent_listen_port
    if not port:
        return
    from ray._private import services  # the `ray start` process has imported Ray already

    original = services.start_ray_process

    def start_ray_process(command: list[str], process_type: str, *args: Any, **kwargs: Any) -> Any:
        if process_type == "raylet" and not any(c.startswith(_FLAG) for c in command):
            command = [*command, f"{_FLAG}{int(port)}"]
        return original(command, process_type, *args, **kwargs)

    services.start_ray_process = start_ray_process
