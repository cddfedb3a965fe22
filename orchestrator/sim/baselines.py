"""The runs a policy is compared with, each a policy file (+ sim config) run through the same Controller: static
provisioning for the peak, Ray Serve's default autoscaler, a Knative-KPA-like autoscaler, GPU only (no edge
pool), and the clairvoyant bound.

Baselines keep the policy file's pools, prices, min/max bounds (capacity caps) and SLO, and drop this project's
own guardrails (step limits, cooldown, budget), which the systems they stand for do not have:

* **Ray Serve default** — ``queue_target`` with Ray Serve 2.60's ``AutoscalingConfig`` defaults
  (``ray/serve/config.py``): ``target_ongoing_requests`` 2 (``DEFAULT_TARGET_ONGOING_REQUESTS``),
  ``upscale_delay_s`` 30, ``downscale_delay_s`` 600, no step limit (``upscaling_factor``/``downscaling_factor``
  unset). Difference: Ray averages ongoing requests over ``look_back_period_s`` (30 s); queue_target reads the
  tick's value, and the delays demand the wish be continuous.
* **Knative KPA-like** — :mod:`orchestrator.control.policies.kpa` with Knative's defaults (60 s stable window,
  6 s panic window, 200% panic threshold, 70% target utilisation), ticking every 2 s like Knative's autoscaler.
* **GPU only** — the policy under test with the edge pools' bounds at 0, no edge replica at start, and the edge
  pools eligible for no request (the router never sends there).
* **static peak** — every pool held at the replicas the clairvoyant plan needs at its peak, from time 0.
* **oracle** — see :func:`plan_oracle`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.config import Eligibility
from orchestrator.control.config import PolicyFile
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies import PolicyState, apply_guardrails, build_policy
from orchestrator.control.snapshot import ClusterSnapshot
from orchestrator.sim.engine import RunSpec, Workload
from orchestrator.sim.model import SimConfig

KPA_POLICY = "kpa"  # the registered name of orchestrator.control.policies.kpa:Kpa
RAY_SERVE_DEFAULTS = {"target_ongoing_requests": 2.0, "upscale_delay_s": 30.0, "downscale_delay_s": 600.0}
_NO_STEP_LIMIT = 10_000


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
    nobody = Eligibility(slo_classes=[])
    pools = {n: (p.model_copy(update={"initial_replicas": 0, "eligibility": nobody}) if n in edges else p)
             for n, p in sim.pools.items()}
    return RunSpec("GPU only", pf, sim.model_copy(update={"pools": pools}),
                   notes=(f"edge pools {', '.join(edges)} disabled (max 0, no request eligible)",))


# --- the clairvoyant bound -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OraclePlan:
    """Replicas per pool over time, planned knowing the whole trace.

    ``need[pool][b]``: replicas needed in bucket ``b`` (``[b*bucket_s, (b+1)*bucket_s)``); ``intervals[pool]``:
    the (start_s, end_s) each replica serves, one list entry per replica, with short gaps merged (restarting
    costs the startup); a replica is asked for ``lead_s[pool]`` before its start (at time 0 if that is earlier:
    then it is ready at time 0, as the other runs' initial replicas are). ``bound_cost_usd`` is the cost of
    that schedule, startups included, under the capacity model.
    """

    bucket_s: float
    need: dict[str, np.ndarray]
    concurrency: dict[str, int]
    lead_s: dict[str, float]
    intervals: dict[str, list[tuple[float, float]]]
    order: tuple[str, ...]
    bound_cost_usd: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def initial(self) -> dict[str, int]:
        return {p: sum(1 for s, _ in iv if s - self.lead_s[p] <= 0) for p, iv in self.intervals.items()}

    def target(self, pool: str, t: float) -> int:
        lead = self.lead_s[pool]
        return sum(1 for s, e in self.intervals[pool] if max(0.0, s - lead) <= t < e)

    def preferred(self, t: float) -> str:
        b = int(t // self.bucket_s)
        for p in self.order:
            need = self.need[p]
            if 0 <= b < len(need) and need[b] > 0:
                return p
        return self.order[0]

    def peak(self) -> dict[str, int]:
        return {p: int(n.max()) if len(n) else 0 for p, n in self.need.items()}


def plan_oracle(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, bucket_s: float = 10.0,
                attainment: float = 0.95) -> OraclePlan:
    """The cheapest capacity schedule that serves the trace within the SLO under the fluid capacity model.

    1. Per pool, the largest concurrency ``n*`` (up to the router's slots per replica) at which ``attainment`` of
       the requests the pool may take would meet both SLO targets in isolation (profile TTFT and TPOT at ``n*``,
       no queueing). A pool where no concurrency does is not used.
    2. Pools are filled cheapest first (price x mean service time / ``n*``), each up to its ``max_replicas``.
       A request goes to the cheapest pool that is eligible for it and can serve it within the SLO at ``n*``; a
       pool at its cap passes the rest of its share on.
    3. Per bucket, a pool needs ``ceil(max(work / n*, prefill tokens / prefill rate))`` replicas, where work is
       the requests' service time per second (Little's law) — no idle capacity, no queueing slack: optimistic.
    4. Each replica is asked for its startup earlier (95th percentile of node + replica startup, plus a tick);
       a replica idle for less than that stays (stopping and restarting would cost as much).

    Its cost is a lower bound on what any policy pays to serve the trace within the SLO *in this capacity
    model*; simulating the schedule (:func:`oracle`) measures how far reality (queueing inside buckets, the
    router's slot limits, drain times) is from the model.
    """
    arr, p_tok, o_tok = workload.arrival_s, workload.prompt_tokens, workload.output_tokens
    n_req = len(arr)
    nb = max(1, math.ceil((workload.duration_s + 1e-9) / bucket_s))
    bucket = np.minimum((arr // bucket_s).astype(int), nb - 1)
    slo = policy_file.slo
    notes: list[str] = []
    conc: dict[str, int] = {}
    service: dict[str, np.ndarray] = {}
    fits: dict[str, np.ndarray] = {}
    eligible: dict[str, np.ndarray] = {}
    unit_cost: dict[str, float] = {}
    for name, ps in sim.pools.items():
        curve = ps.profile.curve(ps.max_ongoing_requests)
        ok = eligible[name] = _eligible(ps.eligibility, p_tok, o_tok)
        pc = policy_file.pools[name]
        best = 0
        for n in range(1, curve.limit + 1):
            ttft, e2e = curve.isolated_latency(p_tok[ok], o_tok[ok], n)
            if len(ttft) == 0 or (np.quantile(ttft, attainment) <= slo.ttft_p95_s
                                  and np.quantile(e2e, attainment) <= slo.e2e_p95_s):
                best = n
            else:
                break
        if pc.max_replicas == 0 or not ok.any():
            best = 0
        conc[name] = best
        if best == 0:
            fits[name] = np.zeros(n_req, bool)
            service[name] = np.zeros(n_req)
            unit_cost[name] = math.inf
            notes.append(f"{name}: not used (no concurrency meets the SLO, capped at 0, or nothing eligible)")
            continue
        ttft, e2e = curve.isolated_latency(p_tok, o_tok, best)
        service[name] = e2e
        fits[name] = ok & (ttft <= slo.ttft_p95_s) & (e2e <= slo.e2e_p95_s)
        unit_cost[name] = pc.cost_per_hour_usd * float(e2e[ok].mean()) / best
    order = tuple(sorted(sim.pools, key=lambda n: (unit_cost[n], n)))
    usable = [n for n in order if conc[n] > 0]
    need = {n: np.zeros(nb, int) for n in sim.pools}
    if not usable:
        notes.append("no pool can serve the trace within the SLO; the bound plans nothing")
    else:
        share = np.ones(n_req)  # part of each request not yet assigned to a pool
        for k, name in enumerate(usable):
            ps, pc = sim.pools[name], policy_file.pools[name]
            # The last pool takes whatever it may take, within the SLO or not; the others only what fits.
            takes = eligible[name] if k == len(usable) - 1 else fits[name]
            w = share * takes
            work = np.bincount(bucket, weights=w * service[name], minlength=nb) / bucket_s
            prefill = np.bincount(bucket, weights=w * p_tok, minlength=nb) / bucket_s / ps.profile.prefill_tokens_per_s
            demand = np.maximum(work / conc[name], prefill)
            cap = pc.max_replicas if ps.max_nodes is None else min(pc.max_replicas, ps.max_nodes * pc.replicas_per_node)
            want = np.ceil(demand - 1e-9).astype(int)
            want[(demand > 0) & (want == 0)] = 1
            need[name] = np.minimum(want, cap)
            frac = np.where(demand > 0, np.minimum(1.0, need[name] / np.where(demand > 0, demand, 1.0)), 1.0)
            share = share - w * frac[bucket]
        left = float(share.sum())
        if left > 0.5:
            notes.append(f"about {left:.0f} requests exceed every pool's cap or eligibility in the bound")
    lead = {n: sim.pools[n].node_startup_s.quantile(0.95) + sim.pools[n].replica_startup_s.quantile(0.95)
            + policy_file.tick_interval_s for n in sim.pools}
    intervals = {n: _intervals(need[n], bucket_s, lead[n]) for n in sim.pools}
    cost = 0.0
    for n, iv in intervals.items():
        price_s = policy_file.pools[n].cost_per_hour_usd / 3600
        cost += sum((e - max(0.0, s - lead[n])) * price_s for s, e in iv)
    return OraclePlan(bucket_s, need, conc, lead, intervals, order, cost, tuple(notes))


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


class ScheduledPolicy:
    """A policy that follows a precomputed plan (the clairvoyant bound): targets and routing preference by time."""

    def __init__(self, plan: OraclePlan, policy_file: PolicyFile) -> None:
        self.plan, self.config = plan, policy_file

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        targets = {n: PoolTarget.for_replicas(self.plan.target(n, now), pc.replicas_per_node)
                   for n, pc in self.config.pools.items() if n in snapshot.pools}
        pref = self.plan.preferred(now)
        reason = "clairvoyant schedule: " + ", ".join(f"{n} {t.replicas}" for n, t in targets.items())
        return ScalePlan(targets, reason, preferred_pool_by_class={"default": pref}), state


def oracle(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, bucket_s: float = 10.0,
           attainment: float = 0.95) -> tuple[RunSpec, OraclePlan]:
    """The clairvoyant bound as a run: its plan, followed exactly (no delays, no step limit, min 0)."""
    plan = plan_oracle(workload, policy_file, sim, bucket_s=bucket_s, attainment=attainment)
    pf = _variant(policy_file, policy={"name": "queue_target", "knobs": {}},
                  pools={n: {"min_replicas": 0} for n in policy_file.pools}, guardrails=_unguarded(policy_file))
    policy = apply_guardrails(ScheduledPolicy(plan, pf), pf)
    notes = (f"fluid-model bound ${plan.bound_cost_usd:,.3f} (buckets of {bucket_s:g} s; concurrency per replica "
             + ", ".join(f"{n} {c}" for n, c in plan.concurrency.items()) + ")", *plan.notes)
    return RunSpec("oracle", pf, sim, policy=policy, initial_replicas=plan.initial(),
                   notes=notes), plan


def static_peak(policy_file: PolicyFile, sim: SimConfig, plan: OraclePlan) -> RunSpec:
    """Every pool held at the clairvoyant plan's peak, ready from time 0, no autoscaling."""
    peak = plan.peak()
    pf = _variant(policy_file, policy={"name": "queue_target", "knobs": {}},
                  pools={n: {"min_replicas": peak[n], "max_replicas": max(peak[n], 0)} for n in policy_file.pools},
                  guardrails=_unguarded(policy_file))
    return RunSpec("static peak", pf, sim, initial_replicas=peak,
                   notes=("peak of the clairvoyant plan: " + ", ".join(f"{n} {c}" for n, c in peak.items()),))


def comparison(workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, label: str | None = None,
               bucket_s: float = 10.0, attainment: float = 0.95) -> list[RunSpec]:
    """The policy under test, then every baseline, then the oracle (its plan also sizes static peak)."""
    oracle_run, plan = oracle(workload, policy_file, sim, bucket_s=bucket_s, attainment=attainment)
    runs: Sequence[RunSpec | None] = (
        policy_under_test(policy_file, sim, label), static_peak(policy_file, sim, plan),
        ray_serve_default(policy_file, sim), kpa_like(policy_file, sim), gpu_only(policy_file, sim), oracle_run)
    return [r for r in runs if r is not None]


__all__ = ["KPA_POLICY", "RAY_SERVE_DEFAULTS", "OraclePlan", "ScheduledPolicy", "comparison", "edge_pools",
           "gpu_only", "kpa_like", "oracle", "plan_oracle", "policy_under_test", "ray_serve_default",
           "static_peak"]
