"""Pure routing policy: which pool serves a request, given its size, features and SLO class, each pool's load,
and the controller's routing plan (fill order and SLO-safe concurrency per replica).

One entry point, :func:`route`, decides for the router's dispatcher and for the simulator alike: the pool to send
to, to hold the request for capacity on its way (cold start), or the refusal with its HTTP status (wait expiry
included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from deployments.config import AppConfig, Eligibility


@dataclass(frozen=True)
class RequestFeatures:
    """What the router knows about a request before choosing a pool."""

    prompt_tokens: int
    max_tokens: int
    slo_class: str | None = None
    needs: frozenset[str] = frozenset()  # API features it uses (see deployments.features), each a pool must have


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
    admit_per_replica: int | None = None  # SLO-safe concurrency per replica (the controller's plan); None: the slots
    slo_max_prompt_tokens: int | None = None  # longest prompt it serves within the TTFT objective; None: any
    features: frozenset[str] | None = None  # API features its engine honours; None: every feature
    accepting: bool = True  # False: sized to zero or draining; takes nothing new but what waits for it to start
    probe_due: bool = False  # no request routed here for router.probe_every_s: the next one that fits measures it
    yields: bool = False  # its busy cores would cost pools on the same cores more than it serves: last resort only

    @property
    def slots(self) -> int:
        return self.ready_replicas * self.max_ongoing_per_replica

    @property
    def admit_limit(self) -> int:
        """Requests the pool takes while it meets the SLO: ready replicas x its SLO-safe concurrency."""
        per = self.max_ongoing_per_replica if self.admit_per_replica is None else self.admit_per_replica
        return self.ready_replicas * min(per, self.max_ongoing_per_replica) if self.accepting else 0

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

    @property
    def queued(self) -> int:
        """Requests waiting for this pool's capacity: held for a cold start, or beyond its slots."""
        return max(0, self.in_flight - self.slots) + self.waiting

    def accepts(self, req: RequestFeatures) -> bool:
        """Size, SLO class and features: whether the pool may take the request at all."""
        return self.missing(req) is None

    def missing(self, req: RequestFeatures) -> str | None:
        """Why the pool may not take the request (a short phrase), or None."""
        e = self.eligibility
        if e.max_prompt_tokens is not None and req.prompt_tokens > e.max_prompt_tokens:
            return f"prompt over {e.max_prompt_tokens} tokens"
        if e.max_output_tokens is not None and req.max_tokens > e.max_output_tokens:
            return f"max_tokens over {e.max_output_tokens}"
        if e.slo_classes is not None and (req.slo_class or "default") not in e.slo_classes:
            return f"SLO class {(req.slo_class or 'default')!r} not served"
        if self.features is not None and not req.needs <= self.features:
            return "no " + ", ".join(sorted(req.needs - self.features))
        return None

    def within_slo(self, req: RequestFeatures) -> bool:
        return self.slo_max_prompt_tokens is None or req.prompt_tokens <= self.slo_max_prompt_tokens


class Outcome(Enum):
    ROUTE = "route"  # send to `pool`
    BUSY = "busy"  # every eligible pool is at its queue limit: 429 + Retry-After
    WAIT = "wait"  # no room now, but `pool` has capacity on its way: hold the request until it is ready
    UNAVAILABLE = "unavailable"  # no eligible pool has a ready replica: 503 + Retry-After
    INELIGIBLE = "ineligible"  # no pool takes a request of this size/class/feature set: 400


STATUS = {Outcome.BUSY: 429, Outcome.UNAVAILABLE: 503, Outcome.INELIGIBLE: 400}


@dataclass(frozen=True)
class RouteDecision:
    outcome: Outcome
    pool: str | None
    reason: str
    param: str | None = None  # INELIGIBLE: the request field at fault

    @property
    def status(self) -> int | None:
        """The HTTP status of a refusal (429, 503, 400); None for ROUTE and WAIT."""
        return STATUS.get(self.outcome)


@dataclass(frozen=True)
class RoutingOrder:
    """Pools in the order the router fills them (cheapest first), per SLO class; the controller's plan, or the
    configured order until it sends one."""

    default: tuple[str, ...]
    by_class: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def for_class(self, slo_class: str | None) -> list[str]:
        return list(self.by_class.get(slo_class, self.default) if slo_class is not None else self.default)


def configured_order(config: AppConfig) -> RoutingOrder:
    """The fill order before the controller sends one: ``router.fill_order``, else the CPU (transformers) pools
    first, then the others in configuration order; a class in ``slo_class_preferences`` puts its pool first."""
    names = list(config.pools)
    base = list(config.router.fill_order or sorted(names, key=lambda n: config.pools[n].engine != "transformers"))
    base += [n for n in names if n not in base]
    by_class = {cls: tuple([pool] + [n for n in base if n != pool])
                for cls, pool in config.router.slo_class_preferences.items()}
    return RoutingOrder(tuple(base), by_class)


