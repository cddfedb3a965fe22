"""Baseline policy: a Knative-Pod-Autoscaler-like rule per pool — stable and panic windows over ongoing requests.

Follows the KPA decider (knative.dev/serving ``pkg/autoscaler/scaling/autoscaler.go``) with the defaults of
https://knative.dev/docs/serving/autoscaling/kpa-specific/ and the ``config-autoscaler`` ConfigMap: a 60 s stable
window, a panic window of 10% of it (6 s), a panic threshold of 200%, a target utilisation of 70%, scale-up at most
x1000 and scale-down at most /2 per decision, a 30 s scale-to-zero grace period. The target concurrency of a
replica is the pool's ``target_ongoing_requests_per_replica`` x the utilisation. The observed concurrency is the
pool's running + queued requests, averaged over the ticks inside each window (Knative averages per-second
buckets, so tick at 1-2 s for fidelity).
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import Field

from orchestrator.control.config import PolicyFile, StrictModel
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import PolicyState
from orchestrator.control.snapshot import ClusterSnapshot


class KpaKnobs(StrictModel):
    """Tuning of kpa (``policy.knobs``); the defaults are Knative's."""

    stable_window_s: float = Field(60.0, gt=0, description="Averaging window of the stable mode, seconds.")
    panic_window_percentage: float = Field(
        10.0, gt=0, le=100, description="Panic window as a percentage of the stable window."
    )
    panic_threshold_percentage: float = Field(
        200.0, gt=100, description="Enter panic when the panic-window demand reaches this % of the ready replicas."
    )
    target_utilization_percentage: float = Field(
        70.0, gt=0, le=100, description="Share of target_ongoing_requests_per_replica aimed at."
    )
    max_scale_up_rate: float = Field(1000.0, gt=1, description="At most ready x this many replicas per decision.")
    max_scale_down_rate: float = Field(2.0, gt=1, description="At least ready / this many replicas per decision.")
    scale_to_zero_grace_period_s: float = Field(
        30.0, ge=0, description="The last replica goes only after the stable window plus this long without load."
    )


class Kpa:
    """Each pool sized on its own concurrency, as Knative sizes a revision; no cost model, no routing preference."""

    Knobs = KpaKnobs

    def __init__(self, config: PolicyFile) -> None:
        self.config = config
        self.knobs = KpaKnobs.model_validate(config.policy.knobs)

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        k = self.knobs
        stable_s = k.stable_window_s
        panic_s = stable_s * k.panic_window_percentage / 100
        mem = state.memory
        samples: dict[str, list[list[float]]] = {p: list(v) for p, v in (mem.get("samples") or {}).items()}
        panic_since: dict[str, float] = dict(mem.get("panic_since") or {})
        max_panic: dict[str, int] = dict(mem.get("max_panic") or {})
        last_busy: dict[str, float] = dict(mem.get("last_busy_s") or {})
        targets: dict[str, PoolTarget] = {}
        parts = []
        for name, pc in self.config.pools.items():
            pool = snapshot.pools.get(name)
            if pool is None:
                continue
            load = float(pool.ongoing_requests)
            window = [s for s in samples.get(name, []) if s[0] > now - stable_s] + [[now, load]]
            samples[name] = window
            if load > 0:
                last_busy[name] = now
            stable = sum(c for _, c in window) / len(window)
            recent = [c for t, c in window if t > now - panic_s] or [load]
            panic = sum(recent) / len(recent)
            target = pc.target_ongoing_requests_per_replica * k.target_utilization_percentage / 100
            ready = max(1, pool.ready_replicas)
            dspc, dppc = math.ceil(stable / target - 1e-9), math.ceil(panic / target - 1e-9)
            max_up = math.ceil(k.max_scale_up_rate * ready)
            max_down = math.floor(ready / k.max_scale_down_rate)
            want_stable = min(max(dspc, max_down), max_up)
            want_panic = min(max(dppc, max_down), max_up)
            over = dppc / ready >= k.panic_threshold_percentage / 100
            since = panic_since.get(name)
            if over:
                panic_since[name] = now  # enter or extend panic
            elif since is not None and now - since >= stable_s:
                panic_since.pop(name, None)
                max_panic.pop(name, None)
            if name in panic_since:
                max_panic[name] = want = max(max_panic.get(name, 0), want_panic)  # never scale down in panic
                mode = "panic"
            else:
                want, mode = want_stable, "stable"
            busy = last_busy.get(name)
            if want == 0 and pool.replicas > 0 and busy is not None \
                    and now - busy < stable_s + k.scale_to_zero_grace_period_s:
                want = 1
            targets[name] = PoolTarget.for_replicas(want, pc.replicas_per_node)
            parts.append(f"{name} {mode}: avg {stable:.1f} (stable) / {panic:.1f} (panic) ongoing, target "
                         f"{target:g}/replica -> {want}")
        memory = {**mem, "samples": samples, "panic_since": panic_since, "max_panic": max_panic,
                  "last_busy_s": last_busy}
        return ScalePlan(targets, "kpa: " + "; ".join(parts)), replace(state, memory=memory)
