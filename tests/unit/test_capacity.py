"""Capacity at the SLO: the largest SLO-safe concurrency for a request mix, its rate, the learned correction, and
Erlang-B headroom; every figure computed by hand from round-number profiles."""

from __future__ import annotations

import math

import pytest

from orchestrator.control.capacity import (
    Correction,
    ProfilePoint,
    ReplicaProfile,
    RequestMix,
    capacity_at_slo,
    erlang_b,
    slots_for,
)

# TTFT = prompt / 1000 tok/s + 0.1 s; TPOT 20 ms alone, +10 ms per extra request (30 ms at 2, ..., 90 ms at 8).
PROFILE = ReplicaProfile(
    name="test", source="unit test", max_concurrency=8, prefill_tokens_per_s=1000.0,
    points=[ProfilePoint(concurrency=1, ttft_overhead_s=0.1, tpot_s=0.02),
            ProfilePoint(concurrency=8, ttft_overhead_s=0.1, tpot_s=0.09)],
)
# 100-token prompts (0.1 s prefill: TTFT 0.2 s) and 51-token answers (50 further tokens).
MIX = RequestMix((100,) * 20, (51,) * 20)


def test_the_slo_safe_concurrency_is_the_largest_whose_p95_e2e_fits_within_the_margin():
    # E2E(n) = 0.2 + 50 x TPOT(n); within 0.8 x 3 s = 2.4 s needs TPOT <= 44 ms: n = 3 (40 ms), not 4 (50 ms).
    cap = capacity_at_slo(PROFILE, MIX, ttft_slo_s=2.0, e2e_slo_s=3.0, max_concurrency=8, margin=0.8)
    assert cap.concurrency == 3 and cap.limited_by == "e2e"
    assert cap.service_s == pytest.approx(0.2 + 50 * 0.04)
    assert cap.rps == pytest.approx(3 / 2.2)  # Little's law at the SLO-safe concurrency
    assert "3/replica at the SLO = 1.36 rps/replica" in cap.describe() and "profile prior" in cap.describe()


def test_the_router_slots_cap_the_concurrency_when_the_slo_allows_more():
    cap = capacity_at_slo(PROFILE, MIX, ttft_slo_s=2.0, e2e_slo_s=30.0, max_concurrency=5)
    assert (cap.concurrency, cap.limited_by) == (5, "slots")


def test_a_mix_no_concurrency_serves_within_the_slo_gets_zero():
    long_prompts = RequestMix((3000,) * 10, (10,) * 10)  # 3 s of prefill alone, TTFT objective 2 s
    cap = capacity_at_slo(PROFILE, long_prompts, ttft_slo_s=2.0, e2e_slo_s=20.0, max_concurrency=8)
    assert cap.concurrency == 0 and cap.rps == 0.0 and cap.limited_by == "ttft"
    assert "meets no SLO" in cap.describe()


def test_prefill_caps_the_rate_of_long_prompts():
    # 1000-token prompts: 1 s of prefill each; at most 70% busy -> 0.7 rps per replica, whatever the slots.
    mix = RequestMix((1000,) * 10, (2,) * 10)
    cap = capacity_at_slo(PROFILE, mix, ttft_slo_s=5.0, e2e_slo_s=20.0, max_concurrency=8, prefill_utilisation=0.7)
    assert cap.limited_by == "prefill" and cap.rps == pytest.approx(0.7)
    assert cap.concurrency == math.ceil(0.7 * cap.service_s)


def test_the_p95_of_the_mix_decides_not_its_mean():
    # 19 short answers and one of 500 tokens: the 95th percentile sits between them (linear interpolation).
    mix = RequestMix((100,) * 20, (51,) * 19 + (501,))
    cap = capacity_at_slo(PROFILE, mix, ttft_slo_s=2.0, e2e_slo_s=30.0, max_concurrency=8, margin=0.8)
    e2e_p95_at = {n: 0.2 + (50 + 0.05 * 450) * (0.02 + 0.01 * (n - 1)) for n in range(1, 9)}
    assert cap.concurrency == max(n for n, v in e2e_p95_at.items() if v <= 24.0)


