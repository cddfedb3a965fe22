"""Pure routing policy: which pool serves a request, given its size, SLO class and each pool's load."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from deployments.config import AppConfig, Eligibility


@dataclass(frozen=True)
class RequestFeatures:
    """What the router knows about a request before choosing a pool."""

    prompt_tokens: int
    max_tokens: int
    slo_class: str | None = None


@dataclass(frozen=True)
class PoolView:
    """One pool as the router sees it at decision time."""

    name: str
    ready_replicas: int
    in_flight: int
    max_ongoing_per_replica: int
    max_queued_per_replica: int
    eligibility: Eligibility
    starting_replicas: int = 0  # asked for, not serving yet (node, image, weights)
    waiting: int = 0  # requests held for this pool until capacity is ready
    max_waiting_at_zero: int = 0  # requests that may wait for a pool with no replica at all (scale from zero)

    @property
    def slots(self) -> int:
        return self.ready_replicas * self.max_ongoing_per_replica

    @property
    def queue_limit(self) -> int:
        return self.ready_replicas * (self.max_ongoing_per_replica + self.max_queued_per_replica)

    @property
    def wait_limit(self) -> int:
        """Requests that may wait for capacity on its way: the queue room of the starting replicas, or, for a
        pool with no replica at all, ``max_waiting_at_zero`` (its demand is what scales it from zero)."""
        if self.starting_replicas > 0:
            return self.starting_replicas * (self.max_ongoing_per_replica + self.max_queued_per_replica)
        return self.max_waiting_at_zero if self.ready_replicas == 0 else 0

    def accepts(self, req: RequestFeatures) -> bool:
        e = self.eligibility
        if e.max_prompt_tokens is not None and req.prompt_tokens > e.max_prompt_tokens:
            return False
        if e.max_output_tokens is not None and req.max_tokens > e.max_output_tokens:
            return False
        if e.slo_classes is not None and (req.slo_class or "default") not in e.slo_classes:
            return False
        return True


class Outcome(Enum):
    ROUTE = "route"  # send to `pool`
    BUSY = "busy"  # every eligible pool is at its queue limit: 429 + Retry-After
    WAIT = "wait"  # no room now, but `pool` has capacity on its way: hold the request until it is ready
    UNAVAILABLE = "unavailable"  # no eligible pool has a ready replica: 503 + Retry-After
    INELIGIBLE = "ineligible"  # no pool takes a request of this size/class: 400


@dataclass(frozen=True)
class RouteDecision:
    outcome: Outcome
    pool: str | None
    reason: str


def preference_order(pool_names: Sequence[str], preferred: str) -> list[str]:
    """The preferred pool first, then the others in configuration order."""
    return [preferred] + [p for p in pool_names if p != preferred]


def preferred_pool(config: AppConfig, slo_class: str | None, overrides: Mapping[str, str] | None = None) -> str:
    """The pool a request prefers: the controller's override for its class (or its "default"), else
    the configured class preference, else the configured default pool."""
    overrides = overrides or {}
    if slo_class is not None and slo_class in overrides:
        return overrides[slo_class]
    if slo_class is not None and slo_class in config.router.slo_class_preferences:
        return config.router.slo_class_preferences[slo_class]
    return overrides.get("default", config.router.default_pool)


def choose_pool(req: RequestFeatures, pools: Mapping[str, PoolView], order: Sequence[str]) -> RouteDecision:
    """Pick a pool: the first eligible pool in `order` with a free slot; otherwise the first
    with queue room; otherwise the first with capacity on its way and wait room (WAIT: the request
    is held until a replica is ready, so a cold start drops nothing); otherwise busy (429) when some
    eligible pool is serving, or unavailable (503) when none is.

    A saturated preferred pool spills to the next one, whichever way the preference points;
    a pool with no ready replica (cold start, failure) is skipped while another can serve now.
    """
    eligible = [pools[name] for name in order if name in pools and pools[name].accepts(req)]
    if not eligible:
        return RouteDecision(
            Outcome.INELIGIBLE,
            None,
            f"no pool takes a request with {req.prompt_tokens} prompt tokens, max_tokens {req.max_tokens}"
            + (f" and SLO class {req.slo_class!r}" if req.slo_class else ""),
        )
    ready = [p for p in eligible if p.ready_replicas > 0]
    first = eligible[0].name
    for p in ready:
        if p.in_flight < p.slots:
            why = "preferred pool has a free slot" if p.name == first else f"spilled from {first}: no free slot or not ready"
            return RouteDecision(Outcome.ROUTE, p.name, why)
    for p in ready:
        if p.in_flight < p.queue_limit:
            return RouteDecision(Outcome.ROUTE, p.name, "all slots busy; queued within the pool's limit")
    # Capacity already on its way first, then pools scaled to zero (whose waiters make the controller start one).
    for p in sorted(eligible, key=lambda p: p.starting_replicas == 0):
        if p.waiting < p.wait_limit:
            what = f"{p.starting_replicas} starting" if p.starting_replicas else "none yet (scale from zero)"
            return RouteDecision(Outcome.WAIT, p.name, f"no room now; waiting for {p.name} replicas: {what}")
    if not ready:
        return RouteDecision(
            Outcome.UNAVAILABLE, None, "no ready replica in " + ", ".join(p.name for p in eligible)
            + " and no wait room"
        )
    return RouteDecision(
        Outcome.BUSY,
        None,
        "every eligible pool is at its queue limit: "
        + ", ".join(f"{p.name} {p.in_flight}/{p.queue_limit}" for p in ready),
    )
