"""Default policy: the cheapest pool mix that meets the SLO — edge first, cloud burst pre-warmed over its startup."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pydantic import Field

from orchestrator.control.config import PolicyFile, PoolPolicy, StrictModel
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import PolicyState, replicas_for
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


class CostAwareKnobs(StrictModel):
    """Tuning of cost_aware (``policy.knobs`` in the policy file)."""

    cloud_idle_to_zero_s: float = Field(
        300.0, ge=0,
        description="A burst (cloud) pool no longer needed keeps one warm replica this long, then goes to its "
        "min_replicas (usually zero); the guardrails' downscale_delay_s applies after it.",
    )
    rate_smoothing_s: float = Field(
        30.0, gt=0, description="Time constant of the arrival-rate level and trend (Holt smoothing), seconds."
    )
    assumed_service_s: float = Field(
        4.0, gt=0,
        description="Seconds a request runs in a pool until measured (running / arrivals, Little's law); one "
        "replica then serves target_ongoing_requests_per_replica / service seconds requests per second.",
    )
    edge_fill_fraction: float = Field(
        0.8, gt=0, le=1,
        description="Share of a cheaper pool's capacity planned before bursting to the next pool: the room kept "
        "for noise, and the margin under which it is the router's preferred pool.",
    )
    backlog_drain_s: float = Field(
        30.0, gt=0, description="Queued requests are planned as extra demand of queued / backlog_drain_s rps."
    )


@dataclass
class _Memory:
    """cost_aware's part of PolicyState.memory (JSON values only)."""

    last_at_s: float | None = None
    level_rps: float = 0.0  # smoothed total arrival rate
    trend_rps_per_s: float = 0.0
    service_s: dict[str, float] = field(default_factory=dict)  # measured seconds a request runs, per pool
    idle_since_s: dict[str, float] = field(default_factory=dict)  # burst pools: first tick they were not needed

    @classmethod
    def load(cls, memory: dict) -> _Memory:
        return cls(
            memory.get("last_at_s"),
            float(memory.get("level_rps", 0.0)),
            float(memory.get("trend_rps_per_s", 0.0)),
            dict(memory.get("service_s") or {}),
            dict(memory.get("idle_since_s") or {}),
        )

    def dump(self) -> dict:
        return {
            "last_at_s": self.last_at_s,
            "level_rps": self.level_rps,
            "trend_rps_per_s": self.trend_rps_per_s,
            "service_s": self.service_s,
            "idle_since_s": self.idle_since_s,
        }


