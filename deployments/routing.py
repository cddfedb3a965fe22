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

    @property
    def slots(self) -> int:
        return self.ready_replicas * self.max_ongoing_per_replica

    @property
    def queue_limit(self) -> int:
        return self.ready_replicas * (self.max_ongoing_per_replica + self.max_queued_per_replica)

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
    with queue room; otherwise busy (429) or unavailable (503).

    A saturated preferred pool spills to the next one, whichever way the preference points;
    a pool with no ready replica (cold start, failure) is skipped.
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
    if not ready:
        return RouteDecision(
            Outcome.UNAVAILABLE, None, "no ready replica in " + ", ".join(p.name for p in eligible)
        )
    first = eligible[0].name
    for p in ready:
        if p.in_flight < p.slots:
            why = "preferred pool has a free slot" if p.name == first else f"spilled from {first}: no free slot or not ready"
            return RouteDecision(Outcome.ROUTE, p.name, why)
    for p in ready:
        if p.in_flight < p.queue_limit:
            return RouteDecision(Outcome.ROUTE, p.name, "all slots busy; queued within the pool's limit")
    return RouteDecision(
        Outcome.BUSY,
        None,
        "every eligible pool is at its queue limit: "
        + ", ".join(f"{p.name} {p.in_flight}/{p.queue_limit}" for p in ready),
    )
