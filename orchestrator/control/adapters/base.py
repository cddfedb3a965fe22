"""Act: the plug-in points of the actuator (one small Protocol each) and the drain rule every pool backend shares.

A :class:`PoolBackend` owns the machines of a pool (local Ray nodes, a KubeRay worker group, a simulated pool);
a :class:`ReplicaScaler` owns the replica count of the pool's Serve deployment. Both are idempotent and move
toward a target: calling them again with the same target is a no-op, and a call that cannot finish now
(nodes still hosting replicas) makes progress and leaves the rest to the next call. They raise only
:mod:`orchestrator.control.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

NodeState = Literal["starting", "ready", "draining"]
NODE_STATES: tuple[NodeState, ...] = ("starting", "ready", "draining")


@dataclass(frozen=True)
class NodeInfo:
    """One node of a pool as its backend sees it; times are the backend's clock (seconds)."""

    node_id: str
    pool: str
    state: NodeState
    started_at_s: float  # when the backend asked for the node
    ready_at_s: float | None = None  # when it joined the cluster; None while starting

    def __post_init__(self) -> None:
        if self.state not in NODE_STATES:
            raise ValueError(f"node {self.node_id}: state must be one of {NODE_STATES}, got {self.state!r}")
        if self.ready_at_s is not None and self.ready_at_s < self.started_at_s:
            raise ValueError(f"node {self.node_id}: ready_at_s {self.ready_at_s} < started_at_s {self.started_at_s}")


@runtime_checkable
class PoolBackend(Protocol):
    """The machines of each pool."""

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        """Nodes of ``pool`` that exist or are on their way (starting, ready or draining)."""
        ...

    def resize(self, pool: str, nodes: int) -> None:
        """Move ``pool`` toward ``nodes`` nodes (draining ones included in the count). Idempotent.

        Scale-up starts nodes (un-draining draining ones first). Scale-down follows :func:`choose_scale_down`:
        it removes only nodes that host no replica of any deployment and marks the others draining, to be
        re-checked on the next call; a node still hosting a replica is never removed.
        """
        ...

    def measured_startup_s(self, pool: str) -> float | None:
        """Measured ask → node joined, in seconds (recent average); None until a node was started."""
        ...


@runtime_checkable
class ReplicaScaler(Protocol):
    """The replica count of each pool's Serve deployment."""

    def set_replicas(self, pool: str, replicas: int) -> None:
        """Set the pool deployment's target replica count. Idempotent: the same target twice changes nothing."""
        ...

    def get_replicas(self, pool: str) -> tuple[int, int]:
        """``(ready, starting)``: replicas serving, and replicas asked for that are not ready yet."""
        ...


@dataclass(frozen=True)
class ScaleDown:
    """What one scale-down call does: remove the idle chosen nodes, drain the busy ones (re-checked next call)."""

    remove: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()


def choose_scale_down(nodes: Sequence[NodeInfo], target_nodes: int, replicas_on: Mapping[str, int]) -> ScaleDown:
    """The drain rule: which of ``nodes`` go when the pool should have ``target_nodes``.

    ``replicas_on[node_id]`` counts live replicas (of any deployment) on a node; a missing key means none.
    The ``len(nodes) - target_nodes`` nodes that go are those with the fewest replicas, so idle nodes go
    before busy ones; ties prefer nodes already draining (a decision is not flip-flopped), then starting nodes
    (they serve nothing yet), then the newest. Chosen nodes hosting no replica are removed; the others are
    drained and come back chosen-and-idle on a later call once their replicas are gone. Nodes not chosen
    are not draining any more. Pure: the caller re-checks right before removing.
    """
    if target_nodes < 0:
        raise ValueError(f"target_nodes must be >= 0, got {target_nodes}")
    excess = len(nodes) - target_nodes
    if excess <= 0:
        return ScaleDown()
    state_rank = {"draining": 0, "starting": 1, "ready": 2}
    ordered = sorted(nodes, key=lambda n: (replicas_on.get(n.node_id, 0), state_rank[n.state], -n.started_at_s,
                                           n.node_id))
    chosen = ordered[:excess]
    return ScaleDown(
        remove=tuple(n.node_id for n in chosen if replicas_on.get(n.node_id, 0) == 0),
        drain=tuple(n.node_id for n in chosen if replicas_on.get(n.node_id, 0) > 0),
    )


__all__ = [
    "NODE_STATES",
    "NodeInfo",
    "NodeState",
    "PoolBackend",
    "ReplicaScaler",
    "ScaleDown",
    "choose_scale_down",
]
