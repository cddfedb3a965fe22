"""Default policy: the cheapest pool mix that meets the SLO — pools sized by their measured capacity at the SLO,
cheapest first, each over its own startup horizon; the router told each pool's SLO-safe concurrency."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import Field

from deployments.contract import PoolAdmission, RoutingPlan
from orchestrator.control.capacity import (
    Capacity,
    Correction,
    ProfilePoint,
    ReplicaProfile,
    RequestMix,
    capacity_at_slo,
    late_share,
    slots_within,
)
from orchestrator.control.config import PolicyFile, PoolPolicy, StrictModel
from orchestrator.control.machine import SharedCores
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import PolicyState, replicas_for
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot


class CostAwareKnobs(StrictModel):
    """Tuning of cost_aware (``policy.knobs`` in the policy file)."""

    cloud_idle_to_zero_s: float = Field(
        300.0, ge=0,
        description="A burst pool (any but the cheapest) no longer needed keeps one warm replica this long, then "
        "goes to its min_replicas (usually zero); the guardrails' downscale_delay_s applies after it.",
    )
    rate_smoothing_s: float = Field(
        30.0, gt=0, description="Time constant of the arrival-rate level and trend (Holt smoothing), seconds."
    )
    assumed_service_s: float = Field(
        4.0, gt=0,
        description="Pools without a profile: seconds a 64-token request runs until measured (a flat profile of "
        "target_ongoing_requests_per_replica slots).",
    )
    slo_margin: float = Field(
        0.8, gt=0, le=1,
        description="Plan for predicted p95 latencies at most this share of the SLO objectives (room for noise).",
    )
    prefill_utilisation: float = Field(
        0.7, gt=0, le=1, description="Plan a replica's prefill busy at most this share of the time.",
    )
    overflow_target: float = Field(
        0.01, gt=0, lt=1,
        description="Share of a pool's requests that may find its SLO-safe slots full and pass on to the next pool "
        "(Erlang B): the headroom each pool is sized with.",
    )
    backlog_drain_s: float = Field(
        30.0, gt=0, description="Queued requests are planned as extra demand of queued / backlog_drain_s rps."
    )
    learn_time_constant_s: float = Field(
        300.0, gt=0, description="How long the learned capacity remembers the router's observations, seconds.",
    )
    prior_weight: float = Field(
        20.0, ge=0, description="Requests the profile prior counts as against the router's observations.",
    )
    trend_damping_s: float = Field(
        60.0, gt=0,
        description="A rising trend is projected over a pool's startup horizon h damped: trend x d x (1 - exp(-h / "
        "d)), d this many seconds, so a trend seen for seconds does not add its slope x minutes of demand.",
    )
    peak_hold_s: float = Field(
        600.0, ge=0,
        description="The cheapest pool keeps headroom for the peak of the smoothed arrival rate over this many "
        "seconds past (bursts come back faster than replicas start), as many replicas as peak_hold_usd_per_hour "
        "pays for. Burst pools size for the forecast and keep one replica warm (cloud_idle_to_zero_s). 0: none.",
    )
    peak_hold_usd_per_hour: float = Field(
        1.0, ge=0,
        description="What the peak's headroom may cost, $/h: on the embedded default it holds the whole CPU edge "
        "pool ($0.10/h a replica); a GPU replica costing more than it is not held for a peak.",
    )
    shared_min_gain: float = Field(
        0.1, ge=0,
        description="On cores several pools share (the embedded default's local nodes), a replica more must add at "
        "least this share to their SLO capacity, else it is not started (it would only take CPU from the others).",
    )


@dataclass
class _Memory:
    """cost_aware's part of PolicyState.memory (JSON values only)."""

    last_at_s: float | None = None
    level_rps: float = 0.0  # smoothed total arrival rate
    trend_rps_per_s: float = 0.0
    corrections: dict[str, list[float]] = field(default_factory=dict)  # pool -> Correction's four fields
    idle_since_s: dict[str, float] = field(default_factory=dict)  # burst pools: first tick they were not needed
    demand_history: list[list[float]] = field(default_factory=list)  # [at_s, smoothed rps less noise], oldest first
    needed_history: dict[str, list[list[float]]] = field(default_factory=dict)  # pool -> [at_s, replicas needed]
    needed_pools: list[str] = field(default_factory=list)  # burst pools needed at some tick (kept warm after)
    first_at_s: float | None = None  # first tick of this controller run (see CostAware.__call__)

    @classmethod
    def load(cls, memory: Mapping[str, Any]) -> _Memory:
        return cls(memory.get("last_at_s"), float(memory.get("level_rps", 0.0)),
                   float(memory.get("trend_rps_per_s", 0.0)),
                   {p: list(v) for p, v in (memory.get("corrections") or {}).items()},
                   dict(memory.get("idle_since_s") or {}),
                   [list(x) for x in memory.get("demand_history") or []],
                   {p: [list(x) for x in v] for p, v in (memory.get("needed_history") or {}).items()},
                   list(memory.get("needed_pools") or []), memory.get("first_at_s"))

    def dump(self) -> dict[str, Any]:
        return {"last_at_s": self.last_at_s, "level_rps": self.level_rps, "trend_rps_per_s": self.trend_rps_per_s,
                "corrections": self.corrections, "idle_since_s": self.idle_since_s,
                "demand_history": self.demand_history, "needed_history": self.needed_history,
                "needed_pools": self.needed_pools, "first_at_s": self.first_at_s}

    def peak_rps(self, since_s: float) -> float:
        """The highest smoothed arrival rate of the ticks at or after ``since_s``."""
        return max((d for t, d in self.demand_history if t >= since_s), default=0.0)

    def correction(self, pool: str) -> Correction:
        c = self.corrections.get(pool)
        if c and len(c) == 3:  # state saved before TTFT had its own weight
            c = [*c, c[2]]
        return Correction(*c) if c else Correction()


