"""Routing policy decisions: preference, saturation, spill both ways, readiness, 429/503/400."""

from __future__ import annotations

import pytest

from deployments.config import AppConfig, Eligibility, PoolConfig, RouterConfig
from deployments.routing import Outcome, PoolView, RequestFeatures, choose_pool, preference_order, preferred_pool

SMALL = RequestFeatures(prompt_tokens=20, max_tokens=32)


def view(name: str, ready: int = 1, in_flight: int = 0, ongoing: int = 2, queued: int = 1, starting: int = 0,
         waiting: int = 0, at_zero: int = 0, **elig) -> PoolView:
    return PoolView(name, ready, in_flight, ongoing, queued, Eligibility(**elig), starting, waiting, at_zero)


def pools(*views: PoolView) -> dict[str, PoolView]:
    return {v.name: v for v in views}


def test_request_goes_to_the_preferred_pool_when_it_has_a_free_slot():
    d = choose_pool(SMALL, pools(view("cloud"), view("edge")), ["cloud", "edge"])
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "cloud")


def test_saturated_cloud_pool_spills_to_edge():
    d = choose_pool(SMALL, pools(view("cloud", in_flight=2), view("edge")), ["cloud", "edge"])
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "edge")
    assert "spilled from cloud" in d.reason


def test_saturated_edge_pool_spills_to_cloud_when_edge_is_preferred():
    d = choose_pool(SMALL, pools(view("cloud"), view("edge", in_flight=2)), ["edge", "cloud"])
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "cloud")


def test_pool_with_no_ready_replica_is_skipped():
    d = choose_pool(SMALL, pools(view("cloud", ready=0), view("edge")), ["cloud", "edge"])
    assert d.pool == "edge"


def test_request_queues_in_the_preferred_pool_when_every_slot_is_busy():
    d = choose_pool(SMALL, pools(view("cloud", in_flight=2), view("edge", in_flight=2)), ["cloud", "edge"])
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "cloud")
    assert "queued" in d.reason


def test_queue_room_scales_with_ready_replicas():
    assert view("cloud", ready=3, ongoing=2, queued=1).queue_limit == 9
    d = choose_pool(SMALL, pools(view("cloud", ready=3, in_flight=8)), ["cloud"])
    assert d.pool == "cloud"


def test_every_pool_at_its_queue_limit_is_busy():
    d = choose_pool(SMALL, pools(view("cloud", in_flight=3), view("edge", in_flight=3)), ["cloud", "edge"])
    assert (d.outcome, d.pool) == (Outcome.BUSY, None)
    assert "cloud 3/3" in d.reason and "edge 3/3" in d.reason


def test_no_ready_replica_anywhere_is_unavailable_not_busy():
    d = choose_pool(SMALL, pools(view("cloud", ready=0), view("edge", ready=0)), ["cloud", "edge"])
    assert d.outcome is Outcome.UNAVAILABLE


def test_prompt_too_large_for_edge_goes_to_cloud_even_when_edge_is_preferred():
    big = RequestFeatures(prompt_tokens=900, max_tokens=32)
    d = choose_pool(big, pools(view("cloud"), view("edge", max_prompt_tokens=512)), ["edge", "cloud"])
    assert d.pool == "cloud"


def test_ineligible_pool_is_not_a_spill_target_even_when_the_other_is_full():
    big = RequestFeatures(prompt_tokens=20, max_tokens=500)
    d = choose_pool(big, pools(view("cloud", in_flight=3), view("edge", max_output_tokens=256)), ["cloud", "edge"])
    assert d.outcome is Outcome.BUSY


def test_request_no_pool_accepts_is_ineligible():
    big = RequestFeatures(prompt_tokens=2000, max_tokens=10, slo_class="batch")
    d = choose_pool(big, pools(view("edge", max_prompt_tokens=512)), ["edge"])
    assert d.outcome is Outcome.INELIGIBLE
    assert "2000 prompt tokens" in d.reason and "'batch'" in d.reason


def test_slo_class_restricts_eligible_pools():
    edge_only_batch = view("edge", slo_classes=["batch"])
    assert choose_pool(RequestFeatures(5, 5, "interactive"), pools(view("cloud"), edge_only_batch), ["edge", "cloud"]).pool == "cloud"
    assert choose_pool(RequestFeatures(5, 5, "batch"), pools(view("cloud"), edge_only_batch), ["edge", "cloud"]).pool == "edge"
    # A request without a class is the "default" class.
    assert not edge_only_batch.accepts(RequestFeatures(5, 5, None))
    assert view("edge", slo_classes=["default"]).accepts(RequestFeatures(5, 5, None))


