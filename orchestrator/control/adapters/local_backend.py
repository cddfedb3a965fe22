"""Act: the embedded default pool backend — each pool is a set of extra Ray nodes on this machine.

Nodes are started with ``ray.cluster_utils.Cluster.add_node`` and tagged with the custom resource
``pool-<pool>`` (``replicas_per_node`` units), so replicas that request ``{"resources": {"pool-<pool>": 1}}``
in their ``ray_actor_options`` land only on that pool's nodes.

Drain rule (scale-down): :func:`~orchestrator.control.adapters.base.choose_scale_down` picks the nodes that
go, fewest live Serve replicas first. A chosen node hosting a replica (any deployment's, seen with the state
API) is only marked draining and re-checked on the next call. A chosen idle node is *fenced* first — Ray's
``drain_node`` (the mechanism behind ``ray drain-node`` and the v2 autoscaler) makes its raylet refuse new
leases, so no replica can land on it between the check and the removal — then checked again, and removed
only if still idle. A fenced node that turned out busy stays draining until it is empty (Serve migrates
replicas off draining nodes).

Calls block while a node starts (about 2 s per node here): ``resize`` returns when the asked-for nodes have
joined. Call it from the thread that created the ``Cluster``: with ``shutdown_at_exit=True`` (the default),
Ray installs a SIGTERM handler per node, which Python allows only in the main thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.control.adapters.base import NodeInfo, choose_scale_down
from orchestrator.control.adapters.ray_nodes import SERVE_REPLICA_CLASS_PREFIX, gcs_drain, serve_replicas_on
from orchestrator.control.errors import (
    CapacityUnavailableError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from orchestrator.control.machine import SharedCores

if TYPE_CHECKING:
    from ray.cluster_utils import Cluster

log = logging.getLogger(__name__)

HEAD_RESOURCE = "elo-head"  # tags the head node: the router asks for a sliver of it, so it never sits on a pool node


def pool_resource(pool: str) -> str:
    """The custom resource that tags a pool's nodes; replicas of the pool request 1 unit of it."""
    return f"pool-{pool}"


@dataclass(frozen=True)
class LocalPoolSpec:
    """Shape of one pool's local nodes. ``max_nodes`` caps the pool (None: no cap beyond the machine)."""

    replicas_per_node: int = 1
    num_cpus: int = 1
    memory_bytes: int | None = None  # Ray's "memory" resource of the node; None: Ray's default
    object_store_memory_bytes: int | None = None  # None: the Cluster default (150 MiB)
    max_nodes: int | None = None

    def __post_init__(self) -> None:
        if self.replicas_per_node < 1:
            raise ValueError(f"replicas_per_node must be >= 1, got {self.replicas_per_node}")
        if self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.max_nodes is not None and self.max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {self.max_nodes}")

    def node_args(self, pool: str) -> dict[str, Any]:
        args: dict[str, Any] = {"num_cpus": self.num_cpus, "resources": {pool_resource(pool): self.replicas_per_node}}
        if self.memory_bytes is not None:
            args["memory"] = self.memory_bytes
        if self.object_store_memory_bytes is not None:
            args["object_store_memory"] = self.object_store_memory_bytes
        return args


@dataclass
class _LocalNode:
    handle: Any  # ray._private.node.Node, as returned by Cluster.add_node
    node_id: str
    pool: str
    started_at_s: float
    ready_at_s: float | None
    draining: bool = False
    fenced: bool = False  # drained in Ray: takes no new work and cannot be un-drained; removed once idle

    def info(self) -> NodeInfo:
        state = "draining" if self.draining or self.fenced else ("ready" if self.ready_at_s is not None else "starting")
        return NodeInfo(self.node_id, self.pool, state, self.started_at_s, self.ready_at_s)


