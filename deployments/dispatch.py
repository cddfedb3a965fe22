"""Sends a routed request to one replica of a pool: the routing decision, the cold-start wait, the least busy
replica, in-flight accounting per pool and replica, and one retry elsewhere when a replica fails before answering.

Transport-neutral: ``send(url, path, body)`` opens an upstream response (the router's HTTP client; a fake in
tests). Every opened request is released exactly once, whatever ends it (completion, error, client disconnect,
cancellation), so no in-flight count leaks.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from deployments.config import AppConfig
from deployments.contract import RoutingPlan, fill_order, with_plan
from deployments.protocol import APIError
from deployments.routing import Outcome, PoolView, RequestFeatures, RouteDecision, route

log = logging.getLogger("ray.serve")


class Upstream(Protocol):
    """A replica's answer as it arrives: status and headers first, then the body."""

    status: int
    headers: Mapping[str, str]

    def body(self) -> AsyncIterator[bytes]: ...
    async def aclose(self) -> None: ...


Send = Callable[[str, str, bytes], Awaitable[Upstream]]


class ReplicaFailed(Exception):
    """A replica could not take the request (connection refused or reset, 5xx, timeout before answering)."""


@dataclass
class Replica:
    replica_id: str
    url: str
    in_flight: int = 0
    failed_until: float = 0.0  # not chosen before this (loop time) after it failed


@dataclass
class PoolState:
    replicas: dict[str, Replica] = field(default_factory=dict)
    in_flight: int = 0
    waiting: int = 0
    starting: int = 0
    last_routed: float = -math.inf


@dataclass
class Opened:
    """A request a replica answered: where it went and at what concurrency, and the upstream response."""

    pool: str
    replica: Replica
    upstream: Upstream
    concurrency: int  # requests on that replica when this one was sent, itself included
    sent_at: float


