"""Routing decisions: cheapest pool first within its SLO-safe concurrency, spill, slots, queues, the cold-start
wait and its expiry, features, and what each refusal answers."""

from __future__ import annotations

import pytest

from deployments.config import AppConfig, Eligibility, PoolConfig, RouterConfig
from deployments.contract import PoolAdmission, RoutingPlan, admission_of, fill_order, with_plan
from deployments.routing import Outcome, PoolView, RequestFeatures, configured_order, route

SMALL = RequestFeatures(prompt_tokens=20, max_tokens=32)
ORDER = ["edge", "cloud"]


def view(name: str, ready: int = 1, in_flight: int = 0, ongoing: int = 4, queued: int = 2, starting: int = 0,
         waiting: int = 0, at_zero: int = 0, admit: int | None = None, **kw) -> PoolView:
    elig = {k: kw.pop(k) for k in ("max_prompt_tokens", "max_output_tokens", "slo_classes") if k in kw}
    return PoolView(name, ready, in_flight, ongoing, queued, Eligibility(**elig), starting, waiting, at_zero,
                    admit_per_replica=admit, **kw)


def pools(*views: PoolView) -> dict[str, PoolView]:
    return {v.name: v for v in views}


def test_the_first_pool_of_the_fill_order_takes_requests_within_its_slo_safe_concurrency():
    d = route(SMALL, pools(view("edge", admit=2, in_flight=1), view("cloud")), ORDER)
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "edge") and "SLO-safe" in d.reason


def test_a_pool_at_its_slo_safe_concurrency_spills_to_the_next_one_before_using_its_spare_slots():
    d = route(SMALL, pools(view("edge", admit=2, in_flight=2), view("cloud")), ORDER)
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "cloud") and "spilled from edge" in d.reason


def test_when_every_pool_is_at_its_slo_safe_concurrency_a_free_slot_is_used_in_fill_order():
    d = route(SMALL, pools(view("edge", admit=2, in_flight=2), view("cloud", admit=1, in_flight=1)), ORDER)
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "edge") and "free slot" in d.reason


def test_then_queue_room_then_429_with_every_pool_named():
    full_slots = pools(view("edge", in_flight=4), view("cloud", in_flight=4))
    d = route(SMALL, full_slots, ORDER)
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "edge") and "queued" in d.reason
    d = route(SMALL, pools(view("edge", in_flight=6), view("cloud", in_flight=6)), ORDER)
    assert (d.outcome, d.status) == (Outcome.BUSY, 429)
    assert "edge 6/6" in d.reason and "cloud 6/6" in d.reason


def test_admission_never_exceeds_the_slots_and_scales_with_ready_replicas():
    assert view("edge", ready=3, admit=2).admit_limit == 6
    assert view("edge", ready=1, admit=10, ongoing=4).admit_limit == 4


def test_a_pool_sized_to_zero_takes_no_new_request_even_with_replicas_still_up():
    drained = view("cloud", accepting=False)
    d = route(SMALL, pools(view("edge", in_flight=6), drained), ORDER)
    assert d.outcome is Outcome.BUSY, "neither its SLO room, its slots nor its queue"
    assert route(SMALL, pools(view("edge"), drained), ["cloud", "edge"]).pool == "edge"


def test_a_prompt_beyond_a_pools_slo_prompt_limit_goes_to_the_next_pool():
    long = RequestFeatures(prompt_tokens=900, max_tokens=32)
    ps = pools(view("edge", slo_max_prompt_tokens=500), view("cloud"))
    assert route(long, ps, ORDER).pool == "cloud"
    assert route(SMALL, ps, ORDER).pool == "edge"


def test_a_due_probe_sends_one_request_to_an_idle_ready_pool():
    ps = pools(view("edge"), view("cloud", probe_due=True))
    d = route(SMALL, ps, ORDER)
    assert d.pool == "cloud" and "probe" in d.reason


def test_size_and_class_eligibility_hold():
    big = RequestFeatures(prompt_tokens=900, max_tokens=32)
    assert route(big, pools(view("edge", max_prompt_tokens=512), view("cloud")), ORDER).pool == "cloud"
    batch_only = view("edge", slo_classes=["batch"])
    assert route(RequestFeatures(5, 5, "interactive"), pools(batch_only, view("cloud")), ORDER).pool == "cloud"
    assert route(RequestFeatures(5, 5, "batch"), pools(batch_only, view("cloud")), ORDER).pool == "edge"


def test_a_request_no_pool_takes_is_a_400_naming_why():
    big = RequestFeatures(prompt_tokens=2000, max_tokens=10, slo_class="batch")
    d = route(big, pools(view("edge", max_prompt_tokens=512)), ["edge"])
    assert (d.outcome, d.status, d.param) == (Outcome.INELIGIBLE, 400, "max_tokens")
    assert "2000 prompt tokens" in d.reason and "'batch'" in d.reason and "edge: prompt over 512 tokens" in d.reason


def test_a_feature_only_one_pool_has_routes_there_even_when_it_comes_second():
    schema = RequestFeatures(20, 32, needs=frozenset({"response_format"}))
    ps = pools(view("edge", features=frozenset({"n"})), view("cloud", features=None))
    assert route(schema, ps, ORDER).pool == "cloud"


def test_a_feature_no_pool_has_is_a_400_naming_the_field():
    tools = RequestFeatures(20, 32, needs=frozenset({"tools"}))
    ps = pools(view("edge", features=frozenset({"n"})), view("cloud", features=frozenset({"tool_choice"})))
    d = route(tools, ps, ORDER)
    assert (d.outcome, d.status, d.param) == (Outcome.INELIGIBLE, 400, "tools")


