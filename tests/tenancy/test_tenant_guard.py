"""Per-tenant enforcement: models, per-request token cap, streams, request and token buckets, reload."""

from __future__ import annotations

import pytest

from bastion.errors import InvalidArgument, PermissionDenied, RateLimited
from bastion.tenancy.buckets import TokenBucket
from bastion.tenancy.guard import TenantGuard
from bastion.tenancy.policy import TenancyPolicy


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def policy(extra_a: str = "") -> TenancyPolicy:
    return TenancyPolicy.parse(
        f"""
[[principals]]
id = "p-a"
tenant = "a"
[[principals]]
id = "p-b"
tenant = "b"
[tenants.a]
models = ["m1"]
max_tokens_per_request = 100
max_concurrent_streams = 2
requests_per_s = 1.0
request_burst = 3
tokens_per_min = 600
token_burst = 300
{extra_a}
[tenants.b]
models = ["m1", "m2"]
""".encode()
    )


def test_bucket_refills_and_reports_wait() -> None:
    c = Clock()
    b = TokenBucket(2.0, 4, c)
    assert b.take(4) == 0.0
    assert b.take(1) == pytest.approx(0.5)
    c.t += 0.5
    assert b.take(1) == 0.0
    assert b.take(5) == float("inf")
    b.give_back(100)
    assert b.level == 4


def test_unknown_principal_and_model_denied() -> None:
    g = TenantGuard(policy(), Clock())
    with pytest.raises(PermissionDenied):
        g.resolve("p-x")
    a = g.resolve("p-a")
    g.check_model(a, "m1")
    with pytest.raises(PermissionDenied):
        g.check_model(a, "m2")  # tenant b's model
    with pytest.raises(PermissionDenied):
        g.check_adapter(a, "anything")


def test_per_request_token_cap_names_field() -> None:
    g = TenantGuard(policy(), Clock())
    with pytest.raises(InvalidArgument) as err, g.stream(g.resolve("p-a"), 10, 101):
        pass
    assert "sampling.max_tokens" in err.value.public_message and "100" in err.value.public_message


def test_stream_limit_is_per_tenant() -> None:
    g = TenantGuard(policy(), Clock())
    a, b = g.resolve("p-a"), g.resolve("p-b")
    with g.stream(a, 1, 1), g.stream(a, 1, 1):
        with pytest.raises(RateLimited) as err, g.stream(a, 1, 1):
            pass
        assert err.value.retry_after_s > 0
        with g.stream(b, 1, 1):  # b is not affected by a's streams
            pass
    with g.stream(a, 1, 1):  # slots were released
        pass


def test_request_rate_and_retry_after() -> None:
    c = Clock()
    g = TenantGuard(policy(), c)
    a = g.resolve("p-a")
    for _ in range(3):
        g.take_request(a)
    with pytest.raises(RateLimited) as err:
        g.take_request(a)
    assert err.value.retry_after_s == pytest.approx(1.0)
    c.t += 1.0
    g.take_request(a)


def test_token_rate_charges_and_refunds() -> None:
    c = Clock()
    g = TenantGuard(policy(), c)
    a = g.resolve("p-a")
    with g.stream(a, 100, 100) as lease:  # charges 200 of 300
        lease.settle(100, 10)  # used 110: 90 refunded
    with g.stream(a, 90, 100) as running:  # 190 available → exactly fits
        running.start()  # reached the engine: the charge is kept
    c.t += 0.0
    with pytest.raises(RateLimited) as err, g.stream(a, 50, 50):
        pass
    assert err.value.retry_after_s == pytest.approx(10.0)  # 100 tokens at 10/s
    u = {x.tenant: x for x in g.usage()}["a"]
    assert u.prompt_tokens == 100 and u.completion_tokens == 10 and u.requests == 2


def test_reload_retunes_and_keeps_state() -> None:
    g = TenantGuard(policy(), Clock())
    a = g.resolve("p-a")
    with g.stream(a, 1, 1):
        g.reload(policy('adapters = ["x"]'))
        a2 = g.resolve("p-a")
        g.check_adapter(a2, "x")
        assert {x.tenant: x for x in g.usage()}["a"].active_streams == 1
    assert {x.tenant: x for x in g.usage()}["a"].active_streams == 0


def test_an_estimated_charge_is_corrected_after_tokenizing() -> None:
    g = TenantGuard(policy(), Clock())
    a = g.resolve("p-a")
    tokens = g._state("a").tokens  # the bucket level is what this test is about
    with g.stream(a, 250, 100, estimate=True) as lease:  # 350 > the burst of 300: capped at 300
        assert lease.charged == 300 and tokens.level == 0
        lease.adjust(40, 100)  # the real prompt: 40 tokens; 160 refunded
        assert lease.charged == 140 and tokens.level == 160
        lease.start()
    assert tokens.level == 160  # started: the charge is kept until settled
    with g.stream(a, 10, 10, estimate=True) as lease:
        lease.adjust(30, 10)  # the estimate missed 20: taken now
        assert lease.charged == 40 and tokens.level == 120
    assert tokens.level == 160  # never reached the engine: all given back
    with g.stream(a, 10, 10, estimate=True) as lease, pytest.raises(InvalidArgument):
        lease.adjust(250, 100)  # the real charge exceeds the burst
    assert tokens.level == 160