def route(req: RequestFeatures, pools: Mapping[str, PoolView], order: Sequence[str], *, waited_s: float = 0.0,
          max_wait_s: float = math.inf) -> RouteDecision:
    """Where the request goes, in this order of preference:

    0. a ready pool whose probe is due (it got no request for a while), if it takes this one within its SLO:
       one request now and then keeps every pool's capacity estimate measured;
    1. the first eligible pool in ``order`` that meets the SLO for it with room under its SLO-safe concurrency
       (``admit_limit``) — the cheapest pool fills first and spills to the next;
    2. the first with a free slot (over its SLO-safe concurrency: slower, but served now);
    3. the first with queue room;
    4. WAIT for capacity on its way: pools with starting replicas first, then pools scaled to zero (whose waiters
       make the controller start one) — unless the request has waited ``max_wait_s`` already;
    5. else 429 when some eligible pool serves, 503 when none does; 400 when no pool may take it at all.

    A pool not ``accepting`` (sized to zero, draining) takes no new request in 1-3. A pool that ``yields`` (on
    cores it shares with a faster pool, which its busy threads would slow by more than it serves: the controller's
    machine model) goes through 1-3 only after every other ready pool has no room left, not even in its queue, and
    gets no probe; unless no other ready pool serves the request within the SLO (its prompt is too long for them).
    """
    known = [pools[name] for name in order if name in pools]
    eligible = [p for p in known if p.accepts(req)]
    if not eligible:
        return _ineligible(req, known)
    ready = [p for p in eligible if p.ready_replicas > 0 and p.accepting]
    for p in ready:
        if p.probe_due and not p.yields and p.in_flight < p.admit_limit and p.within_slo(req):
            return RouteDecision(Outcome.ROUTE, p.name, "probe: no request for a while, measuring its capacity")
    first, last = [p for p in ready if not p.yields], [p for p in ready if p.yields]
    if not any(p.within_slo(req) for p in first):  # e.g. a prompt too long for the others' TTFT: the SLO first
        first, last = first + last, []
    decision = _admit(req, first, eligible[0]) or _admit(req, last, eligible[0], last_resort=True)
    if decision is not None:
        return decision
    if waited_s < max_wait_s:
        # Capacity already on its way first, then pools scaled to zero (whose waiters make the controller start one).
        for p in sorted(eligible, key=lambda p: p.starting_replicas == 0):
            if p.waiting < p.wait_limit:
                what = f"{p.starting_replicas} starting" if p.starting_replicas else "none yet (scale from zero)"
                return RouteDecision(Outcome.WAIT, p.name, f"no room now; waiting for {p.name} replicas: {what}")
    waited = f"waited {waited_s:.0f}s: " if waited_s > 0 else ""
    if not any(p.ready_replicas > 0 for p in eligible):
        return RouteDecision(Outcome.UNAVAILABLE, None,
                             waited + "no ready replica in " + ", ".join(p.name for p in eligible) + " and no wait room")
    return RouteDecision(
        Outcome.BUSY, None,
        waited + "every eligible pool is at its queue limit: "
        + ", ".join(f"{p.name} {p.in_flight}/{p.queue_limit}" for p in ready or eligible),
    )


def _admit(req: RequestFeatures, ready: Sequence[PoolView], head: PoolView,
           last_resort: bool = False) -> RouteDecision | None:
    """Steps 1-3 of :func:`route` over ``ready`` (in fill order): SLO-safe room, then a free slot, then queue room."""
    tag = "every other pool full, even its queue; " if last_resort else ""
    for p in ready:
        if p.in_flight < p.admit_limit and p.within_slo(req):
            why = ("first pool in the fill order" if p is head else
                   f"{head.name} yields its cores" if head.yields and not p.yields else f"spilled from {head.name}")
            return RouteDecision(Outcome.ROUTE, p.name, f"{tag}{why}: room within its SLO-safe concurrency")
    for p in ready:
        if p.in_flight < p.slots:
            return RouteDecision(Outcome.ROUTE, p.name, f"{tag}every pool at its SLO-safe concurrency: a free slot")
    for p in ready:
        if p.in_flight < p.queue_limit:
            return RouteDecision(Outcome.ROUTE, p.name, f"{tag}all slots busy; queued within the pool's limit")
    return None


def _ineligible(req: RequestFeatures, pools: Sequence[PoolView]) -> RouteDecision:
    """400, naming what no pool takes: a feature (its request field), else the size or the class."""
    lacking = {f for f in req.needs if all(p.features is not None and f not in p.features for p in pools)}
    if lacking:
        return RouteDecision(Outcome.INELIGIBLE, None,
                             "no pool supports " + ", ".join(sorted(lacking)), param=sorted(lacking)[0])
    why = "; ".join(f"{p.name}: {p.missing(req)}" for p in pools) or "no pool is configured"
    return RouteDecision(
        Outcome.INELIGIBLE, None,
        f"no pool takes a request with {req.prompt_tokens} prompt tokens, max_tokens {req.max_tokens}"
        + (f" and SLO class {req.slo_class!r}" if req.slo_class else "") + f" ({why})",
        param="max_tokens",
    )
