"""The runs a policy is compared with, each a policy file (+ sim config) run through the same Controller: static
provisioning for the peak, edge only, the best static mix, Ray Serve's default autoscaler, a Knative-KPA-like
autoscaler, GPU only (no edge pool), and the clairvoyant bound.

Baselines keep the policy file's pools, prices, min/max bounds (capacity caps) and SLO, and drop this project's
own guardrails (step limits, cooldown, budget), which the systems they stand for do not have:

* **Ray Serve default** — ``queue_target`` with Ray Serve 2.60's ``AutoscalingConfig`` defaults
  (``ray/serve/config.py``): ``target_ongoing_requests`` 2 (``DEFAULT_TARGET_ONGOING_REQUESTS``),
  ``upscale_delay_s`` 30, ``downscale_delay_s`` 600, no step limit (``upscaling_factor``/``downscaling_factor``
  unset). Difference: Ray averages ongoing requests over ``look_back_period_s`` (30 s); queue_target reads the
  tick's value, and the delays demand the wish be continuous. No routing plan: the router's configured order.
* **Knative KPA-like** — :mod:`orchestrator.control.policies.kpa` with Knative's defaults (60 s stable window,
  6 s panic window, 200% panic threshold, 70% target utilisation), ticking every 2 s like Knative's autoscaler.
* **GPU only** — the policy under test with the edge pools' bounds at 0, no edge replica at start, and the edge
  pools eligible for no request (the router never sends there).
* **static peak** — every pool held at the clairvoyant schedule's peak, from time 0.
* **edge only** — the edge (transformers) pools held at their capacity cap, every other pool at 0 and eligible
  for nothing.
* **best static mix** — the cheapest constant replica counts per pool that reach the target attainment in replay
  (:func:`best_static_mix`, a small grid search).
* **oracle** — the clairvoyant bound, see :func:`plan_oracle`.

The static runs and the oracle route like the controller's plan does (``deployments.routing.route`` with a
:class:`~deployments.contract.RoutingPlan`): pools filled cheapest SLO capacity first, each up to its SLO-safe
concurrency per replica, computed with :func:`orchestrator.control.capacity.capacity_at_slo` on the whole
trace's request mix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from deployments.config import Eligibility
from deployments.contract import PoolAdmission, RoutingPlan
from orchestrator.control.capacity import RequestMix, capacity_at_slo
from orchestrator.control.config import PolicyFile
from orchestrator.control.machine import SharedCores
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies import PolicyState, apply_guardrails, build_policy
from orchestrator.control.snapshot import ClusterSnapshot
from orchestrator.sim.engine import RunSpec, SimResult, Workload
from orchestrator.sim.model import SimConfig
from orchestrator.sim.profile import ServiceCurve

KPA_POLICY = "kpa"  # the registered name of orchestrator.control.policies.kpa:Kpa
RAY_SERVE_DEFAULTS = {"target_ongoing_requests": 2.0, "upscale_delay_s": 30.0, "downscale_delay_s": 600.0}
DEFAULT_BOUND_ATTAINMENT = 0.99  # the SLO attainment the clairvoyant bound and the best static mix must reach
DEFAULT_BOUND_REPLAYS = 24  # replays the bound's capacity search may take
_NO_STEP_LIMIT = 10_000
_STATIC_GRID_MAX = 12  # replicas per pool the static-mix grid tries at most
_NOBODY = Eligibility(slo_classes=[])


def _variant(policy_file: PolicyFile, *, policy: Mapping[str, Any] | None = None,
             pools: Mapping[str, Mapping[str, Any]] | None = None, guardrails: Mapping[str, Any] | None = None,
             tick_interval_s: float | None = None) -> PolicyFile:
    """A validated copy of ``policy_file`` with some settings replaced (knobs checked by building the policy)."""
    d = policy_file.model_dump(mode="json")
    if policy is not None:
        d["policy"] = dict(policy)
    for name, changes in (pools or {}).items():
        d["pools"][name].update(changes)
    if guardrails is not None:
        d["guardrails"].update(guardrails)
    if tick_interval_s is not None:
        d["tick_interval_s"] = tick_interval_s
    pf = PolicyFile.model_validate(d)
    build_policy(pf)
    return pf


def _unguarded(policy_file: PolicyFile, **changes: Any) -> dict[str, Any]:
    g = {"max_step_per_tick": _NO_STEP_LIMIT, "max_step_per_tick_by_pool": {}, "upscale_delay_s": 0.0,
         "downscale_delay_s": 0.0, "cooldown_s": 0.0, "budget_usd_per_hour": None}
    g.update(changes)
    return g


def edge_pools(sim: SimConfig) -> list[str]:
    """The CPU (edge) pools: those whose engine is transformers."""
    return [n for n, p in sim.pools.items() if p.engine == "transformers"]


def pool_cap(policy_file: PolicyFile, sim: SimConfig, pool: str) -> int:
    """Replicas a pool can have at most: its max_replicas, within the nodes the backend provides."""
    pc, ps = policy_file.pools[pool], sim.pools[pool]
    return pc.max_replicas if ps.max_nodes is None else min(pc.max_replicas, ps.max_nodes * pc.replicas_per_node)


def policy_under_test(policy_file: PolicyFile, sim: SimConfig, label: str | None = None) -> RunSpec:
    return RunSpec(label or f"{policy_file.policy.name.rsplit(':', 1)[-1]} (policy)", policy_file, sim)


def ray_serve_default(policy_file: PolicyFile, sim: SimConfig) -> RunSpec:
    pf = _variant(
        policy_file, policy={"name": "queue_target", "knobs": {}},
        pools={n: {"target_ongoing_requests_per_replica": RAY_SERVE_DEFAULTS["target_ongoing_requests"]}
               for n in policy_file.pools},
        guardrails=_unguarded(policy_file, upscale_delay_s=RAY_SERVE_DEFAULTS["upscale_delay_s"],
                              downscale_delay_s=RAY_SERVE_DEFAULTS["downscale_delay_s"]))
    return RunSpec("Ray Serve default", pf, sim, notes=(
        "queue_target, target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s 600 (Ray Serve 2.60 "
        "AutoscalingConfig defaults)",))


def kpa_like(policy_file: PolicyFile, sim: SimConfig) -> RunSpec:
    pf = _variant(policy_file, policy={"name": KPA_POLICY, "knobs": {}}, guardrails=_unguarded(policy_file),
                  tick_interval_s=2.0)
    return RunSpec("KPA-like", pf, sim, notes=(
        "stable 60 s / panic 6 s windows, panic at 200%, 70% of target_ongoing_requests_per_replica, 2 s ticks",))


def gpu_only(policy_file: PolicyFile, sim: SimConfig) -> RunSpec | None:
    """The policy under test without its edge pools; None when there is no edge pool."""
    edges = edge_pools(sim)
    if not edges or len(edges) == len(sim.pools):
        return None
    pf = _variant(policy_file, policy=policy_file.policy.model_dump(mode="json"),
                  pools={n: {"min_replicas": 0, "max_replicas": 0} for n in edges})
    pools = {n: (p.model_copy(update={"initial_replicas": 0, "eligibility": _NOBODY}) if n in edges else p)
             for n, p in sim.pools.items()}
    return RunSpec("GPU only", pf, sim.model_copy(update={"pools": pools}),
                   notes=(f"edge pools {', '.join(edges)} disabled (max 0, no request eligible)",))


# --- schedules and the policy that follows them ----------------------------------------------------------------


class Schedule(Protocol):
    """Replicas per pool over time, and the routing plan the router is given throughout."""

    routing: RoutingPlan

    def target(self, pool: str, t: float) -> int: ...


@dataclass(frozen=True)
class StaticSchedule:
    """The same replicas per pool all the time."""

    replicas: Mapping[str, int]
    routing: RoutingPlan

    def target(self, pool: str, t: float) -> int:
        return self.replicas.get(pool, 0)


class ScheduledPolicy:
    """A policy that follows a precomputed schedule (the clairvoyant bound, a static mix): the replicas it names at
    each tick, and its routing plan (fill order and SLO-safe admission per pool)."""

    def __init__(self, schedule: Schedule, policy_file: PolicyFile) -> None:
        self.schedule, self.config = schedule, policy_file

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        targets = {n: PoolTarget.for_replicas(self.schedule.target(n, now), pc.replicas_per_node)
                   for n, pc in self.config.pools.items() if n in snapshot.pools}
        reason = "schedule: " + ", ".join(f"{n} {t.replicas}" for n, t in targets.items())
        return ScalePlan(targets, reason, routing=self.schedule.routing), state


def _scheduled_run(label: str, schedule: Schedule, policy_file: PolicyFile, sim: SimConfig,
                   initial: Mapping[str, int], notes: Sequence[str] = (), *,
                   disable_unused: Sequence[str] = ()) -> RunSpec:
    """A run that follows ``schedule`` exactly (no delays, no step limit, min 0); pools in ``disable_unused`` are
    eligible for no request (a deployment without them)."""
    pf = _variant(policy_file, policy={"name": "queue_target", "knobs": {}},
                  pools={n: {"min_replicas": 0} for n in policy_file.pools}, guardrails=_unguarded(policy_file))
    pools = {n: (p.model_copy(update={"initial_replicas": 0, "eligibility": _NOBODY}) if n in disable_unused else p)
             for n, p in sim.pools.items()}
    policy = apply_guardrails(ScheduledPolicy(schedule, pf), pf)
    return RunSpec(label, pf, sim.model_copy(update={"pools": pools}), policy=policy,
                   initial_replicas=dict(initial), notes=tuple(notes))


def met_slo(result: SimResult) -> np.ndarray:
    """Per request: served with TTFT and E2E within the SLO (what SLO attainment counts)."""
    return (result.status == 200) & (result.ttft_s <= result.slo.ttft_p95_s) & (result.e2e_s <= result.slo.e2e_p95_s)


# --- capacity at the SLO on the whole trace --------------------------------------------------------------------


@dataclass(frozen=True)
class TraceCapacity:
    """What each pool can do for this trace within the SLO, knowing every request.

    ``concurrency``/``rps``: SLO-safe concurrency per replica and the requests/s it serves
    (:func:`capacity_at_slo` on the requests the pool may take and can serve within the SLO at all, at the target
    quantile, no margin); ``order``: pools by $/h per rps of that capacity (cheapest first); ``fits``: per pool and
    request, within the SLO at that concurrency in isolation; ``service_s``: its E2E there; ``feasible``: requests
    some pool can serve within the SLO at all (alone on a replica).
    """

    concurrency: dict[str, int]
    rps: dict[str, float]
    unit_cost: dict[str, float]
    slo_max_prompt_tokens: dict[str, int | None]
    order: tuple[str, ...]
    cap: dict[str, int]
    eligible: dict[str, np.ndarray]
    fits: dict[str, np.ndarray]
    service_s: dict[str, np.ndarray]
    feasible: np.ndarray
    notes: tuple[str, ...] = ()

    def usable(self) -> list[str]:
        return [n for n in self.order if self.concurrency[n] > 0]

    def routing(self) -> RoutingPlan:
        pools = {n: PoolAdmission(max_concurrency_per_replica=self.concurrency[n],
                                  slo_max_prompt_tokens=self.slo_max_prompt_tokens[n],
                                  accepting=self.concurrency[n] > 0,
                                  capacity_rps_per_replica=round(self.rps[n], 4) if self.rps[n] > 0 else None,
                                  basis="clairvoyant: the whole trace's request mix")
                 for n in self.order}
        return RoutingPlan(fill_order=list(self.order), pools=pools, reason="fill order by $/h per rps of SLO "
                           "capacity: " + ", ".join(f"{n} {_fmt(self.unit_cost[n])}" for n in self.order))


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "inf"


def trace_capacity(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *,
                   attainment: float = DEFAULT_BOUND_ATTAINMENT) -> TraceCapacity:
    """Per pool, its capacity at the SLO for the trace's requests (see :class:`TraceCapacity`)."""
    p_tok, o_tok = workload.prompt_tokens, workload.output_tokens
    n_req = len(p_tok)
    slo = policy_file.slo
    in_context = np.ones(n_req, bool)
    if sim.max_model_len is not None:  # the router answers 400 before routing
        in_context = (p_tok < sim.max_model_len) & (p_tok + o_tok <= sim.max_model_len)
    out: dict[str, dict[str, Any]] = {k: {} for k in ("conc", "rps", "unit", "max_prompt", "cap", "elig", "fits",
                                                      "service")}
    feasible = np.zeros(n_req, bool)
    notes: list[str] = []
    for name, ps in sim.pools.items():
        pc = policy_file.pools[name]
        curve = ServiceCurve.of(ps.profile, ps.max_ongoing_requests)
        ok = _eligible(ps.eligibility, p_tok, o_tok) & in_context
        cap = pool_cap(policy_file, sim, name)
        ttft1, e2e1 = curve.isolated_latency(p_tok, o_tok, 1)
        servable = ok & (ttft1 <= slo.ttft_p95_s) & (e2e1 <= slo.e2e_p95_s)
        out["cap"][name], out["elig"][name] = cap, ok
        conc, rps = 0, 0.0
        if cap > 0 and servable.any():
            feasible |= servable
            c = capacity_at_slo(ps.profile, RequestMix(tuple(p_tok[servable].tolist()),
                                                       tuple(o_tok[servable].tolist())),
                                ttft_slo_s=slo.ttft_p95_s, e2e_slo_s=slo.e2e_p95_s,
                                max_concurrency=ps.max_ongoing_requests, margin=1.0, prefill_utilisation=1.0,
                                quantile=attainment)
            conc, rps = min(c.concurrency, curve.limit), c.rps
        out["conc"][name], out["rps"][name] = conc, rps
        if conc == 0:
            out["fits"][name] = np.zeros(n_req, bool)
            out["service"][name] = np.zeros(n_req)
            out["unit"][name] = math.inf
            out["max_prompt"][name] = None
            notes.append(f"{name}: not used (capped at 0, nothing eligible, or no request within the SLO)")
            continue
        ttft, e2e = curve.isolated_latency(p_tok, o_tok, conc)
        out["fits"][name] = ok & (ttft <= slo.ttft_p95_s) & (e2e <= slo.e2e_p95_s)
        out["service"][name] = e2e
        out["unit"][name] = pc.cost_per_hour_usd / rps if rps > 0 else math.inf
        longest = max(0, int((slo.ttft_p95_s - curve.overhead_s[conc]) / curve.prefill_s_per_token[conc]))
        out["max_prompt"][name] = longest if (ok & (p_tok > longest)).any() else None
    order = tuple(sorted(sim.pools, key=lambda n: (out["unit"][n], n)))
    usable = [n for n in order if out["conc"][n] > 0]
    if usable:  # the last pool in the fill order takes any prompt: nobody else would
        out["max_prompt"][usable[-1]] = None
    infeasible = int(n_req - feasible.sum())
    if infeasible:
        notes.append(f"{infeasible} requests no pool serves within the SLO even alone on a replica (or over the "
                     "context, or eligible nowhere)")
    return TraceCapacity(out["conc"], out["rps"], out["unit"], out["max_prompt"], order, out["cap"], out["elig"],
                         out["fits"], out["service"], feasible, tuple(notes))