@dataclass(frozen=True)
class _Pool:
    """One pool's figures for this tick."""

    name: str
    capacity: Capacity
    slo_max_prompt_tokens: int | None  # longer prompts are left to later pools
    share: float  # of all requests, those it may take within the SLO
    horizon_s: float
    unit_cost: float  # $/h per request/s of SLO capacity


class CostAware:
    """Size the pools from demand in requests/s, cheapest SLO capacity first.

    Per pool, the capacity at the SLO: the largest per-replica concurrency at which the recent request mix's
    predicted p95 TTFT and E2E stay within ``slo_margin`` of the objectives (its profile, corrected by what the
    router measured), and the requests/s it serves there. Pools fill in order of price per unit of that capacity.
    Demand = arrivals + refusals + queued / backlog_drain_s, plus the smoothed rising trend over each pool's own
    startup horizon. A pool gets the share of the demand it may take within the SLO (prompts it serves in time)
    and is given the fewest replicas whose SLO-safe slots pass on at most ``overflow_target`` of it (Erlang B);
    the rest spills to the next pool, which is sized for it over *its* horizon — so a GPU pool starts early when
    demand within its startup will exceed the edge pool. The router gets the fill order and each pool's SLO-safe
    concurrency. A burst pool not needed keeps one warm replica for ``cloud_idle_to_zero_s``, then goes to zero
    (one never needed since the controller started is not kept warm). The cheapest pool also keeps headroom for
    the recent peak (``peak_hold_s``, as far as ``peak_hold_usd_per_hour`` pays), every pool the most replicas it
    needed within its startup horizon (ski rental), and a rising trend is projected damped (``trend_damping_s``).
    No pool is planned below its in-flight load, and a pool at zero with requests waiting for it is started.
    """

    Knobs = CostAwareKnobs

    def __init__(self, config: PolicyFile) -> None:
        self.config = config
        self.knobs = CostAwareKnobs.model_validate(config.policy.knobs)
        self.profiles = {n: pc.profile or _flat_profile(pc, self.knobs) for n, pc in config.pools.items()}

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        k = self.knobs
        mem = _Memory.load(state.memory)
        if mem.first_at_s is None or mem.last_at_s is None or not 0 <= now - mem.last_at_s <= k.rate_smoothing_s:
            # The first tick, or the first after the controller was away longer than the level's time constant
            # (a new `elo run` restoring old state): what it watched before says nothing about the load now.
            mem.first_at_s = now
        watched_s = now - mem.first_at_s
        pools = {n: p for n, p in snapshot.pools.items() if n in self.config.pools}
        if not pools:
            return ScalePlan.hold(snapshot, "cost_aware: none of the configured pools is observed"), state

        arrivals = sum(p.arrival_rate_rps for p in pools.values())
        queued = sum(p.queued_requests for p in pools.values())
        self._smooth(mem, arrivals, now)
        self._learn(mem, pools, now)
        # The window's arrival count is Poisson: a change beyond two standard deviations of the smoothed level
        # counts at once (a real step up or down); smaller excursions are noise the smoothing absorbs.
        window_s = max(p.window_s for p in pools.values())
        noise = 2.0 * math.sqrt(max(mem.level_rps, 1.0 / window_s) / window_s)
        rate = arrivals if abs(arrivals - mem.level_rps) > noise else mem.level_rps
        demand = rate + queued / k.backlog_drain_s

        def forecast(horizon_s: float) -> float:
            # Only a rising trend is projected (decreases wait for the data and the downscale delay), damped: the
            # slope of the last half-minute says little about the demand minutes ahead.
            d = k.trend_damping_s
            return demand + max(0.0, mem.trend_rps_per_s) * d * (1.0 - math.exp(-horizon_s / d))

        figures = self._figures(pools, snapshot.mix, mem)
        order = sorted(figures, key=lambda n: (figures[n].unit_cost, n))
        mem.demand_history = [x for x in mem.demand_history if x[0] > now - k.peak_hold_s]
        # The smoothed level less the Poisson noise of a window's count: noise does not make a peak, a burst does.
        mem.demand_history.append([now, max(0.0, mem.level_rps - noise)])
        targets: dict[str, PoolTarget] = {}
        notes: list[str] = []
        details: dict[str, Any] = {}
        release_now: list[str] = []
        spilled: dict[str, int] = {}  # pool -> replicas the demand forecast alone asks of it (before any headroom)
        for rank, name in enumerate(order):
            p, pc, f = pools[name], self.config.pools[name], figures[name]
            need_rps = ahead_rps = forecast(f.horizon_s)
            hold_s = k.peak_hold_s if rank == 0 else 0.0  # only the cheapest pool holds a peak
            peak_rps = mem.peak_rps(now - hold_s) if hold_s > 0 else 0.0
            want, offered_rps, overflow_rps = self._cascade(order, figures, pools, ahead_rps, f.horizon_s)[name]
            spilled[name] = want
            note = (f"{name}: {f.capacity.describe()}; takes {offered_rps:.2f} of {ahead_rps:.2f} rps by "
                    f"+{f.horizon_s:.0f}s -> {want} replica{'s' if want != 1 else ''}"
                    + (f", passes on {overflow_rps:.2f} rps" if overflow_rps > 0.005 else ""))
            if peak_rps > ahead_rps + 0.005:
                # Headroom for the recent peak, as far as its price allows (cheap idle replicas are worth holding).
                at_peak = self._cascade(order, figures, pools, peak_rps, f.horizon_s)[name][0]
                afford = (math.inf if pc.cost_per_hour_usd <= 0
                          else math.floor(k.peak_hold_usd_per_hour / pc.cost_per_hour_usd + 1e-9))
                extra = int(min(max(0, at_peak - want), afford))
                if extra:
                    want += extra
                    need_rps = peak_rps
                    note += (f", {extra} more for its {hold_s:.0f}s peak of {peak_rps:.2f} rps "
                             f"(${extra * pc.cost_per_hour_usd:.2f}/h of headroom)")
            # Ski rental: a replica let go and needed again costs its startup once more, so a pool keeps the most
            # replicas it needed within its own startup horizon.
            history = [x for x in mem.needed_history.get(name, []) if x[0] > now - f.horizon_s] + [[now, want]]
            mem.needed_history[name] = history
            recent = int(max(x[1] for x in history))
            if recent > want:
                want = recent
                note += f", kept at {want}: needed within its {f.horizon_s:.0f}s startup"
            needed = want
            if f.slo_max_prompt_tokens is not None:
                note += f", prompts <= {f.slo_max_prompt_tokens} tokens ({f.share:.0%} of requests)"
            # Never plan a pool below the requests it is working on now (they drain once routing moves away).
            per = max(1, f.capacity.concurrency)
            floor = min(replicas_for(p.ongoing_requests, per), p.replicas)
            if floor > want:
                want = floor
                note += f", kept at {want} for its {p.ongoing_requests} requests in flight"
            if p.queued_requests > 0:
                # Requests queued or held for this pool (every pool before it full, or too big for them): the
                # router found no SLO-safe room for them anywhere, so this pool grows to hold what it has at its
                # SLO-safe concurrency, whatever the forecast (from zero: only it will serve them).
                queue_need = min(pc.max_replicas, replicas_for(p.ongoing_requests, per))
                if queue_need > want:
                    want = queue_need
                    note += (f", {p.queued_requests} waiting for it: start {want} from zero" if p.replicas == 0 else
                             f", {p.queued_requests} queued beyond its slots: {want} for {p.ongoing_requests} "
                             "in flight")
            if rank > 0:
                want, idle_note, never_needed = self._keep_warm(mem, name, p, needed, want, now, watched_s)
                note += idle_note
                if never_needed:
                    release_now.append(name)
            targets[name] = PoolTarget.for_replicas(want, pc.replicas_per_node)
            notes.append(note)
            details[name] = {"capacity": _capacity_fields(f.capacity), "horizon_s": round(f.horizon_s, 1),
                             "demand_rps": round(need_rps, 3), "forecast_rps": round(ahead_rps, 3),
                             "peak_rps": round(peak_rps, 3), "peak_hold_s": round(hold_s, 1),
                             "offered_rps": round(offered_rps, 3),
                             "overflow_rps": round(overflow_rps, 3), "slo_max_prompt_tokens": f.slo_max_prompt_tokens,
                             "needed_replicas": needed, "replicas": want,
                             "unit_cost_usd_per_rps_hour": _finite(f.unit_cost)}

        wants = {n: t.replicas for n, t in targets.items()}
        refused: dict[str, str] = {}
        yields: dict[str, str] = {}
        rps = {n: f.capacity.rps for n, f in figures.items()}
        for machine in snapshot.shared:
            # Who yields now (ready replicas: the router's admission), and who will once the replicas starting or
            # wanted are ready (the sizing: a yielding pool's replicas draw no cores, so one more adds nothing).
            here = self._yield_cores(machine, order, rps, spilled, {n: p.ready_replicas for n, p in pools.items()})
            soon = self._yield_cores(machine, order, rps, wants,
                                     {n: max(p.replicas, wants.get(n, 0)) for n, p in pools.items()})
            yields.update(here)
            for name, (kept, why, fields) in self._share_cores(machine, order, pools, figures, wants,
                                                               frozenset(here), frozenset(soon)).items():
                i = order.index(name)
                if kept < wants[name]:
                    notes[i] += f"; {why}"
                    refused[name] = why
                    targets[name] = PoolTarget.for_replicas(kept, self.config.pools[name].replicas_per_node)
                    details[name]["replicas"] = kept
                if name in here:
                    notes[i] += f"; {here[name]}"
                    fields["yields"] = here[name]
                details[name]["machine"] = fields

        routing = RoutingPlan(
            fill_order=order,
            pools={n: PoolAdmission(max_concurrency_per_replica=figures[n].capacity.concurrency,
                                    slo_max_prompt_tokens=figures[n].slo_max_prompt_tokens,
                                    capacity_rps_per_replica=round(figures[n].capacity.rps, 4),
                                    basis=_basis(figures[n].capacity), yields=n in yields) for n in order},
            reason="fill order by $/h per rps of SLO capacity: " + ", ".join(
                f"{n} {_finite(figures[n].unit_cost)}" for n in order),
        )
        reason = (f"cost_aware: demand {demand:.2f} rps (arrivals {arrivals:.2f}, smoothed {mem.level_rps:.2f}, "
                  f"trend {mem.trend_rps_per_s:+.3f} rps/s, {queued} queued); " + "; ".join(notes)
                  + "; fill order " + ", ".join(order))
        mem.last_at_s = now
        plan_details = {"demand_rps": round(demand, 3), "arrivals_rps": round(arrivals, 3),
                        "smoothed_rps": round(mem.level_rps, 3), "trend_rps_per_s": round(mem.trend_rps_per_s, 4),
                        "queued": queued, "fill_order": order, "pools": details}
        return (ScalePlan(targets, reason, routing=routing, details=plan_details, refused=refused or None,
                          release_now=tuple(release_now)),
                replace(state, memory=mem.dump()))

    # --- capacity ----------------------------------------------------------------------------------------------

    def _figures(self, pools: Mapping[str, PoolSnapshot], mix: RequestMix, mem: _Memory) -> dict[str, _Pool]:
        k, slo = self.knobs, self.config.slo
        out = {}
        for name, p in pools.items():
            pc, profile = self.config.pools[name], self.profiles[name]
            corr = mem.correction(name)
            others = [n for n in pools if n != name]
            # Eligible requests of the mix (the pool's size limits), then those within its TTFT objective.
            eligible = RequestMix(*_unzip([(a, b) for a, b in zip(mix.prompt_tokens, mix.output_tokens, strict=True)
                                           if _fits(pc, a, b)])) if len(mix) else mix
            slots = p.max_concurrency_per_replica or profile.max_concurrency
            cap = capacity_at_slo(profile, eligible, ttft_slo_s=slo.ttft_p95_s, e2e_slo_s=slo.e2e_p95_s,
                                  max_concurrency=slots, correction=corr, prior_weight=k.prior_weight,
                                  margin=k.slo_margin, prefill_utilisation=k.prefill_utilisation)
            max_prompt = None
            if others and cap.concurrency > 0:
                max_prompt = _longest_prompt(profile, cap, slo.ttft_p95_s * k.slo_margin)
                if len(mix) and all(a <= max_prompt for a in eligible.prompt_tokens):
                    max_prompt = max_prompt if max(mix.prompt_tokens) > max_prompt else None
            share = (eligible.share_within(max_prompt) * len(eligible) / len(mix)) if len(mix) else 1.0
            if cap.concurrency == 0:
                share = 0.0
            unit_cost = pc.cost_per_hour_usd / cap.rps if cap.rps > 0 else math.inf
            out[name] = _Pool(name, cap, max_prompt, share, _horizon_s(p, pc), unit_cost)
        return out

    def _cascade(self, order: list[str], figures: Mapping[str, _Pool], pools: Mapping[str, PoolSnapshot],
                 demand_rps: float, horizon_s: float) -> dict[str, tuple[int, float, float]]:
        """Replicas per pool for ``demand_rps`` at ``horizon_s``: each pool, cheapest first, takes its share of what
        is left and passes on its overflow; a pool that starts slower than ``horizon_s`` counts only with the
        replicas it has. Returns pool -> (replicas, rps offered to it, rps it passes on)."""
        out = {}
        untaken = demand_rps  # requests no earlier pool may take within the SLO (prompt too long, ineligible)
        overflow = 0.0  # requests an earlier pool could take but had no SLO-safe room for
        taken_share = 0.0  # share of all requests some earlier pool takes within the SLO
        for name in order:
            f, pc, p = figures[name], self.config.pools[name], pools[name]
            cap = f.capacity
            frac = max(0.0, f.share - taken_share) / (1.0 - taken_share) if taken_share < 1.0 else 0.0
            # Earlier pools sized to pass on at most overflow_target of the demand meet the target: their residual
            # overflow alone does not start this pool (it would keep a GPU up for a request an hour).
            spill = overflow if overflow > self.knobs.overflow_target * demand_rps + 1e-9 else 0.0
            offered = spill + untaken * frac if cap.concurrency > 0 else 0.0
            limit = pc.max_replicas if f.horizon_s <= horizon_s + 1e-9 else min(pc.max_replicas, p.replicas)
            if offered <= 0:
                out[name] = (0, 0.0, 0.0)
                continue
            erlangs = offered * cap.service_s
            # A request finding no SLO-safe slot may still wait for one within the objectives' slack (the router
            # queues it when no later pool has room): the pool passes on what would wait beyond that slack. The
            # E2E slack is a typical request's (its mean service), the TTFT slack the p95's.
            slo, margin = self.config.slo, self.knobs.slo_margin
            slack_s = max(0.0, min(slo.ttft_p95_s * margin - cap.ttft_p95_s, slo.e2e_p95_s * margin - cap.service_s))
            slots = slots_within(erlangs, self.knobs.overflow_target, limit * cap.concurrency, slack_s, cap.service_s)
            replicas = min(limit, max(-(-slots // cap.concurrency), replicas_for(offered, cap.rps)))
            passes = (offered * late_share(replicas * cap.concurrency, erlangs, slack_s, cap.service_s)
                      if replicas else offered)
            if offered > replicas * cap.rps:  # prefill-bound or capped: beyond its rate everything spills
                passes = max(passes, offered - replicas * cap.rps)
            out[name] = (replicas, offered, passes)
            untaken *= 1.0 - frac
            overflow = passes
            taken_share = max(taken_share, f.share)
        return out

    def _share_cores(self, machine: SharedCores, order: list[str], pools: Mapping[str, PoolSnapshot],
                     figures: Mapping[str, _Pool], wants: Mapping[str, int], idle_now: frozenset[str] = frozenset(),
                     idle_soon: frozenset[str] = frozenset()) -> dict[str, tuple[int, str, dict]]:
        """Scale-outs on shared cores, cheapest pool first, one replica at a time, only while each adds at least
        ``shared_min_gain`` to the machine's SLO capacity (shrinking pools free their cores first). A pool at zero
        with requests waiting for it still gets its first replica: no request is left without one. Pools that
        yield their cores count as drawing none: those yielding now, and for another pool's growth also those that
        will once it is ready (so vLLM is not grown for the edge pool's threads, which will stand aside; while vLLM
        starts, the edge pool still grows to bridge it).
        Returns pool -> (replicas kept, why the rest was refused, figures for the decision)."""
        here = [n for n in order if n in machine.pools and n in pools]
        rps = {n: figures[n].capacity.rps for n in here}
        kept = {n: min(pools[n].replicas, wants[n]) for n in here}
        why: dict[str, str] = {}
        for name in here:
            idle = idle_now | (idle_soon - {name})
            while kept[name] < wants[name]:
                trial = {**kept, name: kept[name] + 1}
                before, after = (machine.capacity_rps({n: 0 if n in idle else c for n, c in k.items()}, rps)
                                 for k in (kept, trial))
                waiting = kept[name] == 0 and pools[name].queued_requests > 0
                if not waiting and (after <= before + 1e-12
                                    or after < before * (1.0 + self.knobs.shared_min_gain) - 1e-12):
                    why[name] = (f"{name} {kept[name]}->{kept[name] + 1} would add "
                                 + ("no capacity" if after <= before + 1e-12 else f"only {after / before - 1:.0%}")
                                 + (" (it yields its cores)" if name in idle else "")
                                 + f": {machine.describe(trial)}, SLO capacity {before:.2f} -> {after:.2f} rps")
                    break
                kept[name] += 1
        speed = machine.speed(kept)
        return {n: (kept[n], why.get(n, ""), {
            "name": machine.name, "cores": machine.cores, "busy_cores_per_replica": machine.busy_cores[n],
            "replicas_on_machine": sum(kept.values()), "speed": round(speed, 3),
            "capacity_rps": round(machine.capacity_rps(kept, rps), 4), "wanted_replicas": wants[n],
            "refused": why.get(n)}) for n in here}

    @staticmethod
    def _yield_cores(machine: SharedCores, order: list[str], rps: Mapping[str, float], needed: Mapping[str, int],
                     replicas: Mapping[str, int]) -> dict[str, str]:
        """Pools that yield their cores (the router sends them only what no other pool has room for): on cores
        shared with another pool that has ``replicas`` and is ``needed`` (for the router's admission: by the demand
        forecast itself; for the sizing: for any reason), when the machine serves more requests/s at the SLO
        (``rps`` per replica alone) without this pool's busy threads than with them. On the embedded default that
        is the slower engine per busy core (with the demo model on a 2-vCPU VM, CPU vLLM: transformers serves more
        there). A burst pool kept only as headroom (warm, peak, ski rental) is not one to yield to, so light load
        stays on the cheap pool, and the burst pool drains and is let go. Returns pool -> why, in numbers."""
        here = [n for n in order if n in machine.pools and n in replicas]
        serving = {n: replicas[n] for n in here}
        out: dict[str, str] = {}
        for name in here:
            faster = [n for n in here if n != name and n not in out and serving[n] > 0 and needed.get(n, 0) > 0]
            if not faster or serving[name] == 0:
                continue
            busy, alone = machine.capacity_rps(serving, rps), machine.capacity_rps({**serving, name: 0}, rps)
            if alone > busy * (1.0 + 1e-9):
                out[name] = (f"{name} yields its cores to {', '.join(faster)} (last resort only): "
                             f"{machine.describe(serving)}, SLO capacity {busy:.2f} rps with {name} busy, "
                             f"{alone:.2f} without")
                serving[name] = 0
        return out

    # --- learning and smoothing --------------------------------------------------------------------------------

    def _learn(self, mem: _Memory, pools: Mapping[str, PoolSnapshot], now: float) -> None:
        """Fold the router's service samples into each pool's correction: decayed with ``learn_time_constant_s``;
        a sample stays in the router's window for several ticks, so each tick adds its share of the window."""
        dt = 0.0 if mem.last_at_s is None else max(0.0, now - mem.last_at_s)
        decay = math.exp(-dt / self.knobs.learn_time_constant_s)
        for name, p in pools.items():
            corr = mem.correction(name).decayed(decay)
            part = min(1.0, dt / p.window_s) if mem.last_at_s is not None else 1.0
            for c in p.by_concurrency:
                corr = corr.observe(self.profiles[name], c.concurrency, c.requests * part, c.ttft_mean_s,
                                    c.tpot_mean_s, c.prompt_tokens_mean)
            if corr.weight > 1e-6:
                mem.corrections[name] = [corr.log_ttft_sum, corr.log_tpot_sum, corr.weight, corr.ttft_weight]
            else:
                mem.corrections.pop(name, None)

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

    def _keep_warm(self, mem: _Memory, name: str, p: PoolSnapshot, needed: int, want: int,
                   now: float, watched_s: float) -> tuple[int, str, bool]:
        """A burst pool no longer needed keeps one replica for cloud_idle_to_zero_s: its cold start costs minutes.
        One never needed since the controller started (its replicas are the deployment's initial ones) is not kept
        warm: nothing says the burst it would be warm for comes. Once this controller run has watched the arrival
        rate for rate_smoothing_s (``watched_s`` >= the level's time constant) without needing it, it goes without
        the downscale delay (the third value): that delay guards against letting go of capacity just needed, and
        this never was."""
        idle = needed == 0 and p.queued_requests == 0
        if not idle:
            mem.needed_pools = sorted({*mem.needed_pools, name})
        if not idle or p.replicas == 0:
            mem.idle_since_s.pop(name, None)
            return want, "", False
        if name not in mem.needed_pools:
            if watched_s >= self.knobs.rate_smoothing_s:
                return want, f", never needed in {watched_s:.0f}s: released without the downscale delay", True
            return want, f", never needed yet ({watched_s:.0f}s of {self.knobs.rate_smoothing_s:.0f}s watched)", False
        since = mem.idle_since_s.setdefault(name, now)
        idle_s = now - since
        if idle_s < self.knobs.cloud_idle_to_zero_s:
            return (max(want, 1), f", not needed for {idle_s:.0f}s of {self.knobs.cloud_idle_to_zero_s:.0f}s: "
                    "kept warm", False)
        return want, f", not needed for {idle_s:.0f}s >= {self.knobs.cloud_idle_to_zero_s:.0f}s: to zero", False


def _flat_profile(pc: PoolPolicy, k: CostAwareKnobs) -> ReplicaProfile:
    """The prior of a pool without a profile: ``target_ongoing_requests_per_replica`` slots, each serving a 64-token
    request in ``assumed_service_s`` whatever the concurrency (10% to the first token)."""
    slots = max(1, int(pc.target_ongoing_requests_per_replica))
    return ReplicaProfile(
        name="flat prior", source="target_ongoing_requests_per_replica and assumed_service_s (no profile given)",
        max_concurrency=slots, prefill_tokens_per_s=1e9,
        points=[ProfilePoint(concurrency=1, ttft_overhead_s=0.1 * k.assumed_service_s,
                             tpot_s=0.9 * k.assumed_service_s / 63)])


def _longest_prompt(profile: ReplicaProfile, cap: Capacity, ttft_s: float) -> int:
    """Longest prompt whose predicted TTFT at the pool's SLO-safe concurrency stays within ``ttft_s``."""
    room_s = ttft_s / cap.ttft_scale - profile.ttft_overhead_s(cap.concurrency)
    return max(0, int(room_s / profile.prefill_s_per_token(cap.concurrency)))


def _fits(pc: PoolPolicy, prompt: int, output: int) -> bool:
    return ((pc.max_prompt_tokens is None or prompt <= pc.max_prompt_tokens)
            and (pc.max_output_tokens is None or output <= pc.max_output_tokens))


def _unzip(pairs: list[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(a for a, _ in pairs), tuple(b for _, b in pairs)


def _horizon_s(p: PoolSnapshot, pc: PoolPolicy) -> float:
    """How far ahead a new replica of this pool must be asked for: its measured ask -> ready (node start
    included), else the configured startup_s; never less than a measured node start alone."""
    replica = p.replica_startup_s if p.replica_startup_s is not None else pc.startup_s
    return max(replica, p.node_startup_s or 0.0)


def _basis(cap: Capacity) -> str:
    return f"learned from {cap.samples:.0f} requests" if cap.samples >= 1 else "profile prior"


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _capacity_fields(cap: Capacity) -> dict[str, Any]:
    return {"concurrency_per_replica": cap.concurrency, "rps_per_replica": round(cap.rps, 4),
            "service_s": round(cap.service_s, 4), "ttft_p95_s": round(cap.ttft_p95_s, 4),
            "e2e_p95_s": round(cap.e2e_p95_s, 4), "limited_by": cap.limited_by,
            "ttft_scale": round(cap.ttft_scale, 3), "tpot_scale": round(cap.tpot_scale, 3),
            "samples": round(cap.samples, 1)}
