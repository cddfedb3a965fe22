"""The control loop on a fake clock with recording fakes: act order, retries, persistence, log, gauges."""

from __future__ import annotations

from pathlib import Path

from deployments.contract import PoolAdmission, RoutingPlan
from orchestrator.control.config import PolicyFile
from orchestrator.control.errors import PermanentError, TransientError
from orchestrator.control.journal import DecisionLog, StateStore
from orchestrator.control.loop import Controller
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies import PolicyState
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    """Metrics source, scaler, backend and routing sink at once; records every call in order."""

    def __init__(self, cloud: int = 0, edge: int = 1) -> None:
        self.replicas = {"cloud": cloud, "edge": edge}
        self.nodes = dict(self.replicas)
        self.load: dict[str, dict] = {}
        self.calls: list[tuple[str, str, object]] = []
        self.fail_next: dict[str, Exception] = {}
        self.fail_always: dict[str, Exception] = {}
        self.observe_error: Exception | None = None
        self.routing: RoutingPlan | None = None  # what the router has in force

    def snapshot(self, now: float) -> ClusterSnapshot:
        if self.observe_error:
            raise self.observe_error
        return ClusterSnapshot.of(now, *(PoolSnapshot(p, ready_replicas=n, ready_nodes=self.nodes[p],
                                                      **self.load.get(p, {})) for p, n in self.replicas.items()),
                                  routing=self.routing)

    def _call(self, kind: str, pool: str, value: object) -> None:
        self.calls.append((kind, pool, value))
        if kind in self.fail_next:
            raise self.fail_next.pop(kind)
        if kind in self.fail_always:
            raise self.fail_always[kind]

    def set_replicas(self, pool: str, replicas: int) -> None:
        self._call("scale", pool, replicas)
        self.replicas[pool] = replicas

    def resize(self, pool: str, nodes: int) -> None:
        self._call("resize", pool, nodes)
        self.nodes[pool] = nodes

    def set_routing(self, plan: RoutingPlan) -> None:
        self._call("routing", "*", plan.fill_order)
        self.routing = plan


def succeeded(cluster: FakeCluster, kind: str) -> list[tuple[str, str, object]]:
    return [c for c in cluster.calls if c[0] == kind]


def plan_of(order: list[str]) -> RoutingPlan:
    return RoutingPlan(fill_order=order, pools={p: PoolAdmission(max_concurrency_per_replica=4) for p in order})


def scripted(*plans: dict[str, int], order: list[str] | None = None):
    """A policy that returns the given targets in turn (then repeats the last), counting ticks in state."""

    def policy(snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        i = state.memory.get("i", 0)
        want = plans[min(i, len(plans) - 1)]
        plan = ScalePlan({p: PoolTarget(n, n) for p, n in want.items()}, f"step {i}: {want}",
                         routing=plan_of(order) if order else None)
        return plan, PolicyState(memory={"i": i + 1})

    return policy


def controller(cluster: FakeCluster, clock: FakeClock, tmp_path: Path | None = None, policy=None,
               policy_file: PolicyFile | None = None) -> Controller:
    return Controller(
        policy_file or PolicyFile.default(), cluster, cluster, cluster, cluster, clock,
        state_store=StateStore(tmp_path / "state.json") if tmp_path else None,
        decisions=DecisionLog(tmp_path / "decisions.jsonl") if tmp_path else None,
        wall_clock=lambda: 1_700_000_000.0, policy=policy,
    )


def test_growing_adds_nodes_before_replicas_and_shrinking_removes_replicas_first():
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 2, "edge": 1}, {"cloud": 0, "edge": 1}))
    c.tick()
    assert [x for x in cluster.calls if x[1] == "cloud"] == [("resize", "cloud", 2), ("scale", "cloud", 2)]
    cluster.calls.clear()
    clock.now += 5
    c.tick()
    assert [x for x in cluster.calls if x[1] == "cloud"] == [("scale", "cloud", 0), ("resize", "cloud", 0)]