def test_preference_follows_the_slo_class_then_the_default():
    cfg = AppConfig(router=RouterConfig(default_pool="cloud", slo_class_preferences={"batch": "edge"}))
    assert preferred_pool(cfg, "batch") == "edge"
    assert preferred_pool(cfg, "interactive") == "cloud"
    assert preferred_pool(cfg, None) == "cloud"
    assert preference_order(["cloud", "edge"], "edge") == ["edge", "cloud"]


def test_config_rejects_a_preference_for_an_unknown_pool():
    with pytest.raises(ValueError, match="'gpu' is not one of the pools"):
        AppConfig(router=RouterConfig(default_pool="gpu"))
    with pytest.raises(ValueError, match="slo_class_preferences.batch"):
        AppConfig(router=RouterConfig(slo_class_preferences={"batch": "nowhere"}))


def test_config_rejects_unknown_engine_and_fields():
    with pytest.raises(ValueError, match="engine"):
        PoolConfig(engine="tgi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_ongoing"):
        PoolConfig(engine="vllm", max_ongoing="many")  # type: ignore[call-arg]


def test_controller_override_wins_over_configured_preferences():
    cfg = AppConfig(router=RouterConfig(default_pool="cloud", slo_class_preferences={"batch": "edge"}))
    assert preferred_pool(cfg, None, {"default": "edge"}) == "edge"
    assert preferred_pool(cfg, "interactive", {"default": "edge"}) == "edge"
    assert preferred_pool(cfg, "batch", {"batch": "cloud", "default": "edge"}) == "cloud"
    assert preferred_pool(cfg, "batch", {"default": "cloud"}) == "edge", "a configured class keeps its pool"


# --- cold start: wait for capacity on its way instead of refusing -------------------------------------------------


def test_full_edge_and_starting_cloud_waits_for_cloud_instead_of_429():
    d = choose_pool(SMALL, pools(view("edge", in_flight=3), view("cloud", ready=0, starting=1)), ["edge", "cloud"])
    assert (d.outcome, d.pool) == (Outcome.WAIT, "cloud")
    assert "1 starting" in d.reason


def test_a_ready_pool_with_room_is_used_before_waiting_for_a_starting_one():
    d = choose_pool(SMALL, pools(view("cloud", ready=0, starting=2), view("edge")), ["cloud", "edge"])
    assert (d.outcome, d.pool) == (Outcome.ROUTE, "edge")


def test_wait_room_is_the_queue_room_of_the_starting_replicas():
    # 2 starting replicas x (2 slots + 1 queued) = 6 requests may wait; the 7th is refused.
    full_edge = view("edge", in_flight=3)
    assert choose_pool(SMALL, pools(full_edge, view("cloud", ready=0, starting=2, waiting=5)),
                       ["edge", "cloud"]).outcome is Outcome.WAIT
    d = choose_pool(SMALL, pools(full_edge, view("cloud", ready=0, starting=2, waiting=6)), ["edge", "cloud"])
    assert d.outcome is Outcome.BUSY


def test_pool_scaled_to_zero_takes_waiters_up_to_its_limit_and_then_503():
    zero = {"ready": 0, "starting": 0, "at_zero": 2}
    d = choose_pool(SMALL, pools(view("cloud", **zero, waiting=1)), ["cloud"])
    assert (d.outcome, d.pool) == (Outcome.WAIT, "cloud") and "scale from zero" in d.reason
    d = choose_pool(SMALL, pools(view("cloud", **zero, waiting=2)), ["cloud"])
    assert d.outcome is Outcome.UNAVAILABLE


def test_a_serving_pool_without_starting_replicas_never_waits():
    d = choose_pool(SMALL, pools(view("cloud", in_flight=3, at_zero=5)), ["cloud"])
    assert d.outcome is Outcome.BUSY


def test_waiting_follows_the_preference_order_and_eligibility():
    big = RequestFeatures(prompt_tokens=900, max_tokens=32)
    ps = pools(view("edge", ready=0, starting=1, max_prompt_tokens=768), view("cloud", ready=0, starting=1))
    assert choose_pool(SMALL, ps, ["edge", "cloud"]).pool == "edge"
    assert choose_pool(big, ps, ["edge", "cloud"]).pool == "cloud", "edge cannot take the long prompt"
