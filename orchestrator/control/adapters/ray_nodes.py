"""Ray node operations shared by the local pool backend and `elo drain-node` (a worker pod's preStop hook): mark a
node draining in Ray's GCS, count the Serve replicas still on it, and drain one node until it hosts none."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SERVE_REPLICA_CLASS_PREFIX = "ServeReplica:"  # ActorState.class_name of every Serve replica: "ServeReplica:<app>:<dep>"


def gcs_drain(gcs_client: Any, node_id: str, message: str, deadline_s: float | None = None) -> tuple[bool, str]:
    """Ask Ray's GCS to drain ``node_id`` (the mechanism behind ``ray drain-node`` and the v2 autoscaler): its raylet
    grants no new leases, and Serve starts replacements elsewhere for the replicas on it, then stops these
    gracefully (before ``deadline_s`` from now, when given). Returns (accepted, rejection message)."""
    from ray.core.generated import autoscaler_pb2

    deadline_ms = 0 if deadline_s is None else int((time.time() + deadline_s) * 1000)  # GCS: wall-clock ms
    return gcs_client.drain_node(node_id, autoscaler_pb2.DrainNodeReason.DRAIN_NODE_REASON_PREEMPTION, message,
                                 deadline_ms)


def serve_replicas_on(address: str, node_id: str) -> int:
    """Live (not DEAD) Serve replica actors, of any application and deployment, on ``node_id``; raises what Ray's
    state API raises when it cannot tell."""
    from ray.util.state import list_actors

    actors = list_actors(address=address, filters=[("node_id", "=", node_id), ("state", "!=", "DEAD")],
                         limit=10_000, raise_on_missing_output=True)
    return sum(1 for a in actors if (a.class_name or "").startswith(SERVE_REPLICA_CLASS_PREFIX))


@dataclass(frozen=True)
class DrainOutcome:
    node_id: str
    replicas_at_start: int  # when the drain began; -1: the state API never answered
    replicas_left: int  # 0: every replica moved off (its in-flight requests finished) before the deadline; -1: unknown
    waited_s: float


def drain_node(gcs_client: Any, address: str, node_id: str, deadline_s: float, *,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
               every_s: float = 1.0, count: Callable[[str, str], int] = serve_replicas_on) -> DrainOutcome:
    """Drain ``node_id`` and wait until no Serve replica is left on it, or ``deadline_s`` passed (then the pod goes
    anyway: Kubernetes kills it at its termination grace period). The drain is asked for first: a state API that
    cannot answer yet only delays the count, never the drain."""
    start = clock()
    accepted, rejection = gcs_drain(gcs_client, node_id, "elo: the node's pod is being deleted", deadline_s)
    if not accepted:
        raise RuntimeError(f"Ray refused to drain node {node_id}: {rejection}")
    first = left = -1  # -1 until the state API answers
    while True:
        try:
            left = count(address, node_id)
            first = left if first < 0 else first
        except Exception as e:  # the state API raises plain exceptions while the cluster is busy: ask again
            log.warning("cannot list the replicas on node %s yet: %s", node_id, e)
        if left == 0 or clock() - start >= deadline_s:
            break
        sleep(min(every_s, deadline_s - (clock() - start)))  # a last look at the deadline itself
    return DrainOutcome(node_id, first, left, round(clock() - start, 2))


__all__ = ["SERVE_REPLICA_CLASS_PREFIX", "DrainOutcome", "drain_node", "gcs_drain", "serve_replicas_on"]
