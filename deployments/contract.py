"""The typed contract between the router and the control plane: the per-pool statistics the router publishes
(``GET /elo/pools``, one producer: :func:`router_stats`) and the routing plan the controller sends
(``PUT /elo/routing``). The controller's adapter and the simulator read the same models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.config import AppConfig
from deployments.routing import PoolView, RoutingOrder, configured_order
from deployments.window import PoolWindow

__all__ = [
    "ConcurrencyStats",
    "PoolAdmission",
    "PoolStats",
    "RouterStats",
    "RoutingPlan",
    "SloTargets",
    "fill_order",
    "router_stats",
    "with_plan",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolAdmission(_Model):
    """How the router admits requests to one pool: what the controller planned, capped by the pool's slots."""

    max_concurrency_per_replica: int = Field(
        ge=0, description="SLO-safe concurrency: requests one replica takes while the pool meets the SLO; beyond it "
        "the router spills to the next pool in the fill order.")
    slo_max_prompt_tokens: int | None = Field(
        None, ge=0, description="Longest prompt the pool serves within the TTFT objective; null: any.")
    accepting: bool = Field(True, description="False: the pool is sized to zero or draining; it takes no new request.")
    yields: bool = Field(
        False, description="True: the pool shares cores with a faster pool its busy threads would slow by more than "
        "it serves (the controller's machine model); it takes only what no other pool has room for, even queued.")
    capacity_rps_per_replica: float | None = Field(
        None, ge=0, description="Requests per second one replica serves at that concurrency (the controller's "
        "estimate, for status and dashboards).")
    basis: str = Field("configured", description="Where the figures come from: 'configured', 'profile prior' or "
                       "'learned from N requests'.")


class SloTargets(_Model):
    """The latency objectives a request is counted against (the policy's SLO, carried by the plan)."""

    ttft_s: float = Field(gt=0)
    e2e_s: float = Field(gt=0)

    def met(self, ttft_s: float | None, e2e_s: float, ok: bool) -> bool:
        return ok and ttft_s is not None and ttft_s <= self.ttft_s and e2e_s <= self.e2e_s


class RoutingPlan(_Model):
    """The controller's routing plan: the fill order (cheapest capacity first) and each pool's admission."""

    fill_order: list[str] = Field(min_length=1, description="Pools in the order the router fills them.")
    fill_order_by_class: dict[str, list[str]] = Field(
        default_factory=dict, description="SLO class -> its own fill order (the configured class preferences).")
    pools: dict[str, PoolAdmission] = Field(default_factory=dict, description="Admission per pool; a pool not "
                                            "named keeps its slots as its SLO-safe concurrency.")
    starting: dict[str, int] = Field(
        default_factory=dict, description="Replicas asked for and not ready yet, per pool (the controller's "
        "actuator): the router holds requests for them instead of refusing (the cold-start bridge).")
    reason: str = Field("", description="Why, in numbers (the controller's decision).")
    slo: SloTargets | None = Field(None, description="The policy's objectives: the router counts each request as "
                                   "meeting them or not (elo_slo_requests_total); null: not counted.")

    @model_validator(mode="after")
    def _orders_name_each_pool_once(self) -> RoutingPlan:
        for label, order in [("fill_order", self.fill_order), *self.fill_order_by_class.items()]:
            if len(set(order)) != len(order):
                raise ValueError(f"{label} names a pool twice: {order}")
        return self

    def order(self) -> RoutingOrder:
        return RoutingOrder(tuple(self.fill_order), {c: tuple(o) for c, o in self.fill_order_by_class.items()})

    def unknown_pools(self, pools: Sequence[str]) -> list[str]:
        named = set(self.fill_order) | set(self.pools) | {p for o in self.fill_order_by_class.values() for p in o}
        return sorted(named - set(pools))


class ConcurrencyStats(_Model):
    """Requests completed in the window that were admitted at one per-replica concurrency."""

    concurrency: int = Field(ge=1, description="Requests on the replica when this one was sent, itself included.")
    requests: int = Field(ge=1)
    ttft_mean_s: float = Field(ge=0, description="Sent to the replica -> first token (no router wait).")
    tpot_mean_s: float | None = Field(None, ge=0, description="Per output token after the first; null: none had 2+.")
    prompt_tokens_mean: float = Field(ge=0)