def test_a_failed_action_is_recorded_and_retried_next_tick(tmp_path: Path):
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, tmp_path, policy=scripted({"cloud": 1, "edge": 1}))
    cluster.fail_next["scale"] = TransientError("dashboard unreachable", delay_s=0)
    c.tick()
    assert cluster.replicas["cloud"] == 0
    (record,) = DecisionLog(tmp_path / "decisions.jsonl").tail(5)
    assert any("dashboard unreachable" in e for e in record["errors"])
    clock.now += 5
    c.tick()
    assert cluster.replicas["cloud"] == 1


def test_observing_nothing_acts_on_nothing():
    cluster, clock = FakeCluster(), FakeClock()
    cluster.observe_error = ConnectionError("router down")
    c = controller(cluster, clock, policy=scripted({"cloud": 2, "edge": 3}))
    assert c.tick() is None and cluster.calls == []


def test_the_routing_plan_is_pushed_only_when_it_changes():
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 0, "edge": 1}, order=["edge", "cloud"]))
    for _ in range(3):
        c.tick()
        clock.now += 5
    assert succeeded(cluster, "routing") == [("routing", "*", ["edge", "cloud"])]


def test_a_router_that_lost_the_plan_gets_it_again():
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 0, "edge": 1}, order=["edge", "cloud"]))
    c.tick()
    cluster.routing = None  # the router restarted with its configured order
    clock.now += 5
    c.tick()
    assert len(succeeded(cluster, "routing")) == 2


def test_a_transient_error_is_retried_only_after_its_delay():
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 1, "edge": 1}))
    cluster.fail_next["scale"] = TransientError("dashboard busy", delay_s=12)
    c.tick()
    tries = lambda: [x for x in cluster.calls if x[:2] == ("scale", "cloud")]  # noqa: E731
    assert len(tries()) == 1
    for _ in range(2):  # 5 s and 10 s later: still within the 12 s the dashboard asked for
        clock.now += 5
        plan = c.tick()
        assert len(tries()) == 1 and plan is not None
    clock.now += 5
    c.tick()
    assert len(tries()) == 2 and cluster.replicas["cloud"] == 1


def test_a_permanent_error_is_logged_once_and_retried_with_a_growing_backoff(caplog):
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 1, "edge": 1}))
    cluster.fail_always["scale"] = PermanentError("401 unauthorized")
    attempts = []
    with caplog.at_level("ERROR", logger="orchestrator.control.loop"):
        for _ in range(400):  # 2000 s of 5 s ticks
            before = len([x for x in cluster.calls if x[:2] == ("scale", "cloud")])
            c.tick()
            if len([x for x in cluster.calls if x[:2] == ("scale", "cloud")]) > before:
                attempts.append(clock.now)
            clock.now += 5
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert gaps == [30, 60, 120, 240, 480, 600], gaps
    assert len([r for r in caplog.records if "scale cloud failed permanently" in r.message]) == 1
    del cluster.fail_always["scale"]
    clock.now += 600
    c.tick()
    assert cluster.replicas["cloud"] == 1, "retried until it works"


def test_state_survives_a_restart_through_the_state_file(tmp_path: Path):
    cluster, clock = FakeCluster(), FakeClock()
    policy = scripted({"edge": 1}, {"edge": 2}, {"edge": 3})
    controller(cluster, clock, tmp_path, policy=policy).tick()
    restarted = controller(cluster, clock, tmp_path, policy=policy)
    assert restarted.state.memory == {"i": 1}
    assert restarted.tick().targets["edge"] == PoolTarget(2, 2), "continues at step 1, not from scratch"


def test_unreadable_state_file_starts_fresh(tmp_path: Path):
    (tmp_path / "state.json").write_text("{not json")
    assert StateStore(tmp_path / "state.json").load() == PolicyState()


