"""Baseline policy: Ray Serve's queue-length rule per pool, replicas = ceil(ongoing / target per replica)."""

from __future__ import annotations

from orchestrator.control.config import PolicyFile, StrictModel
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import PolicyState, replicas_for
from orchestrator.control.snapshot import ClusterSnapshot


class QueueTargetKnobs(StrictModel):
    """queue_target has no knobs; the per-pool target_ongoing_requests_per_replica is its only setting."""


class QueueTarget:
    """Each pool sized on its own load only: no cost model, no forecast, no routing preference."""

    Knobs = QueueTargetKnobs

    def __init__(self, config: PolicyFile) -> None:
        self.config = config
        QueueTargetKnobs.model_validate(config.policy.knobs)

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        targets: dict[str, PoolTarget] = {}
        parts = []
        for name, pc in self.config.pools.items():
            pool = snapshot.pools.get(name)
            if pool is None:
                continue  # not observed: leave as is (the guardrails hold the whole plan anyway)
            per_replica = pc.target_ongoing_requests_per_replica
            want = replicas_for(pool.ongoing_requests, per_replica)
            targets[name] = PoolTarget.for_replicas(want, pc.replicas_per_node)
            parts.append(f"{name} {pool.ongoing_requests} ongoing / {per_replica:g} per replica -> {want}")
        return ScalePlan(targets, "queue_target: " + "; ".join(parts)), state