class LocalPoolBackend:
    """:class:`~orchestrator.control.adapters.base.PoolBackend` adding and removing Ray nodes of a local ``Cluster``.

    ``cluster`` is an existing ``ray.cluster_utils.Cluster`` with its head node (the driver connects to it
    with ``ray.init(address=cluster.address)``; the head needs the dashboard, which the state API uses).
    Worker nodes already in the cluster that carry a pool's resource are adopted. ``clock`` stamps
    ``started_at_s``/``ready_at_s`` and measures node startup.
    """

    def __init__(self, cluster: Cluster, pools: Mapping[str, LocalPoolSpec],
                 clock: Callable[[], float] = time.monotonic, *, join_timeout_s: float = 60.0,
                 fence: bool = True, machine: SharedCores | None = None) -> None:
        if cluster.head_node is None:
            raise PermanentError("LocalPoolBackend needs a Cluster with a head node")
        self._cluster = cluster
        self.pools = dict(pools)
        self.machine = machine  # the cores the pools' replicas share (they all run on this machine)
        self._clock = clock
        self._join_timeout_s = join_timeout_s
        self._fence_enabled = fence
        self._gcs_client: Any = None
        self._lock = threading.RLock()
        self._nodes: dict[str, dict[str, _LocalNode]] = {pool: {} for pool in self.pools}
        self._startups: dict[str, deque[float]] = {pool: deque(maxlen=5) for pool in self.pools}
        self._adopt(cluster.worker_nodes)

    # -- PoolBackend ---------------------------------------------------------------------------------------

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        with self._lock:
            members = self._members(pool)
            alive = self._alive_node_ids()
            # A node that joined and is no longer alive died under us: not listed; resize() reaps it.
            return [n.info() for n in members.values() if n.ready_at_s is None or n.node_id in alive]

    def resize(self, pool: str, nodes: int) -> None:
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        with self._lock:
            members = self._members(pool)
            self._reap_dead(pool)
            for node in [n for n in members.values() if n.fenced]:
                self._remove_if_idle(node)  # fenced nodes go as soon as they are empty, whatever the target
            movable = [n for n in members.values() if not n.fenced]
            excess = len(movable) - nodes
            replicas_on = self.replicas_on([n.node_id for n in movable]) if excess > 0 else {}
            choice = choose_scale_down([n.info() for n in movable], nodes, replicas_on)
            for node in movable:
                node.draining = node.node_id in choice.drain
            if choice.drain:
                log.info("pool %s: draining %s (still hosting replicas)", pool, ", ".join(choice.drain))
            for node_id in choice.remove:
                self._remove_if_idle(members[node_id], checked=True)
            self._add(pool, nodes - len(movable))

    def shared_cores(self) -> tuple[SharedCores, ...]:
        """The machine every local pool's nodes run on: one core budget for all of them."""
        return (self.machine,) if self.machine is not None else ()

    def measured_startup_s(self, pool: str) -> float | None:
        with self._lock:
            self._members(pool)
            samples = self._startups[pool]
            return sum(samples) / len(samples) if samples else None

    # -- inspection ----------------------------------------------------------------------------------------

    @property
    def fencing(self) -> bool:
        """Whether idle nodes are drained in Ray before removal (False if off, or Ray's drain API is missing)."""
        return self._fence_enabled

    def replicas_on(self, node_ids: Iterable[str]) -> dict[str, int]:
        """Live (not DEAD) Serve replica actors, of any application and deployment, on each node."""
        counts: dict[str, int] = {}
        for node_id in node_ids:
            try:
                counts[node_id] = serve_replicas_on(self._cluster.address, node_id)
            except Exception as e:  # the state API raises plain exceptions (RayStateApiException, HTTP errors)
                raise TransientError(f"cannot list the actors on node {node_id}, so cannot tell whether it hosts "
                                     f"replicas; not removing it ({type(e).__name__}: {e})") from e
        return counts

    # -- internals -----------------------------------------------------------------------------------------

    def _members(self, pool: str) -> dict[str, _LocalNode]:
        try:
            return self._nodes[pool]
        except KeyError:
            raise NotFoundError(f"no local pool {pool!r}; configured pools: "
                                f"{', '.join(sorted(self._nodes)) or '(none)'}") from None

    def _alive_node_ids(self) -> set[str]:
        try:
            return {n["NodeID"] for n in self._cluster.global_state.node_table() if n.get("Alive")}
        except Exception as e:
            raise TransientError(f"cannot read the Ray node table from {self._cluster.address}: {e}") from e

    def _adopt(self, handles: Iterable[Any]) -> None:
        now = self._clock()
        for handle in handles:
            resources = getattr(getattr(handle, "_ray_params", None), "resources", None) or {}
            for pool in self.pools:
                if pool_resource(pool) in resources:
                    self._nodes[pool][handle.node_id] = _LocalNode(handle, handle.node_id, pool, now, now)
                    log.info("pool %s: adopted existing node %s", pool, handle.node_id)

    def _add(self, pool: str, count: int) -> None:
        if count <= 0:
            return
        spec = self.pools[pool]
        members = self._nodes[pool]
        room = count if spec.max_nodes is None else max(0, min(count, spec.max_nodes - len(members)))
        for _ in range(room):
            self._start_node(pool, spec)
        if room < count:
            raise CapacityUnavailableError(f"local pool {pool!r} is capped at max_nodes={spec.max_nodes}; "
                                           f"{count - room} more node(s) asked for, {len(members)} there")

    def _start_node(self, pool: str, spec: LocalPoolSpec) -> None:
        started = self._clock()
        try:
            handle = self._cluster.add_node(wait=True, **spec.node_args(pool))
        except ValueError as e:
            if "signal" in str(e):
                raise PermanentError("Cluster.add_node must run in the main thread when the Cluster was made with "
                                     f"shutdown_at_exit=True (Ray installs a SIGTERM handler per node): {e}") from e
            raise CapacityUnavailableError(f"could not start a local Ray node for pool {pool!r}: {e}") from e
        except Exception as e:  # TimeoutError, process start failures, out of memory
            raise CapacityUnavailableError(f"could not start a local Ray node for pool {pool!r}: "
                                           f"{type(e).__name__}: {e}") from e
        node = _LocalNode(handle, handle.node_id, pool, started, None)
        self._nodes[pool][node.node_id] = node
        deadline = time.monotonic() + self._join_timeout_s
        while node.node_id not in self._alive_node_ids():
            if time.monotonic() > deadline:
                self._remove(node)
                raise CapacityUnavailableError(f"local node {node.node_id} of pool {pool!r} did not join within "
                                               f"{self._join_timeout_s:g} s; removed it")
            time.sleep(0.05)
        node.ready_at_s = self._clock()
        self._startups[pool].append(node.ready_at_s - started)
        log.info("pool %s: node %s joined in %.2f s", pool, node.node_id, node.ready_at_s - started)

    def _remove_if_idle(self, node: _LocalNode, *, checked: bool = False) -> bool:
        """(Check,) fence, re-check, remove. False (and the node kept, draining) if it hosts a replica.

        ``checked``: the caller has just seen the node idle, so only the check after fencing is left.
        """
        if not checked and self.replicas_on([node.node_id])[node.node_id]:
            node.draining = True
            return False
        if self._fence_enabled and not node.fenced:
            self._fence(node)
            if self.replicas_on([node.node_id])[node.node_id]:
                log.warning("pool %s: node %s got a replica while being fenced; it stays draining until empty",
                            node.pool, node.node_id)
                return False
        self._remove(node)
        log.info("pool %s: removed idle node %s", node.pool, node.node_id)
        return True

    def _fence(self, node: _LocalNode) -> None:
        """Mark the node draining in Ray: its raylet grants no new leases, so no replica can land on it."""
        try:
            from ray._raylet import GcsClient

            if self._gcs_client is None:
                self._gcs_client = GcsClient(address=self._cluster.address)
            accepted, rejection = gcs_drain(self._gcs_client, node.node_id, "elo: pool scale-down")
        except (ImportError, AttributeError, TypeError) as e:
            log.warning("Ray drain_node unavailable (%s); removing idle nodes without fencing them first", e)
            self._fence_enabled = False
            return
        except Exception as e:
            raise TransientError(f"could not mark node {node.node_id} draining in Ray; not removing it: {e}") from e
        if not accepted:
            raise TransientError(f"Ray refused to drain node {node.node_id}: {rejection}; not removing it")
        node.fenced = node.draining = True

    def _remove(self, node: _LocalNode) -> None:
        try:
            self._cluster.remove_node(node.handle)
        except Exception as e:
            raise TransientError(f"could not remove local node {node.node_id}: {type(e).__name__}: {e}") from e
        self._nodes[node.pool].pop(node.node_id, None)

    def _reap_dead(self, pool: str) -> None:
        alive = self._alive_node_ids()
        for node in [n for n in self._nodes[pool].values() if n.ready_at_s is not None and n.node_id not in alive]:
            log.warning("pool %s: node %s died; cleaning up its processes", pool, node.node_id)
            self._remove(node)


__all__ = ["SERVE_REPLICA_CLASS_PREFIX", "LocalPoolBackend", "LocalPoolSpec", "pool_resource"]