def test_decision_log_keeps_changes_and_holds_at_most_once_a_minute(tmp_path: Path):
    cluster, clock = FakeCluster(), FakeClock()

    def steady(snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        return ScalePlan({"cloud": PoolTarget(0, 0), "edge": PoolTarget(2, 2)}, "edge at 2"), state

    c = controller(cluster, clock, tmp_path, policy=steady)
    for _ in range(4):
        c.tick()
        clock.now += 5
    records = DecisionLog(tmp_path / "decisions.jsonl").tail(10)
    assert len(records) == 2, "the change, then the tick that saw the new size; the other holds are not logged"
    assert records[1]["changes"] == [] and records[1]["observed"]["edge"]["ready_replicas"] == 2
    assert records[0]["changes"] == [{"pool": "edge", "from": {"replicas": 1, "nodes": 1},
                                      "to": {"replicas": 2, "nodes": 2}}]
    assert records[0]["reason"] == "edge at 2" and records[0]["wall_time_s"] == 1_700_000_000.0
    assert records[0]["observed"]["edge"]["ready_replicas"] == 1
    clock.now += 60
    c.tick()
    assert len(DecisionLog(tmp_path / "decisions.jsonl").tail(10)) == 3, "a hold is logged again after a minute"


def test_gauges_show_desired_and_actual_size_and_cost():
    cluster, clock = FakeCluster(), FakeClock()
    c = controller(cluster, clock, policy=scripted({"cloud": 2, "edge": 3}))
    c.tick()
    sample = lambda name, **labels: c.gauges.registry.get_sample_value(name, labels)  # noqa: E731
    assert sample("elo_controller_desired_replicas", pool="cloud") == 2
    assert sample("elo_controller_actual_replicas", pool="cloud") == 0  # what the snapshot saw
    prices = PolicyFile.default().pools
    assert sample("elo_controller_cost_usd_per_hour") == 2 * prices["cloud"].cost_per_hour_usd + 3 * prices[
        "edge"].cost_per_hour_usd


def test_the_default_policy_scales_the_edge_pool_up_under_a_burst_after_the_delay():
    cluster, clock = FakeCluster(cloud=0, edge=1), FakeClock()
    c = controller(cluster, clock)
    cluster.load = {"edge": {"arrival_rate_rps": 3.0, "running_requests": 4, "queued_requests": 8}}
    delay = PolicyFile.default().guardrails.upscale_delay_s
    sizes = []
    while clock.now <= delay + 10:
        c.tick()
        sizes.append((clock.now, cluster.replicas["edge"]))
        clock.now += 5
    assert all(n == 1 for t, n in sizes if t < delay)
    assert sizes[-1][1] > 1


def test_the_decision_log_rotates_and_tail_reads_across_the_rotation(tmp_path):
    log = DecisionLog(tmp_path / "decisions.jsonl", max_bytes=2000)
    for i in range(200):
        log.append({"i": i, "reason": "x" * 40})
    assert (tmp_path / "decisions.jsonl").stat().st_size <= 2000
    assert (tmp_path / "decisions.jsonl.1").exists() and not (tmp_path / "decisions.jsonl.2").exists()
    assert [r["i"] for r in log.tail(5)] == [195, 196, 197, 198, 199]
    newest = len((tmp_path / "decisions.jsonl").read_text().splitlines())
    assert [r["i"] for r in log.tail(newest + 3)] == list(range(200 - newest - 3, 200))
    (tmp_path / "decisions.jsonl").write_text((tmp_path / "decisions.jsonl").read_text() + '{"cut by a cra')
    assert log.tail(1) == [{"i": 199, "reason": "x" * 40}]


def test_a_decision_record_with_router_samples_and_admission_is_json(tmp_path):
    import json

    from deployments.contract import ConcurrencyStats, PoolAdmission
    from orchestrator.control.journal import decision_record
    from orchestrator.control.plan import PoolTarget, ScalePlan
    from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot

    pool = PoolSnapshot("edge", 1, ready_nodes=1, admission=PoolAdmission(max_concurrency_per_replica=4),
                        by_concurrency=(ConcurrencyStats(concurrency=2, requests=5, ttft_mean_s=0.1, tpot_mean_s=0.02,
                                                         prompt_tokens_mean=30.0),))
    snap = ClusterSnapshot.of(0.0, pool)
    record = decision_record(0.0, 1.0, ScalePlan({"edge": PoolTarget(1, 1)}, "hold"), snap, 0.1, [])
    DecisionLog(tmp_path / "d.jsonl").append(record)
    (back,) = DecisionLog(tmp_path / "d.jsonl").tail(1)
    assert back["observed"]["edge"]["samples"] == 5
    assert back["observed"]["edge"]["admission"]["max_concurrency_per_replica"] == 4
    assert json.loads(json.dumps(back)) == back