def test_a_pool_measured_slower_than_its_profile_gets_a_lower_slo_safe_concurrency():
    prior = capacity_at_slo(PROFILE, MIX, ttft_slo_s=2.0, e2e_slo_s=3.0, max_concurrency=8)
    corr = Correction()
    for _ in range(10):  # 10 x 20 requests at concurrency 2 whose TPOT was twice the profile's 30 ms
        corr = corr.observe(PROFILE, 2, 20, ttft_mean_s=0.2, tpot_mean_s=0.06, prompt_mean=100)
    assert corr.weight == 200 and corr.tpot_scale(prior_weight=20) == pytest.approx(math.exp(200 * math.log(2) / 220))
    learned = capacity_at_slo(PROFILE, MIX, ttft_slo_s=2.0, e2e_slo_s=3.0, max_concurrency=8, correction=corr)
    assert learned.concurrency < prior.concurrency and learned.rps < prior.rps
    assert "learned from 200 req" in learned.describe()


def test_the_prior_weighs_against_few_observations_and_decays_away():
    corr = Correction().observe(PROFILE, 1, 1, ttft_mean_s=0.4, tpot_mean_s=0.04, prompt_mean=100)
    assert corr.ttft_scale(20) == pytest.approx(2 ** (1 / 21))  # one request barely moves a 20-request prior
    assert corr.decayed(0.5).weight == 0.5 and corr.decayed(0.5).ttft_scale(0) == pytest.approx(2.0)


def test_erlang_b_matches_the_textbook_values():
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(2, 1.0) == pytest.approx(0.2)
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, rel=1e-4)
    assert erlang_b(5, 0.0) == 0.0


def test_slots_for_is_the_fewest_that_keep_overflow_within_the_target():
    assert slots_for(5.0, 0.02, 100) == 10  # B(10, 5) = 1.8% <= 2% < B(9, 5) = 3.7%
    assert slots_for(5.0, 0.02, 8) == 8  # capped
    assert slots_for(0.0, 0.01, 8) == 0


def test_a_tpot_that_grows_with_the_context_lowers_the_slo_safe_concurrency_of_long_prompts():
    # PROFILE plus 20 us per token of context: 100-token prompts decode at a mean context of 125.5 tokens (+2.5 ms a
    # token), 1000-token prompts at 1025.5 (+20.5 ms) and so reach the E2E margin at fewer requests at once.
    ctx = PROFILE.model_copy(update={"points": [p.model_copy(update={"tpot_s_per_context_token": 2e-5})
                                                for p in PROFILE.points]})
    assert ctx.tpot_s(1, 1000) == pytest.approx(0.02 + 0.02)
    short = capacity_at_slo(ctx, MIX, ttft_slo_s=5.0, e2e_slo_s=3.0, max_concurrency=8, margin=0.8)
    # E2E(n) = 0.2 + 50 x (TPOT(n) + 20 us x 125.5) <= 2.4 s: TPOT(n) <= 41.5 ms, n = 3 (40 ms)
    assert short.concurrency == 3 and short.service_s == pytest.approx(0.2 + 50 * (0.04 + 2e-5 * 125.5))
    long_mix = RequestMix((1000,) * 20, (51,) * 20)
    # E2E(n) = 1.1 + 50 x (TPOT(n) + 20.51 ms) <= 2.4 s: TPOT(n) <= 5.5 ms, below 20 ms alone: none
    assert capacity_at_slo(PROFILE, long_mix, ttft_slo_s=5.0, e2e_slo_s=3.0, max_concurrency=8).concurrency == 1
    assert capacity_at_slo(ctx, long_mix, ttft_slo_s=5.0, e2e_slo_s=3.0, max_concurrency=8).concurrency == 0
    # What the router observed at the mean prompt's context is what the profile predicts there: no correction.
    corr = Correction().observe(ctx, 1, 10, None, ctx.tpot_s(1, 1000), 1000)
    assert corr.tpot_scale(20.0) == pytest.approx(1.0)
