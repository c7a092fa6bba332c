"""Per-tenant enforcement: principal → tenant, allowed models and adapters, streams, rate limits, usage.

One :class:`TenantGuard` per server, used from the event loop only. The policy can be swapped at run
time (:meth:`TenantGuard.reload`); a tenant's live state (open streams, bucket levels, usage) survives a
reload, and its buckets take the new limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from bastion.errors import InvalidArgument, PermissionDenied, RateLimited
from bastion.tenancy.buckets import TokenBucket
from bastion.tenancy.policy import Assignment, TenancyPolicy, TenantPolicy

# Retry hint when a tenant is at its concurrent-stream limit (streams end at unknown times).
STREAM_RETRY_S = 1.0


@dataclass
class TenantUsage:
    tenant: str
    active_streams: int = 0
    requests: int = 0
    denied: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _TenantState:
    limits: TenantPolicy
    requests: TokenBucket
    tokens: TokenBucket
    usage: TenantUsage
    clock: Callable[[], float] = field(repr=False, default=time.monotonic)

    @classmethod
    def new(cls, name: str, limits: TenantPolicy, clock: Callable[[], float]) -> _TenantState:
        return cls(
            limits=limits,
            requests=TokenBucket(limits.requests_per_s, limits.request_burst, clock),
            tokens=TokenBucket(limits.tokens_per_min / 60.0, limits.token_burst, clock),
            usage=TenantUsage(name),
            clock=clock,
        )

    def retune(self, limits: TenantPolicy) -> None:
        if limits == self.limits:
            return
        self.limits = limits
        for bucket, rate, cap in (
            (self.requests, limits.requests_per_s, limits.request_burst),
            (self.tokens, limits.tokens_per_min / 60.0, limits.token_burst),
        ):
            level = min(bucket.level, float(cap))
            bucket.rate, bucket.capacity = rate, float(cap)
            bucket.take(max(0.0, bucket.level - level))


class Lease:
    """An admitted stream: holds a stream slot and the tokens charged for it until it ends.

    It is taken before the prompt is tokenized, with an upper-bound estimate of the prompt's tokens;
    :meth:`adjust` replaces the estimate with the real count. Tokens charged for a call that never reached
    the engine (:meth:`start` not called: refused by admission, the tokenizer or the context check) are
    given back when the lease ends; the request and the stream slot it took are not.
    """

    __slots__ = ("_state", "charged", "started")

    def __init__(self, state: _TenantState, charged: int) -> None:
        self._state = state
        self.charged = charged
        self.started = False

    def adjust(self, prompt_tokens: int, max_tokens: int) -> None:
        """Replaces the estimated charge with the real one: refunds the difference, or takes what the
        estimate missed (RateLimited when the bucket lacks it; InvalidArgument above the burst)."""
        charge = prompt_tokens + max_tokens
        bucket = self._state.tokens
        if charge <= self.charged:
            bucket.give_back(self.charged - charge)
            self.charged = charge
            return
        if charge > bucket.capacity:
            raise InvalidArgument("sampling.max_tokens", "prompt + max_tokens exceed the tenant's token burst")
        wait = bucket.take(charge - self.charged)
        if wait > 0:
            raise RateLimited(wait, detail="tenant token rate")
        self.charged = charge

    def start(self) -> None:
        """The engine is asked to generate: the charge is kept from now on (settled at the end)."""
        self.started = True

    def settle(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Records the real usage and refunds what was charged but not used."""
        self.started = True
        used = prompt_tokens + completion_tokens
        u = self._state.usage
        u.prompt_tokens += prompt_tokens
        u.completion_tokens += completion_tokens
        if used < self.charged:
            self._state.tokens.give_back(self.charged - used)
        self.charged = used


class TenantGuard:
    def __init__(self, policy: TenancyPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._policy = policy
        self._states: dict[str, _TenantState] = {}
        self.reload(policy)

    @property
    def policy(self) -> TenancyPolicy:
        return self._policy

    def reload(self, policy: TenancyPolicy) -> None:
        self._policy = policy
        for name, limits in policy.tenants.items():
            st = self._states.get(name)
            if st is None:
                self._states[name] = _TenantState.new(name, limits, self._clock)
            else:
                st.retune(limits)
        # A tenant removed from the policy keeps its counters (open streams finish) but nothing maps to it.

    def resolve(self, principal_id: str) -> Assignment:
        a = self._policy.assignment(principal_id)
        if a is None:
            raise PermissionDenied("principal is not in the tenancy policy")
        return a

    def _state(self, tenant: str) -> _TenantState:
        return self._states[tenant]

    def deny(self, tenant: str | None, *, rate_limited: bool = False) -> None:
        """Counts a refused call against the tenant (when known)."""
        st = self._states.get(tenant) if tenant else None
        if st is not None:
            st.usage.denied += 1
            st.usage.rate_limited += rate_limited

    def check_model(self, a: Assignment, model: str) -> None:
        if not a.limits.allows_model(model):
            raise PermissionDenied("model not allowed for the tenant")

    def check_adapter(self, a: Assignment, adapter: str) -> None:
        if not a.limits.allows_adapter(adapter):
            raise PermissionDenied("adapter not allowed for the tenant")

    def take_request(self, a: Assignment) -> None:
        """Charges one request (Tokenize and other cheap calls); RateLimited when the bucket is empty."""
        st = self._state(a.tenant)
        wait = st.requests.take(1)
        if wait > 0:
            raise RateLimited(wait, detail="tenant request rate")
        st.usage.requests += 1

    @contextmanager
    def stream(self, a: Assignment, prompt_tokens: int, max_tokens: int, *, estimate: bool = False) -> Iterator[Lease]:
        """Admits one generation: per-request token cap, stream slot, request and token buckets.

        ``estimate``: ``prompt_tokens`` is an upper bound taken before tokenizing; the charge is capped at
        the token burst (a prompt whose real count fits the burst must still pass) and the caller corrects
        it with :meth:`Lease.adjust` once the prompt is tokenized."""
        limits = a.limits
        if max_tokens > limits.max_tokens_per_request:
            raise InvalidArgument("sampling.max_tokens", f"at most {limits.max_tokens_per_request} for this tenant")
        st = self._state(a.tenant)
        if st.usage.active_streams >= st.limits.max_concurrent_streams:
            raise RateLimited(STREAM_RETRY_S, detail="tenant concurrent streams")
        charge = prompt_tokens + max_tokens
        if estimate:
            charge = min(charge, int(st.tokens.capacity))
        wait = st.tokens.take(charge)
        if wait > 0:
            if wait == float("inf"):
                raise InvalidArgument("sampling.max_tokens", "prompt + max_tokens exceed the tenant's token burst")
            raise RateLimited(wait, detail="tenant token rate")
        wait = st.requests.take(1)
        if wait > 0:
            st.tokens.give_back(charge)
            raise RateLimited(wait, detail="tenant request rate")
        st.usage.requests += 1
        st.usage.active_streams += 1
        lease = Lease(st, charge)
        try:
            yield lease
        finally:
            st.usage.active_streams -= 1
            if not lease.started:
                st.tokens.give_back(lease.charged)
                lease.charged = 0

    def usage(self) -> list[TenantUsage]:
        return [TenantUsage(**vars(s.usage)) for _, s in sorted(self._states.items())]