class Dispatcher:
    """Owns the pools' replicas and in-flight counts as this router replica sees them."""

    def __init__(self, config: AppConfig, send: Send, clock: Callable[[], float] | None = None,
                 on_retry: Callable[[str], None] = lambda failed_pool: None, failure_backoff_s: float = 5.0):
        self.config = config
        self.send = send
        self.clock = clock or (lambda: asyncio.get_running_loop().time())
        self.on_retry = on_retry
        self.failure_backoff_s = failure_backoff_s
        self.pools = {name: PoolState() for name in config.pools}
        self.plan: RoutingPlan | None = None
        self._features: dict[str, frozenset[str] | None] = {}  # API features each pool's engine honours
        self._room: asyncio.Event | None = None

    # --- the pools ---------------------------------------------------------------------------------------------

    def set_replicas(self, pool: str, endpoints: Mapping[str, str]) -> None:
        """The running replicas of ``pool`` (id -> URL); replicas that left keep their in-flight requests."""
        p = self.pools[pool]
        for rid in list(p.replicas):
            if rid not in endpoints and p.replicas[rid].in_flight == 0:
                del p.replicas[rid]
            elif rid not in endpoints:
                p.replicas[rid].failed_until = math.inf  # draining: serves what it has, takes nothing new
        for rid, url in endpoints.items():
            r = p.replicas.get(rid)
            if r is None or r.url != url:
                p.replicas[rid] = Replica(rid, url, r.in_flight if r else 0)
            elif r.failed_until == math.inf:
                r.failed_until = 0.0
        self._wake()

    def set_plan(self, plan: RoutingPlan | None) -> None:
        self.plan = plan
        for name, p in self.pools.items():
            p.starting = plan.starting.get(name, 0) if plan is not None else 0
        self._wake()

    def ready(self, pool: str) -> list[Replica]:
        now = self.clock()
        return [r for r in self.pools[pool].replicas.values() if r.failed_until <= now]

    def views(self) -> dict[str, PoolView]:
        probe = self.config.router.probe_every_s
        now = self.clock()
        out = {}
        for name, cfg in self.config.pools.items():
            p = self.pools[name]
            out[name] = PoolView(name, len(self.ready(name)), p.in_flight, cfg.max_ongoing_requests,
                                 cfg.max_queued_requests, cfg.eligibility, p.starting, p.waiting,
                                 self.config.router.max_waiting_at_zero, features=self._features.get(name),
                                 probe_due=probe is not None and now - p.last_routed >= probe)
        return with_plan(out, self.plan)

    def set_features(self, features: Mapping[str, frozenset[str] | None]) -> None:
        self._features = dict(features)

    # --- a request ---------------------------------------------------------------------------------------------

    def decide(self, features: RequestFeatures, waited_s: float = 0.0,
               prefer: str | None = None) -> tuple[RouteDecision, list[str]]:
        """The routing decision and the fill order it used; ``prefer`` goes first in that order."""
        order = fill_order(self.plan, self.config).for_class(features.slo_class)
        if prefer in order:
            order = [prefer] + [n for n in order if n != prefer]
        return route(features, self.views(), order, waited_s=waited_s,
                     max_wait_s=self.config.router.cold_start_wait_s), order

    async def open(self, features: RequestFeatures, path: str, body: bytes, prefer: str | None = None) -> Opened:
        """Route the request and send it; a replica that fails before answering (or answers 5xx) is retried
        once, on another pool when one can take the request, else on another replica. 4xx answers are the
        client's (deterministic bad input): returned, never retried. ``prefer`` puts a pool first in the fill
        order (a stream's continuation: the same engine when it has room). The caller must :meth:`release` it."""
        failed: set[str] = set()
        last: Exception | None = None
        for attempt in (1, 2):
            pool = await self._place(features, avoid=failed, prefer=prefer)
            replica = self._least_busy(pool)
            if replica is None:  # raced with a replica leaving: no retry budget spent
                replica = self._least_busy(pool, any_state=True)
                if replica is None:
                    raise _refusal(Outcome.UNAVAILABLE, f"no ready replica in {pool}", self.config.router.retry_after_s)
            self._acquire(pool, replica)
            sent_at = self.clock()
            try:
                upstream = await self.send(replica.url, path, body)
                if upstream.status >= 500:
                    detail = await _read_some(upstream)
                    raise ReplicaFailed(f"HTTP {upstream.status}: {detail}")
            except ReplicaFailed as e:
                self._fail(pool, replica, e, attempt)
                failed.add(pool)
                last = e
                continue
            except BaseException:
                self.release(pool, replica)
                raise
            return Opened(pool, replica, upstream, replica.in_flight, sent_at)
        raise APIError(503, f"The replicas failed to answer: {last}", type="server_error", code="replica_failed",
                       headers=retry_after(self.config.router.retry_after_s))

    def release(self, pool: str, replica: Replica) -> None:
        p = self.pools[pool]
        p.in_flight -= 1
        replica.in_flight -= 1
        if replica.failed_until == math.inf and replica.in_flight == 0:
            p.replicas.pop(replica.replica_id, None)  # a draining replica that finished its last request
        self._wake()

    def failed(self, pool: str, replica: Replica, e: Exception) -> None:
        """A replica failed a request it had begun to answer: release the request and keep the replica out of
        placement for the failure backoff."""
        self._back_off(pool, replica)
        log.warning("replica %s of pool %s failed mid-answer: %s", replica.replica_id, pool, e)

    def _back_off(self, pool: str, replica: Replica) -> None:
        self.release(pool, replica)
        if replica.failed_until != math.inf:
            replica.failed_until = self.clock() + self.failure_backoff_s

    def _acquire(self, pool: str, replica: Replica) -> None:
        p = self.pools[pool]
        p.in_flight += 1
        replica.in_flight += 1
        p.last_routed = self.clock()

    def _fail(self, pool: str, replica: Replica, e: Exception, attempt: int) -> None:
        self._back_off(pool, replica)
        log.warning("replica %s of pool %s failed before answering (attempt %d): %s", replica.replica_id, pool,
                    attempt, e)
        self.on_retry(pool)

    def _least_busy(self, pool: str, any_state: bool = False) -> Replica | None:
        candidates = list(self.pools[pool].replicas.values()) if any_state else self.ready(pool)
        candidates = [r for r in candidates if r.failed_until != math.inf]
        return min(candidates, key=lambda r: r.in_flight, default=None)

    async def _place(self, features: RequestFeatures, avoid: set[str], prefer: str | None = None) -> str:
        """The pool the request goes to; while the routing policy says WAIT, hold it (up to
        ``cold_start_wait_s``) and ask again each time room may have appeared. A pool that just failed the
        request is tried last."""
        started = self.clock()
        while True:
            decision, order = self.decide(features, waited_s=self.clock() - started, prefer=prefer)
            if avoid and decision.pool in avoid:
                retry = self._other_pool(features, decision.pool, order)
                if retry is not None:
                    return retry
            if decision.outcome is Outcome.ROUTE:
                assert decision.pool is not None
                return decision.pool
            if decision.outcome is not Outcome.WAIT:
                raise _refusal(decision.outcome, decision.reason, self.config.router.retry_after_s, decision.param)
            assert decision.pool is not None
            remaining = self.config.router.cold_start_wait_s - (self.clock() - started)
            await self._wait_for_room(decision.pool, remaining)

    def _other_pool(self, features: RequestFeatures, failed: str, order: list[str]) -> str | None:
        """Another pool that can take the request now (for the retry), if any."""
        views = self.views()
        for name in order:
            v = views.get(name)
            if name != failed and v is not None and v.accepts(features) and v.ready_replicas > 0 \
                    and v.accepting and v.in_flight < v.queue_limit:
                return name
        return None

    def _wake(self) -> None:
        if self._room is not None:
            self._room.set()
            self._room = None

    async def _wait_for_room(self, pool: str, timeout_s: float) -> None:
        """Hold one request for ``pool`` until readiness or in-flight counts change (or ``timeout_s``)."""
        if self._room is None:
            self._room = asyncio.Event()
        room = self._room
        self.pools[pool].waiting += 1
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await room.wait()
        except TimeoutError:
            pass
        finally:
            self.pools[pool].waiting -= 1


async def _read_some(upstream: Upstream, limit: int = 500) -> str:
    data = b""
    try:
        async for chunk in upstream.body():
            data += chunk
            if len(data) >= limit:
                break
    finally:
        await upstream.aclose()
    return data[:limit].decode(errors="replace")


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def _refusal(outcome: Outcome, reason: str, retry_after_s: int, param: str | None = None) -> APIError:
    """The client-facing error for a request the routing policy could not place."""
    if outcome is Outcome.BUSY:
        return APIError(429, f"All pools are at capacity ({reason}). Retry later.", type="rate_limit_error",
                        code="pools_saturated", headers=retry_after(retry_after_s))
    if outcome is Outcome.UNAVAILABLE:
        return APIError(503, f"No replica is ready ({reason}). Retry later.", type="server_error",
                        code="no_ready_replica", headers=retry_after(retry_after_s))
    return APIError(400, f"No pool can serve this request: {reason}.", param=param, code="no_eligible_pool")
