"""Knob search: candidates from a search space, the Pareto front, the best policy written as a valid file."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.control.policy_loader import load_policy_file
from orchestrator.sim._yaml import SimConfigError
from orchestrator.sim.engine import prepare_workload, synthetic_trace
from orchestrator.sim.report import Latency, RunSummary
from orchestrator.sim.tune import (
    Candidate,
    Range,
    SearchSpace,
    apply_knobs,
    load_space,
    pareto_front,
    tune,
    write_policy,
)
from tests.unit.sim_support import policy_file, sim_config


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_random_candidates_are_deterministic_for_a_seed() -> None:
    space = SearchSpace.model_validate({"method": "random", "samples": 5, "seed": 3, "knobs": {
        "guardrails.downscale_delay_s": {"low": 30, "high": 600},
        "guardrails.max_step_per_tick": {"low": 1, "high": 4, "integer": True},
        "pools.cloud.target_ongoing_requests_per_replica": [2, 4, 8]}})
    a, b = space.candidates(), space.candidates()
    assert a == b and len(a) == 5
    assert all(30 <= c["guardrails.downscale_delay_s"] <= 600 and isinstance(c["guardrails.max_step_per_tick"], int)
               for c in a)
    other = space.model_copy(update={"seed": 4}).candidates()
    assert other != a


def test_a_grid_is_the_product_of_lists_and_range_points() -> None:
    space = SearchSpace.model_validate({"method": "grid", "knobs": {
        "guardrails.upscale_delay_s": [0, 15], "tick_interval_s": {"low": 1, "high": 100, "log": True, "num": 3}}})
    cands = space.candidates()
    assert len(cands) == 6
    assert sorted({c["tick_interval_s"] for c in cands}) == [1.0, 10.0, 100.0]
    assert Range(low=1, high=2, integer=True, num=5).grid() == [1, 2]


def summary(cost: float, att: float) -> RunSummary:
    lat = Latency(p50_s=1, p95_s=1, p99_s=1)
    return RunSummary(label="x", policy="p", requests=1, served=1, status_counts={}, rejected_429=0, dropped=0,
                      duration_s=1, cost_usd=cost, cost_per_hour_usd=1, cost_per_1m_output_tokens_usd=None,
                      output_tokens_served=0, slo_ttft_s=1, slo_e2e_s=1, slo_attainment=att, ttft_attainment=att,
                      e2e_attainment=att, ttft=lat, e2e=lat, pools={}, scaling_actions=0, wall_s=0)


def test_the_pareto_front_keeps_only_undominated_candidates() -> None:
    points = [(1.0, 0.80), (2.0, 0.90), (1.5, 0.70), (3.0, 0.90), (2.5, 0.99), (0.5, 0.50)]
    cands = [Candidate(i, {}, summary(c, a), None) for i, (c, a) in enumerate(points)]
    cands.append(Candidate(99, {}, None, None, error="invalid"))
    assert [c.index for c in pareto_front(cands)] == [5, 0, 1, 4]


def test_a_space_naming_an_unknown_setting_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "method: grid\nknobs:\n  guardrails.upscale_delay_s: [0, 15]\n"
                           "  guardrails.downscale_dely_s: [60]\n  policy.knobs.slo_marg: [0.5]\n")
    with pytest.raises(SimConfigError) as e:
        load_space(path, policy_file(name="cost_aware"))
    text = str(e.value)
    assert f"{path}:4: knobs.guardrails.downscale_dely_s: guardrails has no setting 'downscale_dely_s' " \
           "(did you mean 'downscale_delay_s'?)" in text
    assert f"{path}:5: knobs.policy.knobs.slo_marg: policy 'cost_aware' has no knob 'slo_marg' " \
           "(did you mean 'slo_margin'?)" in text


def test_a_malformed_space_is_refused_with_its_field(tmp_path: Path) -> None:
    path = write(tmp_path, "method: grid\nknobs:\n  guardrails.upscale_delay_s: {low: 10, high: 1}\n")
    with pytest.raises(SimConfigError, match=r"space\.yaml:3: knobs\.guardrails\.upscale_delay_s.*high 1.0 is below"):
        load_space(path, policy_file())
    with pytest.raises(SimConfigError, match="knobs: .*at least 1 item"):
        load_space(write(tmp_path, "knobs: {}\n"), policy_file())


def test_an_invalid_candidate_is_recorded_not_fatal() -> None:
    with pytest.raises(ValueError, match="min_replicas 4 is greater than max_replicas 3"):
        apply_knobs(policy_file(), {"pools.edge.min_replicas": 4})
    space = SearchSpace.model_validate({"method": "grid", "knobs": {"pools.edge.min_replicas": [1, 4]}})
    result = tune(prepare_workload(synthetic_trace(2.0, 120)), policy_file(), sim_config(), space,
                  target_attainment=0.9)
    assert [c.error is None for c in result.candidates] == [True, True, False]


def test_tuning_finds_the_cheapest_policy_meeting_the_target_and_writes_it(tmp_path: Path) -> None:
    # A burst; a longer downscale delay keeps capacity (cost) for longer.
    workload = prepare_workload(synthetic_trace([(0, 1.0), (100, 12.0), (160, 1.0)], 500, seed=1))
    space = SearchSpace.model_validate({"method": "grid", "knobs": {
        "guardrails.downscale_delay_s": [10, 300], "guardrails.upscale_delay_s": [0, 60]}})
    result = tune(workload, policy_file(), sim_config(), space, target_attainment=0.5)
    assert len(result.candidates) == 5 and result.best is not None
    ok = [c for c in result.candidates if c.summary and c.summary.slo_attainment >= 0.5]
    assert result.best.summary.cost_usd == min(c.summary.cost_usd for c in ok)
    assert result.front and all(c.on_front for c in result.front)
    path = write_policy(tmp_path / "best.yaml", result.best.policy_file, "tuned\nin a test")
    assert path.read_text().startswith("# tuned\n# in a test\n")
    assert load_policy_file(path) == result.best.policy_file
