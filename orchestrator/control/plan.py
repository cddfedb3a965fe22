"""Decide → act: the typed, immutable plan a policy hands to the actuators, with the reason it was made."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from deployments.contract import RoutingPlan
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


@dataclass(frozen=True)
class PoolTarget:
    """Wanted size of one pool: replicas (Serve) and nodes (Ray workers / KubeRay worker group)."""

    replicas: int
    nodes: int

    def __post_init__(self) -> None:
        if self.replicas < 0 or self.nodes < 0:
            raise ValueError(f"a pool target cannot be negative: {self}")

    @classmethod
    def current(cls, pool: PoolSnapshot) -> PoolTarget:
        """The size the pool has or is already heading to (ready + starting)."""
        return cls(pool.replicas, pool.nodes)

    @classmethod
    def for_replicas(cls, replicas: int, replicas_per_node: int) -> PoolTarget:
        """``replicas`` and the nodes they need: ceil(replicas / replicas_per_node)."""
        return cls(replicas, -(-replicas // replicas_per_node))


@dataclass(frozen=True)
class PoolChange:
    """One pool whose target differs from what the snapshot shows; ``current`` is None if the pool was not seen."""

    pool: str
    current: PoolTarget | None
    target: PoolTarget

    @property
    def delta_replicas(self) -> int:
        return self.target.replicas - (self.current.replicas if self.current else 0)


@dataclass(frozen=True)
class ScalePlan:
    """Per-pool targets, replicas to drain first, the routing plan for the router, and why.

    A pool absent from ``targets`` is left as it is. ``routing`` None means "keep the router's current plan".
    ``details`` holds the decision's figures per pool (demand, capacity, need), JSON values only, for the decision
    log and ``elo status``. ``refused`` says, per pool, why growth the policy wanted was not asked for (e.g. no
capacity to gain on shared cores); a hold with a new refusal is logged. "No change" is :meth:`hold`, never ``None``.
    """

    targets: Mapping[str, PoolTarget]
    reason: str
    drain: tuple[str, ...] = ()
    routing: RoutingPlan | None = None
    details: Mapping[str, object] | None = None
    refused: Mapping[str, str] | None = None  # pool -> why replicas the policy wanted were not asked for
    # Pools whose replicas above the target were never needed since the controller started (the deployment's
    # initial ones): the downscale delay guards against letting go of capacity just needed, so it does not hold them.
    release_now: tuple[str, ...] = ()

    @classmethod
    def hold(cls, snapshot: ClusterSnapshot, reason: str, routing: RoutingPlan | None = None) -> ScalePlan:
        """Keep every pool at its current size."""
        targets = {name: PoolTarget.current(pool) for name, pool in snapshot.pools.items()}
        return cls(targets, reason, routing=routing)

    def changes(self, snapshot: ClusterSnapshot) -> tuple[PoolChange, ...]:
        """Pools whose target differs from their current size, in target order."""
        out = []
        for name, target in self.targets.items():
            pool = snapshot.pools.get(name)
            current = PoolTarget.current(pool) if pool is not None else None
            if current != target:
                out.append(PoolChange(name, current, target))
        return tuple(out)

    def is_hold(self, snapshot: ClusterSnapshot) -> bool:
        """True if acting on this plan changes no pool size and drains nothing."""
        return not self.drain and not self.changes(snapshot)
