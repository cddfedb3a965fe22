"""Observe: what one controller tick knows about the pools, as immutable values built by the metrics adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from deployments.contract import ConcurrencyStats, PoolAdmission, PoolStats, RoutingPlan
from orchestrator.control.capacity import RequestMix
from orchestrator.control.machine import SharedCores


@dataclass(frozen=True)
class PoolSnapshot:
    """One pool (e.g. ``cloud`` GPU/vLLM or ``edge`` CPU) at one instant."""

    name: str
    ready_replicas: int = 0
    starting_replicas: int = 0  # asked for, not ready yet (node, image, weights)
    ready_nodes: int = 0
    starting_nodes: int = 0
    running_requests: int = 0  # being decoded on the pool's replicas
    queued_requests: int = 0  # accepted for the pool, waiting for a slot
    arrival_rate_rps: float = 0.0  # requests routed to the pool per second (recent window)
    output_tokens_per_s: float = 0.0
    ttft_p95_s: float | None = None  # None: no sample in the window
    e2e_p95_s: float | None = None
    replica_startup_s: float | None = None  # measured ask → ready, node start included when one was needed
    node_startup_s: float | None = None  # measured ask → node joined; None: never measured
    by_concurrency: tuple[ConcurrencyStats, ...] = ()  # the router's service samples of the window, by concurrency
    window_s: float = 30.0  # the router's metrics window (what the rates and samples cover)
    max_concurrency_per_replica: int | None = None  # the router's slots per replica (max_ongoing_requests)
    admission: PoolAdmission | None = None  # what the router applies now (None: not reported)

    def __post_init__(self) -> None:
        for name in ("ready_replicas", "starting_replicas", "ready_nodes", "starting_nodes",
                     "running_requests", "queued_requests", "arrival_rate_rps", "output_tokens_per_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"pool {self.name!r}: {name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def of(cls, name: str, stats: PoolStats, *, ready: int, starting: int, ready_nodes: int = 0,
           starting_nodes: int = 0, replica_startup_s: float | None = None,
           node_startup_s: float | None = None) -> PoolSnapshot:
        """A pool from the router's statistics plus the replica and node counts of the actuators (the one reading
        of ``/elo/pools``, live and in the simulator)."""
        return cls(
            name=name, ready_replicas=ready, starting_replicas=starting, ready_nodes=ready_nodes,
            starting_nodes=starting_nodes, running_requests=stats.running, queued_requests=stats.queued,
            # Demand includes what the pool was asked for but refused (429s): that is load to scale for.
            arrival_rate_rps=stats.arrival_rate_rps + stats.rejected_rate_rps,
            output_tokens_per_s=stats.output_tokens_per_s, ttft_p95_s=stats.ttft_p95_s, e2e_p95_s=stats.e2e_p95_s,
            replica_startup_s=replica_startup_s, node_startup_s=node_startup_s,
            by_concurrency=tuple(stats.by_concurrency), window_s=stats.window_s,
            max_concurrency_per_replica=stats.max_ongoing_per_replica, admission=stats.admission,
        )

    @property
    def replicas(self) -> int:
        """Replicas that exist or are on their way: what a target is compared with."""
        return self.ready_replicas + self.starting_replicas

    @property
    def nodes(self) -> int:
        return self.ready_nodes + self.starting_nodes

    @property
    def ongoing_requests(self) -> int:
        """Running plus queued: Ray Serve's "ongoing requests"."""
        return self.running_requests + self.queued_requests


@dataclass(frozen=True)
class ClusterSnapshot:
    """Every pool at ``at_s``; ``metrics_age_s`` is how old the newest metrics were when it was taken."""

    at_s: float
    pools: Mapping[str, PoolSnapshot]
    metrics_age_s: float = 0.0
    mix: RequestMix = field(default_factory=RequestMix)  # sizes of the latest completed requests (all pools)
    routing: RoutingPlan | None = None  # the routing plan the router has in force (None: its configured order)
    shared: tuple[SharedCores, ...] = ()  # machines whose cores several pools' replicas share (local pools)

    def __post_init__(self) -> None:
        if self.metrics_age_s < 0:
            raise ValueError(f"metrics_age_s must be >= 0, got {self.metrics_age_s}")
        for key, pool in self.pools.items():
            if key != pool.name:
                raise ValueError(f"pools[{key!r}] holds pool {pool.name!r}")
        seen: set[str] = set()
        for m in self.shared:
            if seen & m.pools:
                raise ValueError(f"pools {sorted(seen & m.pools)} are on more than one shared machine")
            seen |= m.pools

    def machine_of(self, pool: str) -> SharedCores | None:
        """The shared machine ``pool``'s replicas run on (None: independent capacity, e.g. KubeRay nodes)."""
        return next((m for m in self.shared if pool in m.pools), None)

    @classmethod
    def of(cls, at_s: float, *pools: PoolSnapshot, metrics_age_s: float = 0.0,
           mix: RequestMix | None = None, routing: RoutingPlan | None = None,
           shared: tuple[SharedCores, ...] = ()) -> ClusterSnapshot:
        return cls(at_s, {p.name: p for p in pools}, metrics_age_s, mix or RequestMix(), routing, shared)

    def age_s(self, now: float) -> float:
        """Age of the metrics at decision time ``now``: their age when observed plus the snapshot's own age."""
        return self.metrics_age_s + max(0.0, now - self.at_s)