def _eligible(e: Eligibility, prompt_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
    """Requests (without an SLO class, as trace rows are) a pool with eligibility ``e`` takes."""
    ok = np.ones(len(prompt_tokens), bool)
    if e.max_prompt_tokens is not None:
        ok &= prompt_tokens <= e.max_prompt_tokens
    if e.max_output_tokens is not None:
        ok &= output_tokens <= e.max_output_tokens
    if e.slo_classes is not None and "default" not in e.slo_classes:
        ok &= False
    return ok


# --- the clairvoyant bound -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OraclePlan:
    """Replicas per pool over time, planned knowing the whole trace, and the routing plan it runs with.

    ``need[pool][b]``: replicas serving in bucket ``b`` (``[b*bucket_s, (b+1)*bucket_s)``); ``intervals[pool]``:
    the (start_s, end_s) each replica serves, one list entry per replica, with short gaps merged (restarting
    costs the startup); a replica is asked for ``lead_s[pool]`` before its start (at time 0 if that is earlier:
    then it is ready at time 0, as the other runs' initial replicas are). ``schedule_cost_usd``: the cost of that
    schedule, startups included; ``fluid_cost_usd``: the same for the fluid lower bound the search started from.
    ``attainment``: SLO attainment of the schedule replayed in the simulator (None: not replayed).
    """

    bucket_s: float
    need: dict[str, np.ndarray]
    concurrency: dict[str, int]
    lead_s: dict[str, float]
    intervals: dict[str, list[tuple[float, float]]]
    order: tuple[str, ...]
    routing: RoutingPlan
    schedule_cost_usd: float
    target_attainment: float
    fluid_cost_usd: float = 0.0
    attainment: float | None = None
    replays: int = 0
    replay_cost_usd: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def meets_target(self) -> bool:
        return self.attainment is not None and self.attainment >= self.target_attainment - 1e-12

    def initial(self) -> dict[str, int]:
        return {p: sum(1 for s, _ in iv if s - self.lead_s[p] <= 0) for p, iv in self.intervals.items()}

    def target(self, pool: str, t: float) -> int:
        lead = self.lead_s[pool]
        return sum(1 for s, e in self.intervals[pool] if max(0.0, s - lead) <= t < e)

    def peak(self) -> dict[str, int]:
        return {p: int(n.max()) if len(n) else 0 for p, n in self.need.items()}


def _lead_s(policy_file: PolicyFile, sim: SimConfig) -> dict[str, float]:
    """How early a replica is asked for: the 95th percentile of node + replica startup, plus a tick."""
    return {n: sim.pools[n].node_startup_s.quantile(0.95) + sim.pools[n].replica_startup_s.quantile(0.95)
            + policy_file.tick_interval_s for n in sim.pools}


def _buckets(workload: Workload, bucket_s: float) -> tuple[int, np.ndarray]:
    nb = max(1, math.ceil((workload.duration_s + 1e-9) / bucket_s))
    return nb, np.minimum((workload.arrival_s // bucket_s).astype(int), nb - 1)


def _fluid_need(workload: Workload, sim: SimConfig, tc: TraceCapacity, bucket_s: float) -> tuple[
        dict[str, np.ndarray], list[str]]:
    """Replicas per pool and bucket in the fluid model: cheapest pool first, each request's service time at the
    pool's SLO-safe concurrency (Little's law) or its prompt's prefill time, whichever binds; no idle capacity,
    no queueing slack."""
    p_tok = workload.prompt_tokens
    nb, bucket = _buckets(workload, bucket_s)
    need = {n: np.zeros(nb, int) for n in sim.pools}
    notes: list[str] = []
    usable = tc.usable()
    if not usable:
        notes.append("no pool can serve the trace within the SLO; the bound plans nothing")
        return need, notes
    share = np.ones(len(p_tok))  # part of each request not yet assigned to a pool
    for k, name in enumerate(usable):
        ps = sim.pools[name]
        # The last pool takes whatever it may take, within the SLO or not; the others only what fits.
        takes = tc.eligible[name] if k == len(usable) - 1 else tc.fits[name]
        w = share * takes
        work = np.bincount(bucket, weights=w * tc.service_s[name], minlength=nb) / bucket_s
        prefill = (np.bincount(bucket, weights=w * p_tok, minlength=nb) / bucket_s
                   * ps.profile.prefill_throughput_s_per_token)
        demand = np.maximum(work / tc.concurrency[name], prefill)
        want = np.ceil(demand - 1e-9).astype(int)
        want[(demand > 0) & (want == 0)] = 1
        need[name] = np.minimum(want, tc.cap[name])
        frac = np.where(demand > 0, np.minimum(1.0, need[name] / np.where(demand > 0, demand, 1.0)), 1.0)
        share = share - w * frac[bucket]
    trimmed = _trim_shared(need, sim.shared(), tc)
    if trimmed:
        notes.append(f"on shared cores, {trimmed} replica-buckets left out that would only slow the others down")
    left = float(share[tc.feasible].sum())
    if left > 0.5:
        notes.append(f"about {left:.0f} requests exceed every pool's cap in the fluid model")
    return need, notes


def _adds_capacity(machine: SharedCores, counts: Mapping[str, int], name: str, rps: Mapping[str, float]) -> bool:
    """Whether one more replica of ``name`` serves more on the shared ``machine`` (beyond its cores a replica more
    only slows the others down)."""
    return machine.capacity_rps({**counts, name: counts[name] + 1}, rps) > machine.capacity_rps(counts, rps) + 1e-9


def _trim_shared(need: dict[str, np.ndarray], machines: Sequence[SharedCores], tc: TraceCapacity) -> int:
    """Per bucket, drop replicas of pools on a shared machine while the last one adds no capacity there, dearest
    pool first. Returns how many were dropped."""
    dropped = 0
    for machine in machines:
        here = [n for n in reversed(tc.order) if n in machine.pools and n in need]
        for b in range(len(need[here[0]]) if here else 0):
            counts = {n: int(need[n][b]) for n in here}
            for name in here:
                while counts[name] > 1 and not _adds_capacity(machine, {**counts, name: counts[name] - 1}, name,
                                                               tc.rps):
                    counts[name] -= 1
                    dropped += 1
                need[name][b] = counts[name]
    return dropped


def _intervals(need: np.ndarray, bucket_s: float, lead_s: float) -> list[tuple[float, float]]:
    """One (start, end) per replica level: the buckets where need >= level, gaps <= lead_s merged."""
    out: list[tuple[float, float]] = []
    for level in range(1, int(need.max(initial=0)) + 1):
        on = need >= level
        runs: list[list[float]] = []
        b = 0
        while b < len(on):
            if on[b]:
                start = b
                while b < len(on) and on[b]:
                    b += 1
                s, e = start * bucket_s, b * bucket_s
                if runs and s - runs[-1][1] <= lead_s:
                    runs[-1][1] = e
                else:
                    runs.append([s, e])
            else:
                b += 1
        out += [(s, e) for s, e in runs]
    return out


def _plan(need: Mapping[str, np.ndarray], tc: TraceCapacity, policy_file: PolicyFile, lead: Mapping[str, float],
          bucket_s: float, target: float, **extra: Any) -> OraclePlan:
    intervals = {n: _intervals(need[n], bucket_s, lead[n]) for n in need}
    cost = 0.0
    for n, iv in intervals.items():
        price_s = policy_file.pools[n].cost_per_hour_usd * policy_file.pools[n].replicas_per_node / 3600
        cost += sum((e - max(0.0, s - lead[n])) * price_s for s, e in iv) / policy_file.pools[n].replicas_per_node
    return OraclePlan(bucket_s, {n: v.copy() for n, v in need.items()}, dict(tc.concurrency), dict(lead), intervals,
                      tc.order, tc.routing(), cost, target, **extra)


def plan_fluid(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, bucket_s: float = 10.0,
               attainment: float = DEFAULT_BOUND_ATTAINMENT) -> OraclePlan:
    """The fluid lower bound the clairvoyant search starts from (not replayed).

    1. Per pool, its SLO-safe concurrency per replica on the trace's requests (:func:`trace_capacity`); a pool
       where no concurrency meets the SLO is not used.
    2. Pools are filled cheapest first ($/h per rps of SLO capacity), each up to its cap. A request goes to the
       cheapest pool that is eligible for it and serves it within the SLO at that concurrency; a pool at its cap
       passes the rest of its share on.
    3. Per bucket, a pool needs ``ceil(max(work / concurrency, prefill tokens / prefill rate))`` replicas, where
       work is the requests' service time per second (Little's law).
    4. Each replica is asked for its startup earlier (95th percentile of node + replica startup, plus a tick); a
       replica idle for less than that stays (stopping and restarting would cost as much).
    """
    tc = trace_capacity(workload, policy_file, sim, attainment=attainment)
    need, notes = _fluid_need(workload, sim, tc, bucket_s)
    plan = _plan(need, tc, policy_file, _lead_s(policy_file, sim), bucket_s, attainment, notes=(*tc.notes, *notes))
    return replace(plan, fluid_cost_usd=plan.schedule_cost_usd)


def plan_oracle(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, bucket_s: float = 10.0,
                attainment: float = DEFAULT_BOUND_ATTAINMENT, max_replays: int = DEFAULT_BOUND_REPLAYS,
                seed: int | None = None) -> OraclePlan:
    """The clairvoyant bound: the cheapest capacity schedule found that, replayed in the simulator, reaches
    ``attainment`` SLO attainment — a per-bucket capacity search with the simulator in the loop.

    Starts from the fluid lower bound (:func:`plan_fluid`) and replays it. While the attainment is below the
    target, the buckets whose arrivals missed the SLO most are raised, most misses first, until they hold the
    misses in excess of what the target allows: each gets one more replica of the cheapest pool ($/h per rps of
    SLO capacity) below its cap that may take the missed requests; a bucket raised twice already also raises the
    bucket before it (a backlog built up earlier). Replicas are asked for a startup ahead, so the capacity is
    ready when the bucket starts. Stops when the target is met, no bucket can be raised (every pool at its cap, or
    the misses are of requests no pool serves within the SLO), or after ``max_replays`` replays; then the plan
    with the highest attainment is returned and its notes say it misses the target.
    """
    if not 0 < attainment <= 1:
        raise ValueError(f"the bound's attainment must be in (0, 1], got {attainment}")
    tc = trace_capacity(workload, policy_file, sim, attainment=attainment)
    need, fluid_notes = _fluid_need(workload, sim, tc, bucket_s)
    lead = _lead_s(policy_file, sim)
    nb, bucket = _buckets(workload, bucket_s)
    n_req = len(workload)
    fluid_cost = _plan(need, tc, policy_file, lead, bucket_s, attainment).schedule_cost_usd
    allowed = math.floor((1.0 - attainment) * n_req + 1e-9) - int(n_req - tc.feasible.sum())
    raised = np.zeros(nb, int)
    usable = tc.usable()
    machines = sim.shared()
    best: OraclePlan | None = None
    stop = "the replay budget ran out"
    for replay in range(1, max(1, max_replays) + 1):
        plan = _plan(need, tc, policy_file, lead, bucket_s, attainment, fluid_cost_usd=fluid_cost)
        result = oracle_run(plan, policy_file, sim).run(workload, seed=seed)
        ok = met_slo(result)
        att = float(ok.mean()) if n_req else 1.0
        plan = replace(plan, attainment=att, replays=replay, replay_cost_usd=_cost(result))
        if best is None or att > (best.attainment or 0.0) + 1e-12 or plan.meets_target:
            best = plan
        if plan.meets_target:
            stop = ""
            break
        misses = ~ok & tc.feasible
        per_bucket = np.bincount(bucket[misses], minlength=nb)
        excess = max(1, int(misses.sum()) - max(0, allowed))
        changed = False
        covered = 0
        for b in np.argsort(-per_bucket, kind="stable"):
            if covered >= excess or per_bucket[b] == 0:
                break
            missed = misses & (bucket == b)
            up = _raise(need, tc, usable, int(b), missed, machines)
            if raised[b] >= 2 and b > 0:
                up = _raise(need, tc, usable, int(b) - 1, missed, machines) or up
            if up:
                raised[b] += 1
                covered += int(per_bucket[b])
                changed = True
        if not changed:
            stop = "no bucket with misses can be raised (pools at their caps, or requests no pool serves in time)"
            break
    assert best is not None
    notes = [*tc.notes, *fluid_notes]
    verdict = (f"replayed attainment {best.attainment:.2%} >= target {attainment:.0%}" if best.meets_target else
               f"MISSES the target {attainment:.0%}: best replayed attainment {best.attainment:.2%} ({stop})")
    notes.append(f"{verdict} after {best.replays} replay{'s' if best.replays != 1 else ''}; fluid lower bound "
                 f"${fluid_cost:,.3f}, schedule ${best.schedule_cost_usd:,.3f}")
    if allowed < 0:
        notes.append(f"the target is out of reach: at most {tc.feasible.mean():.2%} of the requests can meet the SLO")
    return replace(best, notes=tuple(notes))


def _raise(need: dict[str, np.ndarray], tc: TraceCapacity, usable: Sequence[str], b: int,
           missed: np.ndarray, machines: Sequence[SharedCores] = ()) -> bool:
    """One more replica in bucket ``b`` of the cheapest pool below its cap that may take a missed request and, on
    cores several pools share, adds capacity there (beyond the cores it only slows the others down)."""
    for name in usable:
        if need[name][b] < tc.cap[name] and (tc.eligible[name] & missed).any():
            machine = next((m for m in machines if name in m.pools), None)
            if machine is not None and not _adds_capacity(
                    machine, {p: int(need[p][b]) for p in machine.pools if p in need}, name, tc.rps):
                continue
            need[name][b] += 1
            return True
    return False


def oracle_run(plan: OraclePlan, policy_file: PolicyFile, sim: SimConfig, notes: Sequence[str] = ()) -> RunSpec:
    """The clairvoyant plan as a run: followed exactly (no delays, no step limit, min 0)."""
    return _scheduled_run("oracle", plan, policy_file, sim, plan.initial(), notes)


def oracle(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, bucket_s: float = 10.0,
           attainment: float = DEFAULT_BOUND_ATTAINMENT, max_replays: int = DEFAULT_BOUND_REPLAYS,
           seed: int | None = None) -> tuple[RunSpec, OraclePlan]:
    """The clairvoyant bound as a run, and its plan."""
    plan = plan_oracle(workload, policy_file, sim, bucket_s=bucket_s, attainment=attainment,
                       max_replays=max_replays, seed=seed)
    notes = (f"clairvoyant schedule in buckets of {bucket_s:g} s; SLO-safe concurrency per replica "
             + ", ".join(f"{n} {c}" for n, c in plan.concurrency.items()) + "; fill order "
             + ", ".join(plan.order), *plan.notes)
    return oracle_run(plan, policy_file, sim, notes), plan


# --- static baselines ------------------------------------------------------------------------------------------


def static_run(label: str, replicas: Mapping[str, int], policy_file: PolicyFile, sim: SimConfig,
               routing: RoutingPlan, notes: Sequence[str] = ()) -> RunSpec:
    """Every pool held at ``replicas`` from time 0, routed by ``routing``; a pool at 0 is left out of the
    deployment (eligible for no request)."""
    counts = {n: int(replicas.get(n, 0)) for n in policy_file.pools}
    return _scheduled_run(label, StaticSchedule(counts, routing), policy_file, sim, counts, notes,
                          disable_unused=[n for n, c in counts.items() if c == 0])


def _describe(replicas: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {c}" for n, c in replicas.items())


def static_peak(policy_file: PolicyFile, sim: SimConfig, plan: OraclePlan) -> RunSpec:
    """Every pool held at the clairvoyant schedule's peak, ready from time 0, no autoscaling."""
    peak = plan.peak()
    return static_run("static peak", peak, policy_file, sim, plan.routing,
                      ("peak of the clairvoyant schedule: " + _describe(peak),))


def edge_only(policy_file: PolicyFile, sim: SimConfig, routing: RoutingPlan | None = None) -> RunSpec | None:
    """The edge pools held at their capacity cap, every other pool left out; None without both kinds of pool."""
    edges = edge_pools(sim)
    if not edges or len(edges) == len(sim.pools):
        return None
    replicas = {n: (pool_cap(policy_file, sim, n) if n in edges else 0) for n in sim.pools}
    if not any(replicas.values()):
        return None
    routing = routing or RoutingPlan(fill_order=list(sim.pools))
    return static_run("edge only", replicas, policy_file, sim, routing,
                      (f"edge pools at their cap ({_describe({n: replicas[n] for n in edges})}), the others left "
                       "out",))


def _cost(result: SimResult) -> float:
    return sum(a.cost_usd for a in result.accounts.values())


@dataclass(frozen=True)
class StaticMix:
    """A constant replica count per pool, what it costs per hour and in its replay, and the attainment replayed."""

    replicas: dict[str, int]
    cost_usd_per_hour: float
    attainment: float | None
    meets_target: bool
    tried: int
    replay_cost_usd: float | None = None


def _static_price(policy_file: PolicyFile, replicas: Mapping[str, int]) -> float:
    total = 0.0
    for n, r in replicas.items():
        pc = policy_file.pools[n]
        total += -(-r // pc.replicas_per_node) * pc.replicas_per_node * pc.cost_per_hour_usd
    return total


def best_static_mix(workload: Workload, policy_file: PolicyFile, sim: SimConfig, routing: RoutingPlan, *,
                    attainment: float = DEFAULT_BOUND_ATTAINMENT, upper: Mapping[str, int] | None = None,
                    seed: int | None = None,
                    replay: Callable[[RunSpec], SimResult] | None = None) -> StaticMix:
    """The cheapest constant replica counts (0..``upper`` per pool, default the pools' caps, at most 12) whose
    replay reaches ``attainment``: mixes tried cheapest first, skipping any mix with no more replicas anywhere
    than one that already missed (attainment grows with capacity). None meeting it: the best attainment tried."""
    names = list(sim.pools)
    ups = {n: min(_STATIC_GRID_MAX, pool_cap(policy_file, sim, n) if upper is None
                  else min(upper[n], pool_cap(policy_file, sim, n))) for n in names}
    grid = [dict(zip(names, combo, strict=True))
            for combo in np.ndindex(*(ups[n] + 1 for n in names)) if any(combo)]
    grid = [{n: int(v) for n, v in g.items()} for g in grid]
    grid.sort(key=lambda g: (_static_price(policy_file, g), -sum(g.values()), tuple(g[n] for n in names)))
    run = replay or (lambda spec: spec.run(workload, seed=seed))
    failed: list[dict[str, int]] = []
    best: StaticMix | None = None
    tried = 0
    for mix in grid:
        if any(all(mix[n] <= f[n] for n in names) for f in failed):
            continue
        tried += 1
        result = run(static_run("static mix", mix, policy_file, sim, routing))
        att = float(met_slo(result).mean()) if len(workload) else 1.0
        price = _static_price(policy_file, mix)
        if att >= attainment - 1e-12:
            return StaticMix(mix, price, att, True, tried, _cost(result))
        failed.append(mix)
        if best is None or att > (best.attainment or 0.0) + 1e-12:
            best = StaticMix(mix, price, att, False, tried, _cost(result))
    if best is None:
        top = {n: ups[n] for n in names}
        return StaticMix(top, _static_price(policy_file, top), None, False, tried)
    return replace(best, tried=tried)


def best_static_mix_run(workload: Workload, policy_file: PolicyFile, sim: SimConfig, routing: RoutingPlan, *,
                        attainment: float = DEFAULT_BOUND_ATTAINMENT, upper: Mapping[str, int] | None = None,
                        seed: int | None = None, mix: StaticMix | None = None) -> RunSpec:
    mix = mix or best_static_mix(workload, policy_file, sim, routing, attainment=attainment, upper=upper, seed=seed)
    what = (f"cheapest static mix reaching {attainment:.0%} in replay" if mix.meets_target else
            f"no static mix tried reaches {attainment:.0%}; the one with the best attainment")
    return static_run("best static mix", mix.replicas, policy_file, sim, routing,
                      (f"{what}: {_describe(mix.replicas)} (${mix.cost_usd_per_hour:,.2f}/h; {mix.tried} mixes "
                       "replayed)",))


# --- the comparison --------------------------------------------------------------------------------------------


def comparison(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, label: str | None = None,
               bucket_s: float = 10.0, attainment: float = DEFAULT_BOUND_ATTAINMENT,
               max_replays: int = DEFAULT_BOUND_REPLAYS, seed: int | None = None) -> list[RunSpec]:
    """The policy under test, then every baseline, then the oracle (its schedule also sizes static peak and
    bounds the static-mix grid; its routing plan routes the static runs). A static mix is a schedule too: when the
    best one meets the target for less than the searched schedule in replay, it is the bound."""
    oracle_spec, plan = oracle(workload, policy_file, sim, bucket_s=bucket_s, attainment=attainment,
                               max_replays=max_replays, seed=seed)
    peak = plan.peak()
    upper = ({n: max(1, c) for n, c in peak.items()} if plan.meets_target
             else {n: pool_cap(policy_file, sim, n) for n in sim.pools})
    mix = best_static_mix(workload, policy_file, sim, plan.routing, attainment=attainment, upper=upper, seed=seed)
    # Neither reaching the target (the pools cannot carry the trace): the bound is the one that comes closest.
    closer = (not plan.meets_target and not mix.meets_target and mix.attainment is not None
              and mix.replay_cost_usd is not None and mix.attainment > (plan.attainment or 0.0) + 1e-12)
    if closer:
        oracle_spec = static_run("oracle", mix.replicas, policy_file, sim, plan.routing, (
            f"clairvoyant bound: nothing reaches {attainment:.0%}; the best static mix ({_describe(mix.replicas)}) "
            f"comes closest, {mix.attainment:.2%} for ${mix.replay_cost_usd:,.3f} in replay (the searched schedule: "
            f"{plan.attainment or 0.0:.2%})", *plan.notes))
    elif mix.meets_target and mix.replay_cost_usd is not None and (
            not plan.meets_target or plan.replay_cost_usd is None or mix.replay_cost_usd < plan.replay_cost_usd):
        searched = (f"${plan.replay_cost_usd:,.3f}" if plan.replay_cost_usd is not None else "-") + (
            "" if plan.meets_target else ", missing the target")
        oracle_spec = static_run("oracle", mix.replicas, policy_file, sim, plan.routing, (
            f"clairvoyant bound: the best static mix ({_describe(mix.replicas)}) meets {attainment:.0%} for "
            f"${mix.replay_cost_usd:,.3f} in replay, below the searched schedule ({searched})", *plan.notes))
    runs: Sequence[RunSpec | None] = (
        policy_under_test(policy_file, sim, label), static_peak(policy_file, sim, plan),
        edge_only(policy_file, sim, plan.routing),
        best_static_mix_run(workload, policy_file, sim, plan.routing, attainment=attainment, mix=mix),
        ray_serve_default(policy_file, sim), kpa_like(policy_file, sim), gpu_only(policy_file, sim), oracle_spec)
    return [r for r in runs if r is not None]


__all__ = ["DEFAULT_BOUND_ATTAINMENT", "DEFAULT_BOUND_REPLAYS", "KPA_POLICY", "RAY_SERVE_DEFAULTS", "OraclePlan",
           "ScheduledPolicy", "StaticMix", "StaticSchedule", "TraceCapacity", "best_static_mix",
           "best_static_mix_run", "comparison", "edge_only", "edge_pools", "gpu_only", "kpa_like", "met_slo",
           "oracle", "oracle_run", "plan_fluid", "plan_oracle", "policy_under_test", "pool_cap",
           "ray_serve_default", "static_peak", "static_run", "trace_capacity"]
