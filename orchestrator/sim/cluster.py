"""Observe and act, simulated: the pools' nodes and replicas on a fake clock, behind the controller's protocols.

:class:`SimCluster` is at once the controller's ``MetricsSource`` (a :class:`ClusterSnapshot` with the fields
``ObservedMetrics`` fills in production, read from the router's statistics by the same code), ``Scaler``/
``ReplicaScaler`` (Serve replica counts), ``Backend``/``PoolBackend`` (nodes, drained by the shared
:func:`choose_scale_down` rule) and ``RoutingSink`` (the router's ``PUT /elo/routing``). Like the real adapters it is idempotent, moves toward a target and raises only the
project's control errors. Time passes only through the engine's events.

Lifecycle: a node asked for joins after ``node_startup_s``; a replica asked for waits for a free slot on a
ready, non-draining node (``replicas_per_node`` of the policy), then serves after ``replica_startup_s``.
Scale-down drops replicas not serving yet first (newest first), then stops ready ones with the fewest
requests: a stopping replica takes no new request, finishes its in-flight ones, then frees its node slot.
A node is removed only once no replica is left on it (the next ``resize`` call, i.e. the next tick).
Billing: a node costs ``replicas_per_node x cost_per_hour_usd`` from the moment it is asked for until removed.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from deployments.contract import RouterStats, RoutingPlan, router_stats
from deployments.routing import PoolView
from deployments.window import PoolWindow
from orchestrator.control.adapters.base import NodeInfo, choose_scale_down
from orchestrator.control.adapters.router import cluster_snapshot
from orchestrator.control.config import PolicyFile, PoolPolicy
from orchestrator.control.errors import CapacityUnavailableError, NotFoundError, PermanentError
from orchestrator.control.machine import SharedCores
from orchestrator.control.snapshot import ClusterSnapshot
from orchestrator.sim.model import PoolSim, SimConfig
from orchestrator.sim.profile import ServiceCurve

PENDING, STARTING, READY, STOPPING, GONE = range(5)  # replica states
NODE_READY, REPLICA_READY = 0, 1  # event kinds the cluster schedules (the engine owns the others)

Schedule = Callable[[float, int, object, object], None]


@dataclass(eq=False, slots=True)
class SimNode:
    node_id: str
    asked_s: float
    ready_s: float | None = None
    removed_s: float | None = None
    draining: bool = False
    hosted: int = 0  # replicas bound to it (starting, ready or stopping)

    def info(self, pool: str) -> NodeInfo:
        state = "draining" if self.draining else ("ready" if self.ready_s is not None else "starting")
        return NodeInfo(self.node_id, pool, state, self.asked_s, self.ready_s)


@dataclass(eq=False, slots=True)
class SimReplica:
    replica_id: int
    pool: SimPool
    asked_s: float
    state: int = PENDING
    node: SimNode | None = None
    running: int = 0
    prefill_free_s: float = 0.0
    pending: list[int] = field(default_factory=list)  # waves: admitted requests waiting for the next batch
    ready_s: float | None = None
    stop_s: float | None = None
    gone_s: float | None = None


@dataclass(eq=False)
class SimPool:
    """Everything about one pool: config, replicas, nodes, the router's view (in flight, queue) and its window."""

    name: str
    sim: PoolSim
    policy: PoolPolicy
    curve: ServiceCurve
    window: PoolWindow
    rng_node: random.Random
    rng_replica: random.Random
    replicas: list[SimReplica] = field(default_factory=list)  # not gone
    ready: list[SimReplica] = field(default_factory=list)  # READY (not stopping), oldest first
    nodes: list[SimNode] = field(default_factory=list)  # not removed
    all_replicas: list[SimReplica] = field(default_factory=list)
    all_nodes: list[SimNode] = field(default_factory=list)
    queue: deque[int] = field(default_factory=deque)  # routed here, waiting for a replica slot
    in_flight: int = 0  # routed here and not finished (the router's count)
    waiting: int = 0  # held for this pool until it has room (Outcome.WAIT)
    last_routed_s: float = 0.0  # when the router last sent it a request (probes)
    startups: deque[float] = field(default_factory=lambda: deque(maxlen=5))  # node ask -> joined
    replica_startups: deque[float] = field(default_factory=lambda: deque(maxlen=5))  # replica ask -> ready
    scale_ups: int = 0
    scale_downs: int = 0
    machine: SharedCores | None = None  # the cores it shares with other pools (None: independent capacity)
    waves: bool = False  # its engine batches in waves (transformers, `deployments.cpu_engine`), not continuously

    @property
    def slots(self) -> int:
        return len(self.ready) * self.sim.max_ongoing_requests

    def starting(self) -> int:
        return sum(1 for r in self.replicas if r.state in (PENDING, STARTING))

    def target(self) -> int:
        return sum(1 for r in self.replicas if r.state in (PENDING, STARTING, READY))


