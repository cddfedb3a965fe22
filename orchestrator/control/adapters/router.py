"""Observe: builds a ClusterSnapshot from the router's pool statistics, the replica scaler and the pool backend."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import httpx

from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


class RouterClient:
    """HTTP client of the router's control endpoints (`/elo/pools`, `/elo/routing`)."""

    def __init__(self, base_url: str, client: httpx.Client | None = None, timeout_s: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.client = client or httpx.Client(timeout=timeout_s)

    def pools(self) -> dict[str, dict[str, Any]]:
        r = self.client.get(f"{self.base_url}/elo/pools")
        r.raise_for_status()
        return r.json()

    def set_preference(self, preferred_pool_by_class: Mapping[str, str]) -> None:
        r = self.client.put(f"{self.base_url}/elo/routing",
                            json={"preferred_pool_by_class": dict(preferred_pool_by_class)})
        r.raise_for_status()


class _Node(Protocol):
    state: str


class _Backend(Protocol):
    def list_nodes(self, pool: str) -> Sequence[_Node]: ...
    def measured_startup_s(self, pool: str) -> float | None: ...


class _Scaler(Protocol):
    def get_replicas(self, pool: str) -> tuple[int, int]: ...


class ObservedMetrics:
    """The controller's MetricsSource: router load windows + replica states + node states, per pool."""

    def __init__(self, router: RouterClient, scaler: _Scaler, backend: _Backend, pools: Sequence[str],
                 clock: Callable[[], float]):
        self.router, self.scaler, self.backend, self.pool_names = router, scaler, backend, list(pools)
        self.clock = clock

    def snapshot(self, now: float) -> ClusterSnapshot:
        stats = self.router.pools()
        observed_at = self.clock()
        pools = []
        for name in self.pool_names:
            if name not in stats:
                continue  # a missing pool makes the guardrails hold
            s = stats[name]
            ready, starting = self.scaler.get_replicas(name)
            nodes = self.backend.list_nodes(name)
            pools.append(PoolSnapshot(
                name=name,
                ready_replicas=ready,
                starting_replicas=starting,
                ready_nodes=sum(1 for n in nodes if n.state == "ready"),
                starting_nodes=sum(1 for n in nodes if n.state == "starting"),
                running_requests=int(s.get("running", 0)),
                queued_requests=int(s.get("queued", 0)),
                # Demand includes what the pool was asked for but refused (429s): that is load to scale for.
                arrival_rate_rps=float(s.get("arrival_rate_rps", 0.0)) + float(s.get("rejected_rate_rps", 0.0)),
                output_tokens_per_s=float(s.get("output_tokens_per_s", 0.0)),
                ttft_p95_s=s.get("ttft_p95_s"),
                e2e_p95_s=s.get("e2e_p95_s"),
                # Optional on a scaler: ask -> ready of its replicas (the forecast horizon of cost_aware).
                replica_startup_s=getattr(self.scaler, "measured_startup_s", lambda _: None)(name),
                node_startup_s=self.backend.measured_startup_s(name),
            ))
        return ClusterSnapshot(now, {p.name: p for p in pools}, metrics_age_s=max(0.0, now - observed_at))
