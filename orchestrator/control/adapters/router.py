"""Observe: builds a ClusterSnapshot from the router's pool statistics, the replica scaler and the pool backend."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import httpx
from pydantic import ValidationError

from deployments.contract import RouterStats, RoutingPlan
from orchestrator.control.capacity import RequestMix
from orchestrator.control.errors import PermanentError, TransientError
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


class RouterClient:
    """HTTP client of the router's control endpoints (`/elo/pools`, `/elo/routing`), in the contract's models."""

    def __init__(self, base_url: str, client: httpx.Client | None = None, timeout_s: float = 5.0,
                 admin_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)

    def stats(self) -> RouterStats:
        r = self._request("GET", "/elo/pools")
        try:
            return RouterStats.model_validate_json(r.content)
        except ValidationError as e:
            raise PermanentError(f"the router's /elo/pools does not match the contract: {e}") from e

    def set_routing(self, plan: RoutingPlan) -> None:
        self._request("PUT", "/elo/routing", content=plan.model_dump_json(),
                      headers={"Content-Type": "application/json"})

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            r = self.client.request(method, f"{self.base_url}{path}", **kwargs)
        except httpx.TransportError as e:
            raise TransientError(f"router {self.base_url}{path} unreachable: {e!r}") from e
        if r.status_code >= 500 or r.status_code == 429:
            raise TransientError(f"router {path}: HTTP {r.status_code}: {r.text[:300]}",
                                 _retry_after_s(r, 1.0))
        if r.status_code >= 400:
            raise PermanentError(f"router {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r


def _retry_after_s(r: httpx.Response, default: float) -> float:
    try:
        return max(0.0, float(r.headers.get("retry-after", default)))
    except ValueError:
        return default


class _Node(Protocol):
    state: str


class _Backend(Protocol):
    def list_nodes(self, pool: str) -> Sequence[_Node]: ...
    def measured_startup_s(self, pool: str) -> float | None: ...


class _Scaler(Protocol):
    def get_replicas(self, pool: str) -> tuple[int, int]: ...


class _Stats(Protocol):
    def stats(self) -> RouterStats: ...


def cluster_snapshot(now: float, stats: RouterStats, pools: Sequence[str], scaler: _Scaler, backend: _Backend,
                     metrics_age_s: float = 0.0) -> ClusterSnapshot:
    """The one reading of the router's statistics into a snapshot (live and simulated): per pool the router's
    load plus the scaler's replica counts and the backend's nodes; a pool the router does not report is left out
    (the guardrails hold)."""
    out = []
    for name in pools:
        s = stats.pools.get(name)
        if s is None:
            continue
        ready, starting = scaler.get_replicas(name)
        nodes = backend.list_nodes(name)
        out.append(PoolSnapshot.of(
            name, s, ready=ready, starting=starting,
            ready_nodes=sum(1 for n in nodes if n.state == "ready"),
            starting_nodes=sum(1 for n in nodes if n.state == "starting"),
            # Optional on a scaler: ask -> ready of its replicas (the forecast horizon of cost_aware).
            replica_startup_s=getattr(scaler, "measured_startup_s", lambda _: None)(name),
            node_startup_s=backend.measured_startup_s(name),
        ))
    # Optional on a backend: the machines whose cores its pools' replicas share (local nodes on one machine).
    shared = tuple(getattr(backend, "shared_cores", tuple)())
    return ClusterSnapshot(now, {p.name: p for p in out}, metrics_age_s=metrics_age_s,
                           mix=RequestMix.of(stats.recent_requests), routing=stats.plan, shared=shared)


class ObservedMetrics:
    """The controller's MetricsSource: router load windows + replica states + node states, per pool."""

    def __init__(self, router: _Stats, scaler: _Scaler, backend: _Backend, pools: Sequence[str],
                 clock: Callable[[], float], wall_clock: Callable[[], float] = time.time):
        self.router, self.scaler, self.backend, self.pool_names = router, scaler, backend, list(pools)
        self.clock, self.wall_clock = clock, wall_clock

    def snapshot(self, now: float) -> ClusterSnapshot:
        stats = self.router.stats()
        # How old the router's figures are (its wall clock when it produced them); the stale-metrics guardrail
        # holds the fleet when they are too old.
        age = max(0.0, self.wall_clock() - stats.generated_at_unix_s) if stats.generated_at_unix_s else 0.0
        return cluster_snapshot(now, stats, self.pool_names, self.scaler, self.backend, metrics_age_s=age)
