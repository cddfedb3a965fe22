"""The control loop: observe -> decide -> act each tick; the only code that touches all three."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from deployments.contract import RoutingPlan, SloTargets
from orchestrator.control.config import PolicyFile, Slo
from orchestrator.control.errors import PermanentError, TransientError
from orchestrator.control.journal import DecisionLog, StateStore, decision_record
from orchestrator.control.plan import ScalePlan
from orchestrator.control.policies import Policy, PolicyState, build_policy
from orchestrator.control.snapshot import ClusterSnapshot

log = logging.getLogger(__name__)


class MetricsSource(Protocol):
    def snapshot(self, now: float) -> ClusterSnapshot: ...


class Scaler(Protocol):
    def set_replicas(self, pool: str, replicas: int) -> None: ...


class Backend(Protocol):
    def resize(self, pool: str, nodes: int) -> None: ...


class RoutingSink(Protocol):
    def set_routing(self, plan: RoutingPlan) -> None: ...


class ControllerGauges:
    """Prometheus view of the controller: desired vs actual size, cost and queue per pool."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired_replicas = Gauge("elo_controller_desired_replicas", "Planned replicas.", ["pool"], registry=r)
        self.actual_replicas = Gauge("elo_controller_actual_replicas", "Ready + starting replicas.", ["pool"], registry=r)
        self.desired_nodes = Gauge("elo_controller_desired_nodes", "Planned nodes.", ["pool"], registry=r)
        self.actual_nodes = Gauge("elo_controller_actual_nodes", "Ready + starting nodes.", ["pool"], registry=r)
        self.queue = Gauge("elo_controller_queued_requests", "Requests waiting per pool.", ["pool"], registry=r)
        self.cost = Gauge("elo_controller_cost_usd_per_hour", "Cost of the planned fleet.", registry=r)
        self.ready_replicas = Gauge("elo_controller_ready_replicas", "Ready replicas.", ["pool"], registry=r)
        self.starting_replicas = Gauge("elo_controller_starting_replicas", "Replicas asked for, not ready yet.",
                                       ["pool"], registry=r)
        self.budget = Gauge("elo_controller_budget_usd_per_hour", "The guardrails' budget (absent: none).", registry=r)
        self.metrics_age = Gauge("elo_controller_metrics_age_seconds", "Age of the metrics the last decision used.",
                                 registry=r)
        self.stale_after = Gauge("elo_controller_stale_after_seconds",
                                 "Metrics older than this make the controller hold (guardrails.stale_after_s).",
                                 registry=r)
        self.slo_concurrency = Gauge("elo_controller_slo_concurrency_per_replica",
                                     "Requests one replica takes while the pool meets the SLO (planned admission).",
                                     ["pool"], registry=r)
        self.slo_capacity = Gauge("elo_controller_slo_capacity_rps_per_replica",
                                  "Requests per second one replica serves within the SLO (the controller's "
                                  "estimate).", ["pool"], registry=r)
        self.scaling_actions = Counter("elo_controller_scaling_actions", "Replica-count changes applied.",
                                       ["pool", "direction"], registry=r)
        self.ticks = Counter("elo_controller_ticks", "Controller ticks.", registry=r)
        self.errors = Counter("elo_controller_errors", "Failed observe/act steps.", ["step"], registry=r)
        for step in ("observe", "tick"):  # every step's series exists from the start (rate() and alerts see 0)
            self.errors.labels(step)

    def serve(self, port: int, host: str = "") -> Callable[[], None]:
        """Serve the gauges on http://host:port/metrics (a thread); returns what stops the server."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host or "0.0.0.0", registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop


class Controller:
    """Runs the configured policy (wrapped in guardrails) against real or fake adapters."""

    def __init__(
        self,
        policy_file: PolicyFile,
        metrics: MetricsSource,
        scaler: Scaler,
        backend: Backend,
        routing: RoutingSink,
        clock: Callable[[], float],
        state_store: StateStore | None = None,
        decisions: DecisionLog | None = None,
        gauges: ControllerGauges | None = None,
        wall_clock: Callable[[], float] = time.time,
        policy: Policy | None = None,
        hold_log_every_s: float = 60.0,
    ):
        self.policy_file = policy_file
        self.policy = policy or build_policy(policy_file)
        self.metrics, self.scaler, self.backend, self.routing = metrics, scaler, backend, routing
        self.clock, self.wall_clock = clock, wall_clock
        self.state_store, self.decisions = state_store, decisions
        self.gauges = gauges or ControllerGauges()
        self.state = state_store.load() if state_store else PolicyState()
        self._pushed_routing: RoutingPlan | None = None
        self._backoff: dict[str, tuple[float, float]] = {}  # step -> (retry not before, next permanent backoff)
        self.permanent_backoff_s = (30.0, 600.0)  # first and longest wait after a PermanentError
        self._last_hold_logged_s: float | None = None
        self._logged_sizes: dict[str, tuple[int, int, int, int]] | None = None
        self._logged_refused: set[str] = set()  # pools whose growth was refused in the last logged decision
        self.last_plan: ScalePlan | None = None
        self.hold_log_every_s = hold_log_every_s

    def sized_before(self, pool: str) -> bool:
        """Whether this controller, or the one whose state it restored, ever resized ``pool``."""
        timers = self.state.timers.get(pool)
        return timers is not None and timers.last_change_s is not None

    def reload(self, policy_file: PolicyFile) -> None:
        """Swap in a new, already validated policy file; the state (timers, averages) carries over."""
        self.policy = build_policy(policy_file)
        self.policy_file = policy_file

    def cost_usd_per_hour(self, plan: ScalePlan) -> float:
        pools = self.policy_file.pools
        return sum(t.replicas * pools[p].cost_per_hour_usd for p, t in plan.targets.items() if p in pools)

    def tick(self) -> ScalePlan | None:
        """One observe -> decide -> act round. Returns the plan, or None when observing failed."""
        now = self.clock()
        self.gauges.ticks.inc()
        try:
            snapshot = self.metrics.snapshot(now)
        except Exception as e:  # no data, no decision: hold everything
            self.gauges.errors.labels("observe").inc()
            log.warning("controller: cannot observe the pools (%s); holding", e)
            return None
        plan, self.state = self.policy(snapshot, self.state, now)
        errors = self._act(plan, snapshot)
        if self.state_store:
            self.state_store.save(self.state)
        self._export(plan, snapshot)
        # Changes, errors and a change in what was observed (replicas or nodes becoming ready, starting, gone)
        # are always logged, so the log is a timeline of the pools; a plain hold at most once per
        # `hold_log_every_s`.
        hold_due = self._last_hold_logged_s is None or now - self._last_hold_logged_s >= self.hold_log_every_s
        sizes = _sizes(snapshot)
        refused = set(plan.refused or {})  # a refusal starting or ending is logged, not each tick's figures
        if self.decisions and (not plan.is_hold(snapshot) or errors or hold_due or sizes != self._logged_sizes
                               or refused != self._logged_refused):
            self._logged_sizes, self._logged_refused = sizes, refused
            self.decisions.append(decision_record(now, self.wall_clock(), plan, snapshot,
                                                  self.cost_usd_per_hour(plan), errors))
            self._last_hold_logged_s = now
        self.last_plan = plan
        return plan

    def _act(self, plan: ScalePlan, snapshot: ClusterSnapshot) -> list[str]:
        """Nodes before replicas when growing; replicas before nodes when shrinking (the backend removes
        a node only once no replica is left on it). Every call is idempotent, so a failed step is simply
        retried: at the next tick, or after the TransientError's ``delay_s``; a PermanentError is logged once
        and retried with a growing backoff (30 s, doubling, at most 10 min) until the step succeeds again."""
        errors: list[str] = []
        now = self.clock()

        def attempt(step: str, fn: Callable[[], None]) -> bool:
            not_before, _ = self._backoff.get(step, (0.0, 0.0))
            if now < not_before:
                errors.append(f"{step}: backing off until +{not_before - now:.0f}s after an earlier error")
                return False
            try:
                fn()
            except Exception as e:
                self.gauges.errors.labels(step).inc()
                errors.append(f"{step}: {e}")
                self._back_off(step, e, now)
                return False
            self._backoff.pop(step, None)
            return True

        for pool, target in plan.targets.items():
            seen = snapshot.pools.get(pool)
            growing = seen is None or target.replicas >= seen.replicas
            resize = lambda p=pool, n=target.nodes: self.backend.resize(p, n)  # noqa: E731
            scale = lambda p=pool, n=target.replicas: self.scaler.set_replicas(p, n)  # noqa: E731
            steps = [("resize " + pool, resize), ("scale " + pool, scale)]
            done = {step: attempt(step, fn) for step, fn in (steps if growing else reversed(steps))}
            if done["scale " + pool] and seen is not None and target.replicas != seen.replicas:
                self.gauges.scaling_actions.labels(pool, "up" if target.replicas > seen.replicas else "down").inc()
        routing = _with_starting(plan, snapshot, self.policy_file.slo)
        # Pushed when it changes, and again when the router does not have it (it restarted, or lost it).
        if routing is not None and (routing != self._pushed_routing or snapshot.routing != routing):
            if attempt("routing", lambda: self.routing.set_routing(routing)):
                self._pushed_routing = routing
        return errors

    def _back_off(self, step: str, e: Exception, now: float) -> None:
        if isinstance(e, PermanentError):
            _, wait = self._backoff.get(step, (0.0, 0.0))
            first, longest = self.permanent_backoff_s
            if wait == 0.0:  # the first time: say it loudly, once
                log.error("controller: %s failed permanently (retrying every %.0f-%.0f s until fixed): %s",
                          step, first, longest, e)
            wait = min(longest, wait * 2) if wait else first
            self._backoff[step] = (now + wait, wait)
        else:
            delay = e.delay_s if isinstance(e, TransientError) else 0.0
            if delay > 0:
                self._backoff[step] = (now + delay, 0.0)
            log.warning("controller: %s failed: %s", step, e)

    def _export(self, plan: ScalePlan, snapshot: ClusterSnapshot) -> None:
        g = self.gauges
        for pool, target in plan.targets.items():
            for direction in ("up", "down"):  # the series exist before the first action (increase() reads 0)
                g.scaling_actions.labels(pool, direction)
            g.desired_replicas.labels(pool).set(target.replicas)
            g.desired_nodes.labels(pool).set(target.nodes)
        for pool, seen in snapshot.pools.items():
            g.actual_replicas.labels(pool).set(seen.replicas)
            g.actual_nodes.labels(pool).set(seen.nodes)
            g.queue.labels(pool).set(seen.queued_requests)
            g.ready_replicas.labels(pool).set(seen.ready_replicas)
            g.starting_replicas.labels(pool).set(seen.starting_replicas)
        for pool, admission in (plan.routing.pools.items() if plan.routing else ()):
            g.slo_concurrency.labels(pool).set(admission.max_concurrency_per_replica)
            if admission.capacity_rps_per_replica is not None:
                g.slo_capacity.labels(pool).set(admission.capacity_rps_per_replica)
        g.cost.set(self.cost_usd_per_hour(plan))
        guardrails = self.policy_file.guardrails
        if guardrails.budget_usd_per_hour is not None:
            g.budget.set(guardrails.budget_usd_per_hour)
        g.stale_after.set(guardrails.stale_after_s)
        g.metrics_age.set(snapshot.age_s(self.clock()))

    def run(self, stop: threading.Event) -> None:
        """Tick every `tick_interval_s` until `stop` is set; a failing tick is logged, never fatal."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                self.gauges.errors.labels("tick").inc()
                log.exception("controller tick failed")
            stop.wait(self.policy_file.tick_interval_s)


def _sizes(snapshot: ClusterSnapshot) -> dict[str, tuple[int, int, int, int]]:
    """Ready/starting replicas and nodes per pool: what a decision-log reader needs to draw the pools over time."""
    return {n: (p.ready_replicas, p.starting_replicas, p.ready_nodes, p.starting_nodes)
            for n, p in snapshot.pools.items()}


def _with_starting(plan: ScalePlan, snapshot: ClusterSnapshot, slo: Slo) -> RoutingPlan | None:
    """The plan's routing with the replicas on their way per pool (planned minus ready), so the router holds
    requests for them through a cold start, and the SLO it counts requests against."""
    if plan.routing is None:
        return None
    starting = {}
    for pool, target in plan.targets.items():
        seen = snapshot.pools.get(pool)
        ready = seen.ready_replicas if seen is not None else 0
        if target.replicas > ready:
            starting[pool] = target.replicas - ready
    return plan.routing.model_copy(update={"starting": starting,
                                           "slo": SloTargets(ttft_s=slo.ttft_p95_s, e2e_s=slo.e2e_p95_s)})
