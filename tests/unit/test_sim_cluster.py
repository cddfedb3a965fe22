"""The simulated cluster behind the controller's protocols: startup order, drains, caps, snapshot fields, errors."""

from __future__ import annotations

import heapq

import pytest

from deployments.contract import RoutingPlan
from orchestrator.control.adapters.base import PoolBackend, ReplicaScaler
from orchestrator.control.errors import CapacityUnavailableError, NotFoundError, PermanentError
from orchestrator.sim.cluster import NODE_READY, REPLICA_READY, SimCluster
from orchestrator.sim.profile import ServiceCurve
from tests.unit.sim_support import policy_file, sim_config


class Harness:
    """A cluster with a hand-driven clock and event queue."""

    def __init__(self, **sim_changes) -> None:
        self.now = 0.0
        self.events: list = []
        self.seq = 0
        sim = sim_config(**sim_changes)
        curves = {n: ServiceCurve.of(p.profile, p.max_ongoing_requests) for n, p in sim.pools.items()}
        self.cluster = SimCluster(sim, policy_file(), curves, lambda: self.now, self.schedule, seed=0)

    def schedule(self, t, kind, a, b=None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def advance(self, to_s: float) -> None:
        while self.events and self.events[0][0] <= to_s:
            t, _, kind, a, b = heapq.heappop(self.events)
            self.now = t
            if kind == NODE_READY:
                self.cluster.node_ready(a, b, t)
            elif kind == REPLICA_READY:
                self.cluster.replica_ready(a, t)
        self.now = to_s


def test_the_cluster_is_a_replica_scaler_and_a_pool_backend() -> None:
    c = Harness().cluster
    assert isinstance(c, ReplicaScaler) and isinstance(c, PoolBackend)


def test_a_new_replica_waits_for_its_node_then_for_its_own_startup() -> None:
    h = Harness(node_startup=5.0, cloud_startup=20.0, cloud_initial=0)
    c = h.cluster
    c.resize("cloud", 1)
    c.set_replicas("cloud", 1)
    assert c.get_replicas("cloud") == (0, 1)
    assert [n.state for n in c.list_nodes("cloud")] == ["starting"]
    h.advance(24.9)
    assert c.get_replicas("cloud") == (0, 1)  # node joined at 5 s, replica ready at 25 s
    h.advance(25.0)
    assert c.get_replicas("cloud") == (1, 0)
    assert c.measured_startup_s("cloud") == pytest.approx(5.0)


def test_setting_the_same_target_twice_changes_nothing() -> None:
    h = Harness()
    h.cluster.set_replicas("cloud", 3)
    h.cluster.set_replicas("cloud", 3)
    assert h.cluster.pools["cloud"].scale_ups == 1
    assert h.cluster.pools["cloud"].target() == 3


def test_scale_down_drops_replicas_not_serving_yet_first() -> None:
    h = Harness(cloud_initial=1)
    c = h.cluster
    c.resize("cloud", 3)
    c.set_replicas("cloud", 3)
    c.set_replicas("cloud", 1)
    assert c.get_replicas("cloud") == (1, 0)  # the ready one stays


def test_a_busy_stopping_replica_keeps_its_node_until_it_is_idle() -> None:
    h = Harness(cloud_initial=2)
    c = h.cluster
    pool = c.pools["cloud"]
    busy = pool.ready[0]
    busy.running = 3
    pool.ready[1].running = 5
    c.set_replicas("cloud", 1)  # stops the one with fewer requests
    assert busy.stop_s == 0.0 and busy.gone_s is None
    c.resize("cloud", 1)
    assert [n.state for n in c.list_nodes("cloud")] == ["draining", "ready"]
    busy.running = 0
    c.replica_idle(busy, 10.0)
    h.now = 10.0
    c.resize("cloud", 1)
    assert [n.state for n in c.list_nodes("cloud")] == ["ready"]


def test_a_node_cap_starts_what_fits_and_reports_capacity_unavailable() -> None:
    h = Harness(cloud={"max_nodes": 2})
    with pytest.raises(CapacityUnavailableError, match="capped at 2"):
        h.cluster.resize("cloud", 4)
    assert len(h.cluster.list_nodes("cloud")) == 2


def test_unknown_pools_and_routing_plans_are_project_errors() -> None:
    c = Harness().cluster
    with pytest.raises(NotFoundError, match="no pool 'gpu'"):
        c.set_replicas("gpu", 1)
    with pytest.raises(PermanentError, match="unknown pools"):
        c.set_routing(RoutingPlan(fill_order=["gpu", "edge"]))
    c.set_routing(RoutingPlan(fill_order=["edge", "cloud"]))
    assert c.routing is not None and c.routing.fill_order == ["edge", "cloud"]


def test_the_snapshot_has_the_fields_production_fills() -> None:
    h = Harness(cloud_initial=1)
    c = h.cluster
    pool = c.pools["cloud"]
    pool.in_flight = 11  # 8 slots on one ready replica
    pool.window.arrived(0.0)
    pool.window.rejected(0.5)
    pool.window.first_token(1.0, 0.4)
    pool.window.finished(2.0, 1.5, 30)
    c.resize("cloud", 2)
    snap = c.snapshot(3.0)
    p = snap.pools["cloud"]
    assert (p.ready_replicas, p.starting_replicas, p.ready_nodes, p.starting_nodes) == (1, 0, 1, 1)
    assert (p.running_requests, p.queued_requests) == (8, 3)
    assert p.arrival_rate_rps == pytest.approx(2 / 30)  # routed + refused, over the 30 s window
    assert (p.ttft_p95_s, p.e2e_p95_s) == (0.4, 1.5)
    assert p.output_tokens_per_s == pytest.approx(1.0)
    assert p.replica_startup_s is None and p.node_startup_s is None  # nothing was started yet
