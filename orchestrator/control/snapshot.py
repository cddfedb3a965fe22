"""Observe: what one controller tick knows about the pools, as immutable values built by the metrics adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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

    def __post_init__(self) -> None:
        for field in ("ready_replicas", "starting_replicas", "ready_nodes", "starting_nodes",
                      "running_requests", "queued_requests", "arrival_rate_rps", "output_tokens_per_s"):
            if getattr(self, field) < 0:
                raise ValueError(f"pool {self.name!r}: {field} must be >= 0, got {getattr(self, field)}")

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

    def __post_init__(self) -> None:
        if self.metrics_age_s < 0:
            raise ValueError(f"metrics_age_s must be >= 0, got {self.metrics_age_s}")
        for key, pool in self.pools.items():
            if key != pool.name:
                raise ValueError(f"pools[{key!r}] holds pool {pool.name!r}")

    @classmethod
    def of(cls, at_s: float, *pools: PoolSnapshot, metrics_age_s: float = 0.0) -> ClusterSnapshot:
        return cls(at_s, {p.name: p for p in pools}, metrics_age_s)

    def age_s(self, now: float) -> float:
        """Age of the metrics at decision time ``now``: their age when observed plus the snapshot's own age."""
        return self.metrics_age_s + max(0.0, now - self.at_s)
