"""Public health traffic cannot deny service (issue 14, part 3), on the real server and engine.

More public ``grpc.health.v1.Health/Watch`` streams than the main listener's old concurrent-RPC limit (320
with the default ``server.max_inflight_requests``), on the main listener and on the health listener, and an
authenticated Generate is still served.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bastion.v1 import inference_pb2 as pb
from bastion.v1 import inference_pb2_grpc
from conftest import LiveServer

FLOOD = 340  # more than 2 * 128 + 64, the default limit that 340 streams exhausted on a live dev server
CONNECTIONS = 4  # a connection carries at most server.max_concurrent_streams (256) streams


@contextmanager
def watch_flood(target: str, n: int = FLOOD) -> Iterator[Counter[str]]:
    """``n`` anonymous Watch streams over ``CONNECTIONS`` connections; yields their outcomes ("open" once the
    first status arrived, else the status code's name) while they stay open; cancels them on exit."""
    channels = [
        grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), ("bastion.test.connection", i)])
        for i in range(CONNECTIONS)
    ]
    calls = [
        health_pb2_grpc.HealthStub(channels[i % CONNECTIONS]).Watch(health_pb2.HealthCheckRequest(), timeout=300)
        for i in range(n)
    ]
    outcomes: Counter[str] = Counter()
    try:
        for call in calls:
            try:
                next(call)
                outcomes["open"] += 1
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1
        yield outcomes
    finally:
        for call in calls:
            call.cancel()
        for ch in channels:
            ch.close()


def test_watch_flood_does_not_starve_generate(live_server: LiveServer, model_name: str) -> None:
    assert live_server.health_target, "the e2e servers run the health listener"
    with watch_flood(live_server.target) as main, watch_flood(live_server.health_target) as side:
        # The main listener: Watch needs a principal while the health listener is on (refusals in flight past
        # the concurrent-RPC limit, 2 * 8 + 64 on this server, get grpc's own RESOURCE_EXHAUSTED).
        assert main["UNAUTHENTICATED"] > 0 and set(main) <= {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"}, main
        # The health listener: a few streams per peer (health.max_watch_per_peer, 8), the rest refused at once
        # (RESOURCE_EXHAUSTED; a stream caught by a connection's stream limit may see UNAVAILABLE instead).
        assert 0 < side["open"] <= 8 and set(side) <= {"open", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, side
        assert side["RESOURCE_EXHAUSTED"] > FLOOD // 2, side
        with live_server.channel() as ch:
            request = pb.GenerateRequest(
                model=model_name, prompt="Hello", sampling=pb.SamplingParams(max_tokens=4, temperature=0.0)
            )
            msgs = list(inference_pb2_grpc.InferenceStub(ch).Generate(request, timeout=120))
        assert msgs[-1].finish_reason in (pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_STOP)
        assert msgs[-1].usage.completion_tokens > 0
        with grpc.insecure_channel(live_server.health_target) as probe:
            reply = health_pb2_grpc.HealthStub(probe).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