class CostAware:
    """Size the pools from demand in requests/s, cheapest capacity first.

    Demand = arrival rate + queued / backlog_drain_s; forecast(h) adds the smoothed arrival trend over horizon h
    when it is rising. Pools are filled in order of price per unit of capacity (edge, then cloud).
    A cheaper pool that meets the SLO gets demand forecast over its own startup, up to max_replicas x
    edge_fill_fraction of its capacity; the next pool gets the rest forecast over *its* startup — so a GPU pool
    starts early when demand within its startup horizon will exceed the edge pool. A cheaper pool missing the
    SLO with a queue is too small and is grown like one meeting it; one missing it without a queue is held
    (growing it does not fix slow tokens) and counted only for the share it serves within the SLO;
    the next pool picks up the rest, and the router is told to prefer it. A burst pool no longer needed keeps
    one warm replica for cloud_idle_to_zero_s, then goes to zero. No pool is planned below its in-flight load,
    and a pool at zero with requests waiting for it (the router holds them through a cold start) is started.
    """

    Knobs = CostAwareKnobs

    def __init__(self, config: PolicyFile) -> None:
        self.config = config
        self.knobs = CostAwareKnobs.model_validate(config.policy.knobs)
        # Static order (configured prices, not noisy measurements), so the fill order never flip-flops.
        self.order = sorted(config.pools, key=lambda n: (config.pools[n].cost_per_request_slot_usd_per_hour, n))

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        k, slo = self.knobs, self.config.slo
        mem = _Memory.load(state.memory)
        order = [n for n in self.order if n in snapshot.pools]
        if not order:
            return ScalePlan.hold(snapshot, "cost_aware: none of the configured pools is observed"), state
        pools = {n: snapshot.pools[n] for n in order}

        arrivals = sum(p.arrival_rate_rps for p in pools.values())
        queued = sum(p.queued_requests for p in pools.values())
        self._smooth(mem, arrivals, now)
        for name, p in pools.items():
            self._measure_service(mem, name, p, now)
        backlog_rps = queued / k.backlog_drain_s
        demand = arrivals + backlog_rps

        def forecast(horizon_s: float) -> float:
            # Only a rising trend is projected: decreases wait for the data (and the downscale delay).
            return demand + max(0.0, mem.trend_rps_per_s) * horizon_s

        targets: dict[str, PoolTarget] = {}
        notes: list[str] = []
        upstream_rps = 0.0  # what the cheaper pools will carry, counted before the next pool is sized
        preferred: str | None = None
        last = order[-1]
        for rank, name in enumerate(order):
            p, pc = pools[name], self.config.pools[name]
            service_s = mem.service_s.get(name, k.assumed_service_s)
            per_replica_rps = pc.target_ongoing_requests_per_replica / service_s
            usable_rps = per_replica_rps * (1.0 if name == last else k.edge_fill_fraction)
            horizon_s = _horizon_s(p, pc)
            miss = _slo_miss_ratio(p, slo.ttft_p95_s, slo.e2e_p95_s)
            # A pool with a queue misses the SLO because it is too small (TTFT includes the wait): grow it.
            # Only a pool missing it without a queue is slow per token, which more replicas do not fix.
            slow = miss > 1.0 and p.queued_requests == 0
            if not slow or name == last:  # the last pool is the one of last resort: always sized on demand
                need_rps = max(0.0, forecast(horizon_s) - upstream_rps)
                want = replicas_for(need_rps, usable_rps)
                if name != last:
                    want = min(want, pc.max_replicas)
                upstream_rps += pc.max_replicas * usable_rps
                health = (("meets SLO" if miss <= 1.0 else "misses SLO") + f" (p95 at {miss:.0%} of it)"
                          if _latency(p) else "no latency samples")
                if miss > 1.0 and not slow:
                    health += f" with {p.queued_requests} queued: too small, not slow"
                note = (f"{name}: {health}, need {need_rps:.2f} rps by +{horizon_s:.0f}s "
                        f"at {usable_rps:.2f} rps/replica -> {want}")
                has_room = p.ready_replicas > 0 and demand <= p.ready_replicas * usable_rps
                if preferred is None and miss <= 1.0 and has_room:
                    preferred = name
            else:
                # What it carries now, scaled down to the share it could carry within the SLO.
                within_slo_rps = min(p.arrival_rate_rps, p.ready_replicas * usable_rps) / miss
                want = p.replicas
                upstream_rps += within_slo_rps
                note = (f"{name}: misses SLO ({_latency(p)}, {miss:.0%} of it), held at {want}, "
                        f"counted for {within_slo_rps:.2f} of its {p.arrival_rate_rps:.2f} rps")
            needed = want
            # Never plan a pool below the requests it is working on now (they drain once routing moves away).
            floor = replicas_for(p.ongoing_requests, pc.target_ongoing_requests_per_replica)
            if p.arrival_rate_rps > 0:
                floor = max(floor, 1)
            want = max(want, min(floor, p.replicas))
            if p.replicas == 0 and p.queued_requests > 0:
                # Requests held by the router for a pool with no replica (too big for the others, or every
                # other pool full): only this pool will serve them, so it starts now, whatever the forecast.
                waiting_need = min(pc.max_replicas,
                                   replicas_for(p.queued_requests, pc.target_ongoing_requests_per_replica))
                if waiting_need > want:
                    want = waiting_need
                    note += f", {p.queued_requests} waiting for it: start {want} from zero"
            if rank > 0:
                want, idle_note = self._keep_warm(mem, name, p, needed, want, now)
                note += idle_note
            targets[name] = PoolTarget.for_replicas(want, pc.replicas_per_node)
            notes.append(note)
        preferred = preferred or last

        reason = (
            f"cost_aware: demand {demand:.2f} rps (arrivals {arrivals:.2f}, smoothed {mem.level_rps:.2f}, "
            f"trend {mem.trend_rps_per_s:+.3f} rps/s, {queued} queued); " + "; ".join(notes) + f"; prefer {preferred}"
        )
        mem.last_at_s = now
        new_state = replace(state, memory=mem.dump())
        return ScalePlan(targets, reason, preferred_pool_by_class={"default": preferred}), new_state

    def _smooth(self, mem: _Memory, arrivals: float, now: float) -> None:
        """Holt's linear smoothing with a time constant, so irregular ticks weigh correctly."""
        if mem.last_at_s is None:
            mem.level_rps, mem.trend_rps_per_s = arrivals, 0.0
            return
        dt = now - mem.last_at_s
        if dt <= 0:
            return
        a = 1.0 - math.exp(-dt / self.knobs.rate_smoothing_s)
        predicted = mem.level_rps + mem.trend_rps_per_s * dt
        level = max(0.0, predicted + a * (arrivals - predicted))
        mem.trend_rps_per_s += a * ((level - mem.level_rps) / dt - mem.trend_rps_per_s)
        mem.level_rps = level

    def _measure_service(self, mem: _Memory, name: str, p: PoolSnapshot, now: float) -> None:
        """Little's law on the running requests: service = running / arrivals, sampled only without a queue
        (with one, arrivals exceed what the pool completes and the ratio would understate it)."""
        if p.arrival_rate_rps <= 0 or p.running_requests <= 0 or p.queued_requests > 0:
            return
        sample = p.running_requests / p.arrival_rate_rps
        prev = mem.service_s.get(name)
        if prev is None or mem.last_at_s is None:
            mem.service_s[name] = sample
            return
        a = 1.0 - math.exp(-max(0.0, now - mem.last_at_s) / self.knobs.rate_smoothing_s)
        mem.service_s[name] = prev + a * (sample - prev)

    def _keep_warm(self, mem: _Memory, name: str, p: PoolSnapshot, needed: int, want: int,
                   now: float) -> tuple[int, str]:
        """A burst pool not needed keeps one replica for cloud_idle_to_zero_s: its cold start costs minutes."""
        idle = needed == 0 and p.ongoing_requests == 0 and p.arrival_rate_rps == 0
        if not idle or p.replicas == 0:
            mem.idle_since_s.pop(name, None)
            return want, ""
        since = mem.idle_since_s.setdefault(name, now)
        idle_s = now - since
        if idle_s < self.knobs.cloud_idle_to_zero_s:
            return max(want, 1), f", idle {idle_s:.0f}s of {self.knobs.cloud_idle_to_zero_s:.0f}s: kept warm"
        return want, f", idle {idle_s:.0f}s >= {self.knobs.cloud_idle_to_zero_s:.0f}s: to zero"


def _horizon_s(p: PoolSnapshot, pc: PoolPolicy) -> float:
    """How far ahead a new replica of this pool must be asked for: its measured ask -> ready (node start
    included), else the configured startup_s; never less than a measured node start alone."""
    replica = p.replica_startup_s if p.replica_startup_s is not None else pc.startup_s
    return max(replica, p.node_startup_s or 0.0)


def _slo_miss_ratio(p: PoolSnapshot, ttft_slo_s: float, e2e_slo_s: float) -> float:
    """Worst measured p95 / objective; <= 1 meets the SLO, and no sample counts as meeting it."""
    ratio = 0.0
    if p.ttft_p95_s is not None:
        ratio = max(ratio, p.ttft_p95_s / ttft_slo_s)
    if p.e2e_p95_s is not None:
        ratio = max(ratio, p.e2e_p95_s / e2e_slo_s)
    return ratio


def _latency(p: PoolSnapshot) -> str:
    parts = []
    if p.ttft_p95_s is not None:
        parts.append(f"ttft p95 {p.ttft_p95_s:.2f}s")
    if p.e2e_p95_s is not None:
        parts.append(f"e2e p95 {p.e2e_p95_s:.2f}s")
    return ", ".join(parts)