def test_full_pools_and_a_starting_one_wait_for_it_until_the_wait_expires():
    ps = pools(view("edge", in_flight=6), view("cloud", ready=0, starting=1))
    d = route(SMALL, ps, ORDER, waited_s=10, max_wait_s=180)
    assert (d.outcome, d.pool) == (Outcome.WAIT, "cloud") and "1 starting" in d.reason
    d = route(SMALL, ps, ORDER, waited_s=180, max_wait_s=180)
    assert (d.outcome, d.status) == (Outcome.BUSY, 429) and d.reason.startswith("waited 180s")


def test_a_pool_at_zero_takes_waiters_up_to_its_limit_and_then_503():
    zero = {"ready": 0, "starting": 0, "at_zero": 2}
    d = route(SMALL, pools(view("cloud", **zero, waiting=1)), ["cloud"])
    assert (d.outcome, d.pool) == (Outcome.WAIT, "cloud") and "scale from zero" in d.reason
    d = route(SMALL, pools(view("cloud", **zero, waiting=2)), ["cloud"])
    assert (d.outcome, d.status) == (Outcome.UNAVAILABLE, 503)


def test_the_wait_room_of_starting_replicas_is_their_future_queue_room():
    full_edge = view("edge", in_flight=6)
    assert route(SMALL, pools(full_edge, view("cloud", ready=0, starting=2, waiting=11)), ORDER).outcome is Outcome.WAIT
    assert route(SMALL, pools(full_edge, view("cloud", ready=0, starting=2, waiting=12)), ORDER).outcome is Outcome.BUSY


def test_without_a_plan_cpu_pools_fill_first_and_a_class_preference_puts_its_pool_first():
    cfg = AppConfig(router=RouterConfig(slo_class_preferences={"interactive": "cloud"}))
    order = configured_order(cfg)
    assert order.for_class(None) == ["edge", "cloud"]
    assert order.for_class("interactive") == ["cloud", "edge"]
    explicit = AppConfig(router=RouterConfig(fill_order=["cloud"]))
    assert configured_order(explicit).for_class(None) == ["cloud", "edge"]


def test_the_plans_fill_order_and_admission_replace_the_configured_ones():
    cfg = AppConfig(router=RouterConfig(slo_class_preferences={"batch": "edge"}))
    plan = RoutingPlan(fill_order=["cloud", "edge"], pools={"edge": PoolAdmission(max_concurrency_per_replica=2)})
    assert fill_order(plan, cfg).for_class(None) == ["cloud", "edge"]
    assert fill_order(plan, cfg).for_class("batch") == ["edge", "cloud"], "a configured class keeps its pool"
    views = with_plan({"edge": view("edge", ongoing=8), "cloud": view("cloud", ongoing=8)}, plan)
    assert views["edge"].admit_limit == 2 and views["cloud"].admit_limit == 8


def test_config_rejects_an_unknown_pool_in_the_fill_order_or_preferences():
    with pytest.raises(ValueError, match="fill_order: 'gpu' is not one of the pools"):
        AppConfig(router=RouterConfig(fill_order=["gpu"]))
    with pytest.raises(ValueError, match="slo_class_preferences.batch"):
        AppConfig(router=RouterConfig(slo_class_preferences={"batch": "nowhere"}))


def test_config_rejects_unknown_engine_and_fields():
    with pytest.raises(ValueError, match="engine"):
        PoolConfig(engine="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ongoing"):
        PoolConfig(engine="vllm", max_ongoing="many")  # type: ignore[call-arg]


def test_a_yielding_pool_takes_only_what_no_other_pool_has_room_for_even_queued():
    # Edge is first in the fill order but yields its cores (the controller's machine model): cloud takes its SLO room,
    # its free slots and its queue first; edge only then, and says so; 429 once both are full.
    edge = dict(yields=True, admit=2)
    d = route(SMALL, pools(view("edge", **edge), view("cloud", admit=2)), ORDER)
    assert d.pool == "cloud" and d.reason.startswith("edge yields its cores: room within its SLO-safe")
    d = route(SMALL, pools(view("edge", **edge), view("cloud", admit=2, in_flight=5)), ORDER)
    assert d.pool == "cloud" and "queued" in d.reason, "cloud's queue before edge's free slots"
    d = route(SMALL, pools(view("edge", **edge), view("cloud", in_flight=6)), ORDER)
    assert d.pool == "edge" and d.reason.startswith("every other pool full, even its queue; first pool")
    d = route(SMALL, pools(view("edge", in_flight=6, **edge), view("cloud", in_flight=6)), ORDER)
    assert d.status == 429
    # A prompt beyond the other pool's SLO prompt limit still goes where it meets the SLO, yielding or not.
    long = RequestFeatures(prompt_tokens=900, max_tokens=32)
    d = route(long, pools(view("edge", slo_max_prompt_tokens=500), view("cloud", yields=True)), ORDER)
    assert d.pool == "cloud" and "SLO-safe" in d.reason


def test_a_yielding_pool_gets_no_probe_but_serves_when_it_is_the_only_ready_one():
    ps = pools(view("edge", yields=True, probe_due=True), view("cloud"))
    assert route(SMALL, ps, ORDER).pool == "cloud"
    d = route(SMALL, pools(view("edge", yields=True), view("cloud", ready=0, starting=1)), ORDER)
    assert d.pool == "edge" and not d.reason.startswith("every other pool"), "nothing else is ready to yield to"


def test_the_plans_yield_reaches_the_routers_view_and_its_report():
    plan = RoutingPlan(fill_order=["edge", "cloud"], pools={"edge": PoolAdmission(max_concurrency_per_replica=2,
                                                                                    yields=True)})
    views = with_plan(pools(view("edge"), view("cloud")), plan)
    assert views["edge"].yields and not views["cloud"].yields
    assert admission_of(views["edge"]).yields