class PoolStats(_Model):
    """One pool as the router sees it: replicas, load, and its load window (``window_s`` seconds)."""

    ready_replicas: int = Field(ge=0)
    starting_replicas: int = Field(ge=0)
    in_flight: int = Field(ge=0, description="Requests sent to the pool and not finished.")
    slots: int = Field(ge=0, description="Ready replicas x max_ongoing_requests.")
    max_ongoing_per_replica: int = Field(ge=1, description="The pool's max_ongoing_requests (slots per replica).")
    queue_limit: int = Field(ge=0)
    running: int = Field(ge=0, description="In flight within the slots.")
    waiting: int = Field(ge=0, description="Held for the pool until capacity is ready (cold start).")
    queued: int = Field(ge=0, description="Beyond the slots, plus held: requests waiting for this pool's capacity.")
    admission: PoolAdmission
    window_s: float = Field(gt=0)
    arrival_rate_rps: float = Field(ge=0, description="Requests sent to the pool per second.")
    rejected_rate_rps: float = Field(ge=0, description="Requests refused while this pool came first in their order.")
    output_tokens_per_s: float = Field(ge=0)
    ttft_p95_s: float | None = Field(None, description="From arrival at the router (waits included).")
    e2e_p95_s: float | None = None
    completed: int = Field(ge=0)
    by_concurrency: list[ConcurrencyStats] = Field(default_factory=list)


class RouterStats(_Model):
    """``GET /elo/pools``: every pool, the sizes of recent requests, and the plan in force."""

    pools: dict[str, PoolStats]
    recent_requests: list[tuple[int, int]] = Field(
        default_factory=list, description="(prompt tokens, output tokens) of the latest completed requests.")
    plan: RoutingPlan | None = Field(None, description="The controller's plan in force; null: the configured order.")
    generated_at_unix_s: float = Field(0.0, description="Wall-clock time the router produced these figures.")


def admission_of(view: PoolView) -> PoolAdmission:
    """What a view admits, when no plan names the pool (or to report what is applied)."""
    return PoolAdmission(max_concurrency_per_replica=view.admit_per_replica if view.admit_per_replica is not None
                         else view.max_ongoing_per_replica, slo_max_prompt_tokens=view.slo_max_prompt_tokens,
                         accepting=view.accepting, yields=view.yields)


def router_stats(views: Mapping[str, PoolView], windows: Mapping[str, PoolWindow], now: float,
                 plan: RoutingPlan | None = None, recent_limit: int = 256, wall_time_s: float = 0.0) -> RouterStats:
    """The one producer of :class:`RouterStats`, for the router and the simulator alike."""
    pools = {}
    recent: list[tuple[float, int, int]] = []
    for name, v in views.items():
        w = windows[name]
        s = w.summary(now)
        planned = plan.pools.get(name) if plan else None
        admission = admission_of(v)
        if planned is not None:
            admission = admission.model_copy(update={"capacity_rps_per_replica": planned.capacity_rps_per_replica,
                                                     "basis": planned.basis})
        pools[name] = PoolStats(
            ready_replicas=v.ready_replicas, starting_replicas=v.starting_replicas, in_flight=v.in_flight,
            slots=v.slots, max_ongoing_per_replica=v.max_ongoing_per_replica, queue_limit=v.queue_limit, running=min(v.in_flight, v.slots), waiting=v.waiting,
            queued=v.queued, admission=admission, **s,
            by_concurrency=[ConcurrencyStats(**c) for c in w.by_concurrency(now)])
        recent += w.recent()
    recent.sort()
    return RouterStats(pools=pools, recent_requests=[(p, o) for _, p, o in recent[-recent_limit:]], plan=plan,
                       generated_at_unix_s=wall_time_s)


def with_plan(views: Mapping[str, PoolView], plan: RoutingPlan | None) -> dict[str, PoolView]:
    """The views with the plan's admission applied (SLO-safe concurrency, prompt limit, accepting, yields); a pool the
    plan does not name keeps its slots."""
    if plan is None:
        return dict(views)
    out = {}
    for name, v in views.items():
        a = plan.pools.get(name)
        out[name] = v if a is None else replace(v, admit_per_replica=a.max_concurrency_per_replica,
                                                slo_max_prompt_tokens=a.slo_max_prompt_tokens,
                                                accepting=a.accepting, yields=a.yields)
    return out


def fill_order(plan: RoutingPlan | None, config: AppConfig) -> RoutingOrder:
    """The order the router fills pools in: the plan's (cheapest SLO capacity first), else the configured one; an
    SLO class with a configured preference puts its pool first either way (unless the plan orders the class)."""
    if plan is None:
        return configured_order(config)
    base = list(plan.fill_order) + [n for n in config.pools if n not in plan.fill_order]
    by_class = {cls: tuple([pool] + [n for n in base if n != pool])
                for cls, pool in config.router.slo_class_preferences.items()}
    by_class.update({cls: tuple(order) for cls, order in plan.fill_order_by_class.items()})
    return RoutingOrder(tuple(base), by_class)
