"""Decide, safely: the one wrapper around every policy — bounds, steps, delays, cooldown, budget, stale data."""

from __future__ import annotations

from dataclasses import replace

from deployments.contract import PoolAdmission, RoutingPlan
from orchestrator.control.config import PolicyFile
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import Policy, PolicyState, PoolTimers
from orchestrator.control.snapshot import ClusterSnapshot

_IDLE = PoolTimers()


def apply_guardrails(policy: Policy, config: PolicyFile) -> Policy:
    """Wrap ``policy`` so that its plans respect ``config``'s pool bounds and guardrails."""
    return Guarded(policy, config)


class Guarded:
    """A policy whose plans are bounded; see :meth:`__call__` for the order the rules apply in."""

    def __init__(self, policy: Policy, config: PolicyFile) -> None:
        self.policy = policy
        self.config = config
        # Budget cuts take the most expensive replicas first.
        self._by_price_desc = sorted(config.pools, key=lambda n: (-config.pools[n].cost_per_hour_usd, n))

    def __call__(self, snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        """1. Stale metrics or a configured pool missing from the snapshot: hold everything, wrapped policy not
        asked, pending delays restarted — never scale (least of all to zero) on missing data.
        2. Per pool: clamp to [min_replicas, max_replicas] (a pool outside them goes to the nearest bound at once);
        a change must be wanted in the same direction continuously for upscale_delay_s / downscale_delay_s (the
        timer keeps running across steps while the wish lasts; no downscale delay for a pool in the plan's
        ``release_now``); none within cooldown_s of the pool's last resize;
        at most max_step_per_tick replicas per tick.
        3. Budget: above budget_usd_per_hour, first drop planned increases, then existing replicas down to
        min_replicas, most expensive per replica first.
        """
        g = self.config.guardrails
        age_s = snapshot.age_s(now)
        missing = [name for name in self.config.pools if name not in snapshot.pools]
        if age_s > g.stale_after_s or missing:
            why = (f"no metrics for pool {', '.join(missing)}" if missing
                   else f"metrics are {age_s:.0f}s old (stale after {g.stale_after_s:.0f}s)")
            timers = {n: replace(t, want_up_since_s=None, want_down_since_s=None) for n, t in state.timers.items()}
            plan = ScalePlan.hold(snapshot, f"hold: {why}", state.routing)
            return plan, replace(state, timers=timers)

        plan, inner = self.policy(snapshot, state, now)
        notes = [f"ignored target for unconfigured pool {n}" for n in plan.targets if n not in self.config.pools]
        current = {name: snapshot.pools[name].replicas for name in self.config.pools}
        wanted: dict[str, int] = {}
        timers: dict[str, PoolTimers] = {}
        for name, pc in self.config.pools.items():
            cur = current[name]
            t = state.timers.get(name, _IDLE)
            proposed = plan.targets.get(name)
            raw = cur if proposed is None else proposed.replicas
            want = min(max(raw, pc.min_replicas), pc.max_replicas)
            if want != raw:
                notes.append(f"{name} {raw} clamped to {want} (min {pc.min_replicas}, max {pc.max_replicas})")
            if not pc.min_replicas <= cur <= pc.max_replicas:
                # Back to the nearest bound at once; anything further goes through the usual rules.
                new, t = min(max(cur, pc.min_replicas), pc.max_replicas), PoolTimers(last_change_s=t.last_change_s)
                notes.append(f"{name} at {cur} is outside [{pc.min_replicas}, {pc.max_replicas}]: set to {new} now")
            elif want == cur:
                new, t = cur, PoolTimers(last_change_s=t.last_change_s)
            else:
                up = want > cur
                since = (t.want_up_since_s if up else t.want_down_since_s)
                since = now if since is None else since
                t = PoolTimers(since if up else None, None if up else since, t.last_change_s)
                delay_s = g.upscale_delay_s if up else g.downscale_delay_s
                if not up and name in plan.release_now:
                    delay_s = 0.0
                    notes.append(f"{name} {cur}->{want}: never needed, so no downscale delay")
                step = self.config.max_step(name)
                if now - since < delay_s:
                    new = cur
                    notes.append(f"{name} {cur}->{want} waits for the {'up' if up else 'down'}scale delay "
                                 f"({now - since:.0f}s of {delay_s:.0f}s)")
                elif t.last_change_s is not None and now - t.last_change_s < g.cooldown_s:
                    new = cur
                    notes.append(f"{name} {cur}->{want} waits for the cooldown "
                                 f"({now - t.last_change_s:.0f}s of {g.cooldown_s:.0f}s)")
                else:
                    new = min(want, cur + step) if up else max(want, cur - step)
                    if new != want:
                        notes.append(f"{name} {cur}->{want} limited to {new} (max step {step}/tick)")
            wanted[name], timers[name] = new, t

        self._apply_budget(wanted, current, notes)

        targets: dict[str, PoolTarget] = {}
        for name, pc in self.config.pools.items():
            if wanted[name] != current[name]:
                timers[name] = replace(timers[name], last_change_s=now)
            # Nodes always follow replicas, so a node removal still in progress is not undone by the next tick.
            targets[name] = PoolTarget.for_replicas(wanted[name], pc.replicas_per_node)

        routing = _admit_only_sized_pools(plan.routing or state.routing, targets)
        reason = plan.reason + (" | guardrails: " + "; ".join(notes) if notes else "")
        new_plan = ScalePlan(targets, reason, plan.drain, routing, plan.details, plan.refused, plan.release_now)
        return new_plan, replace(inner, timers=timers, routing=routing)

    def _apply_budget(self, wanted: dict[str, int], current: dict[str, int], notes: list[str]) -> None:
        budget = self.config.guardrails.budget_usd_per_hour
        if budget is None:
            return
        price = {name: pc.cost_per_hour_usd for name, pc in self.config.pools.items()}
        cost = sum(wanted[n] * price[n] for n in wanted)
        if cost <= budget + 1e-9:
            return
        before = dict(wanted)
        # First the planned increases, then existing capacity: the most expensive replica goes first each time.
        for floor_of in (lambda n: current[n], lambda n: self.config.pools[n].min_replicas):
            for name in self._by_price_desc:
                floor = max(floor_of(name), self.config.pools[name].min_replicas)
                while cost > budget + 1e-9 and wanted[name] > floor and price[name] > 0:
                    wanted[name] -= 1
                    cost -= price[name]
        cut = ", ".join(f"{n} {before[n]}->{wanted[n]}" for n in wanted if wanted[n] != before[n])
        notes.append(f"budget {budget:g} $/h: {cut} (fleet {cost:.2f} $/h)")



def _admit_only_sized_pools(routing: RoutingPlan | None, targets: dict[str, PoolTarget]) -> RoutingPlan | None:
    """The router takes no new request for a pool sized to zero (its replicas drain); a pool sized above zero
    accepts again."""
    if routing is None:
        return None
    pools = dict(routing.pools)
    for name, target in targets.items():
        current = pools.get(name)
        accepting = target.replicas > 0
        if current is None:
            if not accepting:
                pools[name] = PoolAdmission(max_concurrency_per_replica=0, accepting=False, basis="sized to zero")
        elif current.accepting != accepting:
            pools[name] = current.model_copy(update={"accepting": accepting})
    return routing.model_copy(update={"pools": pools})