class SimCluster:
    """The simulated pools behind the controller's four protocols (see the module docstring)."""

    def __init__(self, sim: SimConfig, policy: PolicyFile, curves: Mapping[str, ServiceCurve],
                 clock: Callable[[], float], schedule: Schedule, seed: int,
                 initial_replicas: Mapping[str, int] | None = None) -> None:
        self.clock, self.schedule = clock, schedule
        self.routing: RoutingPlan | None = None
        self.max_waiting_at_zero = sim.router.max_waiting_at_zero
        self.probe_every_s = sim.router.probe_every_s
        self._seq = 0
        self.machines = sim.shared()
        self.pools: dict[str, SimPool] = {}
        for name, ps in sim.pools.items():
            self.pools[name] = SimPool(
                name, ps, policy.pools[name], curves[name], PoolWindow(sim.router.metrics_window_s),
                random.Random(f"{seed}:{name}:node"), random.Random(f"{seed}:{name}:replica"),
                machine=next((m for m in self.machines if name in m.pools), None), waves=ps.batches_in_waves)
        now = clock()
        for name, pool in self.pools.items():  # ready at time 0, not measured as startups
            count = (initial_replicas or {}).get(name, pool.sim.initial_replicas)
            rpn = pool.policy.replicas_per_node
            for _ in range(-(-count // rpn)):
                node = self._new_node(pool, now)
                node.ready_s = now
            for _ in range(count):
                rep = self._new_replica(pool, now)
                node = next(n for n in pool.nodes if n.hosted < rpn)
                node.hosted += 1
                rep.node, rep.state, rep.ready_s = node, READY, now
                pool.ready.append(rep)

    # --- RoutingSink -------------------------------------------------------------------------------------------

    def set_routing(self, plan: RoutingPlan) -> None:
        unknown = plan.unknown_pools(list(self.pools))
        if unknown:
            raise PermanentError(f"unknown pools {unknown}; pools are {sorted(self.pools)}")
        self.routing = plan

    # --- ReplicaScaler -----------------------------------------------------------------------------------------

    def get_replicas(self, pool: str) -> tuple[int, int]:
        p = self._pool(pool)
        return len(p.ready), p.starting()

    def set_replicas(self, pool: str, replicas: int) -> None:
        p = self._pool(pool)
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        now = self.clock()
        current = p.target()
        if replicas > current:
            p.scale_ups += 1
            for _ in range(replicas - current):
                self._new_replica(p, now)
            self._bind_pending(p, now)
        elif replicas < current:
            p.scale_downs += 1
            drop = current - replicas
            for state in (PENDING, STARTING):  # not serving yet: newest asks go first
                for rep in reversed([r for r in p.replicas if r.state == state]):
                    if drop == 0:
                        break
                    self._gone(rep, now)
                    drop -= 1
            for rep in sorted(p.ready, key=lambda r: (r.running, -(r.ready_s or 0.0), -r.replica_id))[:drop]:
                p.ready.remove(rep)
                rep.state, rep.stop_s = STOPPING, now
                if rep.running == 0:
                    self._gone(rep, now)

    # --- PoolBackend -------------------------------------------------------------------------------------------

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        p = self._pool(pool)
        return [n.info(pool) for n in p.nodes]

    def resize(self, pool: str, nodes: int) -> None:
        p = self._pool(pool)
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        now = self.clock()
        choice = choose_scale_down([n.info(pool) for n in p.nodes], nodes, {n.node_id: n.hosted for n in p.nodes})
        for n in p.nodes:
            n.draining = n.node_id in choice.drain
        for node_id in choice.remove:
            node = next(n for n in p.nodes if n.node_id == node_id)
            if node.hosted:  # re-check right before removing
                continue
            node.removed_s = now
            p.nodes.remove(node)
        missing = nodes - len(p.nodes)
        cap = p.sim.max_nodes
        allowed = missing if cap is None else max(0, min(missing, cap - len(p.nodes)))
        for _ in range(max(0, allowed)):
            node = self._new_node(p, now)
            self.schedule(now + p.sim.node_startup_s.sample(p.rng_node), NODE_READY, node, p)
        if allowed > 0:
            self._bind_pending(p, now)  # un-drained nodes may have room
        if allowed < missing:
            raise CapacityUnavailableError(f"pool {pool!r} is capped at {cap} nodes; {nodes} asked, "
                                           f"{len(p.nodes)} there")

    def measured_startup_s(self, pool: str) -> float | None:
        samples = self._pool(pool).startups
        return sum(samples) / len(samples) if samples else None

    def shared_cores(self) -> tuple[SharedCores, ...]:
        return self.machines

    def slowdown(self, pool: SimPool) -> float:
        """How much slower than its profile a replica of ``pool`` works now (>= 1): the machine's cores shared
        by the replicas serving and starting on it."""
        m = pool.machine
        if m is None:
            return 1.0
        busy, starting = {}, {}
        for name in m.pools:
            reps = self.pools[name].replicas
            busy[name] = sum(1 for r in reps if r.running > 0)
            starting[name] = sum(1 for r in reps if r.state == STARTING)
        return 1.0 / m.speed(busy, starting)

    # --- MetricsSource -----------------------------------------------------------------------------------------

    def views(self, now: float) -> dict[str, PoolView]:
        """Each pool as the router sees it (before the routing plan is applied)."""
        probe = self.probe_every_s
        return {name: PoolView(name, len(p.ready), p.in_flight, p.sim.max_ongoing_requests,
                               p.sim.max_queued_requests, p.sim.eligibility, p.starting(), p.waiting,
                               self.max_waiting_at_zero,
                               probe_due=probe is not None and now - p.last_routed_s >= probe)
                for name, p in self.pools.items()}

    def stats(self, now: float) -> RouterStats:
        """What the router publishes on ``/elo/pools`` (the same producer)."""
        return router_stats(self.views(now), {n: p.window for n, p in self.pools.items()}, now, self.routing)

    def snapshot(self, now: float) -> ClusterSnapshot:
        """What ``ObservedMetrics`` builds from ``/elo/pools``, Serve's replica states and the node backend."""
        return cluster_snapshot(now, self.stats(now), list(self.pools), _ReplicaView(self), self)

    # --- events the engine forwards ----------------------------------------------------------------------------

    def node_ready(self, node: SimNode, pool: SimPool, now: float) -> None:
        if node.removed_s is not None or node.ready_s is not None:
            return
        node.ready_s = now
        pool.startups.append(now - node.asked_s)
        self._bind_pending(pool, now)

    def replica_ready(self, rep: SimReplica, now: float) -> bool:
        """True if the replica now serves (False: it was dropped while starting)."""
        if rep.state != STARTING:
            return False
        rep.state, rep.ready_s = READY, now
        rep.pool.ready.append(rep)
        rep.pool.replica_startups.append(now - rep.asked_s)  # as ServeScaler measures it: ask -> ready
        return True

    def replica_idle(self, rep: SimReplica, now: float) -> None:
        """A stopping replica finished its last request: it goes, its node slot frees."""
        if rep.state == STOPPING and rep.running == 0:
            self._gone(rep, now)

    # --- internals ---------------------------------------------------------------------------------------------

    def _pool(self, pool: str) -> SimPool:
        try:
            return self.pools[pool]
        except KeyError:
            raise NotFoundError(f"no pool {pool!r}; known pools: {', '.join(sorted(self.pools))}") from None

    def _new_node(self, p: SimPool, now: float) -> SimNode:
        self._seq += 1
        node = SimNode(f"{p.name}-{self._seq}", now)
        p.nodes.append(node)
        p.all_nodes.append(node)
        return node

    def _new_replica(self, p: SimPool, now: float) -> SimReplica:
        self._seq += 1
        rep = SimReplica(self._seq, p, now)
        p.replicas.append(rep)
        p.all_replicas.append(rep)
        return rep

    def _bind_pending(self, p: SimPool, now: float) -> None:
        rpn = p.policy.replicas_per_node
        for rep in p.replicas:
            if rep.state != PENDING:
                continue
            node = next((n for n in p.nodes if n.ready_s is not None and not n.draining and n.hosted < rpn), None)
            if node is None:
                return
            node.hosted += 1
            rep.node, rep.state = node, STARTING
            # On shared cores the start (loading, warm-up) stretches with the load it finds (frozen at its start).
            startup_s = p.sim.replica_startup_s.sample(p.rng_replica) * self.slowdown(p)
            self.schedule(now + startup_s, REPLICA_READY, rep, None)

    def _gone(self, rep: SimReplica, now: float) -> None:
        p = rep.pool
        rep.state, rep.gone_s = GONE, now
        if rep.stop_s is None:
            rep.stop_s = now
        p.replicas.remove(rep)
        if rep.node is not None:
            rep.node.hosted -= 1
            self._bind_pending(p, now)


class _ReplicaView:
    """The scaler side of the cluster as the snapshot reads it: replica counts and measured replica startups (the
    cluster's own ``measured_startup_s`` is the backend's, for nodes)."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster

    def get_replicas(self, pool: str) -> tuple[int, int]:
        return self.cluster.get_replicas(pool)

    def measured_startup_s(self, pool: str) -> float | None:
        samples = self.cluster._pool(pool).replica_startups
        return sum(samples) / len(samples) if samples else None


@dataclass(frozen=True)
class PoolAccount:
    """What one pool cost and did over a run."""

    node_seconds: float
    replica_seconds: float  # asked -> gone (billed-like, per replica)
    ready_replica_seconds: float  # serving (ready -> stopped)
    cost_usd: float
    scale_ups: int
    scale_downs: int
    max_replicas: int


def account(pool: SimPool, end_s: float) -> PoolAccount:
    """Integrate the pool's node and replica lifetimes over [0, end_s]."""
    def span(a: float | None, b: float | None) -> float:
        if a is None:
            return 0.0
        return max(0.0, min(end_s, b if b is not None else end_s) - a)

    node_s = sum(span(n.asked_s, n.removed_s) for n in pool.all_nodes)
    rep_s = sum(span(r.asked_s, r.gone_s) for r in pool.all_replicas)
    ready_s = sum(span(r.ready_s, r.stop_s if r.stop_s is not None else r.gone_s) for r in pool.all_replicas)
    price_node_h = pool.policy.cost_per_hour_usd * pool.policy.replicas_per_node
    return PoolAccount(node_s, rep_s, ready_s, node_s / 3600.0 * price_node_h, pool.scale_ups, pool.scale_downs,
                       max_replicas=_max_concurrent(pool, end_s))


def _max_concurrent(pool: SimPool, end_s: float) -> int:
    events = sorted([(r.asked_s, 1) for r in pool.all_replicas]
                    + [(r.gone_s, -1) for r in pool.all_replicas if r.gone_s is not None and r.gone_s <= end_s],
                    key=lambda e: (e[0], e[1]))
    level = best = 0
    for _, d in events:
        level += d
        best = max(best, level)
    return best


__all__ = ["NODE_READY", "REPLICA_READY", "PoolAccount", "SimCluster", "SimNode", "SimPool", "SimReplica",
           "account"]
