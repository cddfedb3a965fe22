"""Replica profiles (interpolation, fitting from bench records) and the sim config (loading, errors)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from orchestrator.bench.report import build_report, write_report
from orchestrator.bench.stats import RequestRecord, summarize
from orchestrator.control.config import PolicyFile
from orchestrator.sim._yaml import SimConfigError
from orchestrator.sim.model import DEFAULT_SIM_CONFIG_PATH, LogNormalDelay, UniformDelay, load_sim_config
from orchestrator.sim.profile import (
    ReplicaProfile,
    Sample,
    ServiceCurve,
    fit_profile,
    load_profile,
    samples_from_bench,
)
from tests.unit.sim_support import policy_file, profile, sim_config

PROFILES = DEFAULT_SIM_CONFIG_PATH.parent.parent / "profiles"


def test_profiles_interpolate_between_points_and_extrapolate_the_last_segment() -> None:
    p = ReplicaProfile.model_validate({
        "name": "t", "source": "t", "max_concurrency": 64, "prefill_tokens_per_s": 1000,
        "points": [{"concurrency": 1, "ttft_overhead_s": 0.01, "tpot_s": 0.010},
                   {"concurrency": 5, "ttft_overhead_s": 0.05, "tpot_s": 0.020}]})
    assert p.tpot_s(1) == 0.010 and p.tpot_s(3) == pytest.approx(0.015)
    assert p.tpot_s(9) == pytest.approx(0.030)  # the last slope, continued
    assert p.ttft_overhead_s(0) == 0.01
    curve = ServiceCurve.of(p, limit=8)
    assert curve.limit == 8 and curve.tpot_s[5] == pytest.approx(0.020)
    assert curve.prefill_s_per_token[1] == curve.prefill_s_per_token[8] == pytest.approx(0.001)


def test_a_points_own_prefill_rate_overrides_the_profiles_and_interpolates() -> None:
    p = ReplicaProfile.model_validate({
        "name": "t", "source": "t", "max_concurrency": 8, "prefill_tokens_per_s": 1000,
        "points": [{"concurrency": 1, "ttft_overhead_s": 0.0, "tpot_s": 0.01, "prefill_tokens_per_s": 4000},
                   {"concurrency": 3, "ttft_overhead_s": 0.0, "tpot_s": 0.01}]})
    assert p.ttft_s(400, 1) == pytest.approx(0.1)  # alone: its own 4,000 tokens/s
    assert p.ttft_s(400, 3) == pytest.approx(0.4)  # the profile's 1,000
    assert p.prefill_s_per_token(2) == pytest.approx((0.00025 + 0.001) / 2)
    assert ServiceCurve.of(p, limit=4).prefill_s_per_token[1] == pytest.approx(0.00025)


def test_every_shipped_profile_loads_and_says_where_its_numbers_come_from() -> None:
    for path in PROFILES.glob("*.yaml"):
        p = load_profile(path)
        assert p.source.strip()
    for demo in ("demo_cloud_vllm_cpu.yaml", "demo_edge_transformers.yaml"):  # measured with `elo bench profile`
        measured = load_profile(PROFILES / demo)
        assert not measured.placeholder and measured.source.startswith("measured")
        assert "MEASURED" in (PROFILES / demo).read_text().splitlines()[0]  # the header says when, where and how
    gpu = load_profile(PROFILES / "cloud_gpu_h100_llama31_8b.yaml")
    assert not gpu.placeholder and "https://" in gpu.source


def test_a_bad_profile_names_the_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nsource: y\nmax_concurrency: 4\nprefill_tokens_per_s: 100\npoints:\n"
                    "  - {concurrency: 4, ttft_overhead_s: 0.1, tpot_s: 0.01}\n"
                    "  - {concurrency: 2, ttft_overhead_s: 0.1, tpot_s: 0.01}\n")
    with pytest.raises(SimConfigError, match=r"p\.yaml:5: points: concurrency must increase"):
        load_profile(path)


def known_samples(prompts: list[int], seed: int = 0) -> list[Sample]:
    """TTFT = overhead(c) + P / 5000, TPOT = 10 ms + 1 ms per extra request, with 2% noise."""
    rng = random.Random(seed)
    overhead = {1: 0.02, 4: 0.05, 8: 0.09}
    out = []
    for c, o in overhead.items():
        for p in prompts:
            for _ in range(30):
                noise = 1 + rng.uniform(-0.02, 0.02)
                ttft, tpot = (o + p / 5000) * noise, (0.010 + 0.001 * (c - 1)) * noise
                out.append(Sample(c, p, ttft, tpot, ttft + 31 * tpot, 32))
    return out


def test_fitting_recovers_the_prefill_rate_and_per_concurrency_overheads() -> None:
    fit = fit_profile(known_samples([64, 512]), name="known", source="test")
    p = fit.profile
    assert p.prefill_tokens_per_s == pytest.approx(5000, rel=0.05)
    assert [pt.concurrency for pt in p.points] == [1, 4, 8]
    assert [pt.ttft_overhead_s for pt in p.points] == pytest.approx([0.02, 0.05, 0.09], abs=0.005)
    assert [pt.tpot_s for pt in p.points] == pytest.approx([0.010, 0.013, 0.017], rel=0.03)
    assert p.max_concurrency == 8


def test_a_concurrency_that_prefills_much_faster_gets_its_own_rate() -> None:
    # A batching engine: alone it prefills at 20,000 tokens/s, into a busy batch at 5,000.
    fast_alone = [Sample(1, s.prompt_tokens, s.ttft_s - s.prompt_tokens / 5000 + s.prompt_tokens / 20000, s.tpot_s,
                         s.e2e_s, s.output_tokens) if s.concurrency == 1 else s for s in known_samples([64, 512])]
    fit = fit_profile(fast_alone, name="waves", source="test")
    own = {pt.concurrency: pt.prefill_tokens_per_s for pt in fit.profile.points}
    assert own[1] == pytest.approx(20000, rel=0.1) and own[4] is None and own[8] is None
    assert fit.profile.prefill_tokens_per_s == pytest.approx(5000, rel=0.2)
    assert fit.quality is not None and fit.quality.worst_ttft_error < 0.1
    assert any("concurrency 1: its own prefill rate" in n for n in fit.notes)
    # Rates within 1.5x of the shared one are the shared one (no per-point noise).
    assert all(pt.prefill_tokens_per_s is None for pt in fit_profile(known_samples([64, 512]), name="k",
                                                                      source="t").profile.points)


def test_the_fit_reports_its_quality_against_its_own_runs() -> None:
    q = fit_profile(known_samples([64, 512]), name="known", source="test").quality
    assert q is not None and len(q.cells) == 6  # 3 concurrencies x 2 prompt lengths
    cell = next(c for c in q.cells if (c.concurrency, c.prompt_tokens) == (4, 512))
    assert cell.requests == 30 and cell.ttft_measured_s == pytest.approx(0.05 + 512 / 5000, rel=0.03)
    assert cell.ttft_predicted_s == pytest.approx(cell.ttft_measured_s, rel=0.05)
    assert cell.e2e_predicted_s == pytest.approx(cell.e2e_measured_s, rel=0.05) and cell.one_chunk_share == 0
    assert q.worst_ttft_error < 0.05 and q.worst_e2e_error < 0.05 and q.ttft_r2 > 0.95
    assert "median TTFT within" in q.summary() and len(q.lines()) == 7


def test_the_fit_counts_requests_whose_whole_output_came_in_one_chunk() -> None:
    stalled = [Sample(8, 32, 1.2, 0.0001, 1.2 + 63 * 0.0001, 64)] * 3 + [Sample(8, 32, 0.1, 0.015, 1.045, 64)]
    q = fit_profile(stalled, name="stalls", source="test").quality
    assert q is not None and q.cells[0].one_chunk_share == pytest.approx(0.75)


def test_a_noisy_shared_prefill_slope_falls_back_to_the_lowest_concurrency_and_says_why() -> None:
    # concurrency 1 is clean (5000 tokens/s); at 16 long prompts came back *faster* (stalls on short ones)
    samples = [s for s in known_samples([64, 512]) if s.concurrency == 1]
    samples += [Sample(16, 64, 1.3, 0.02, 2.6, 64)] * 60 + [Sample(16, 512, 0.4, 0.03, 2.3, 64)] * 60
    fit = fit_profile(samples, name="noisy", source="test")
    assert fit.profile.prefill_tokens_per_s == pytest.approx(5000, rel=0.05)
    assert any("taken from concurrency 1 alone" in n for n in fit.notes)
    assert not any("do not vary" in n for n in fit.notes)  # they do vary: the old note said so wrongly
    # no concurrency where TTFT grows with the prompt: conservative, and the note names the reason
    fit = fit_profile([s for s in samples if s.concurrency == 16], name="noisy", source="test")
    assert any("at any concurrency" in n for n in fit.notes) and any("conservative" in n for n in fit.notes)


def test_fitting_one_prompt_length_counts_ttft_as_prefill_and_says_so() -> None:
    fit = fit_profile(known_samples([256]), name="one length", source="test")
    assert any("conservative" in n for n in fit.notes) and any("do not vary" in n for n in fit.notes)
    assert fit.profile.points[0].ttft_overhead_s == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="no successful request"):
        fit_profile([], name="x", source="y")


def write_bench(path: Path, mode: str, concurrency: int | None, records: bool = True) -> Path:
    recs = [RequestRecord(index=i, status=200, start_s=i * 0.1, ttft_s=0.05 + 0.01 * concurrency if concurrency
                          else 0.05, end_s=i * 0.1 + 1.0, output_tokens=32, prompt_tokens=128, pool="edge")
            for i in range(20)]
    report = build_report(label="t", params={"mode": mode, "concurrency": concurrency, "url": "u", "model": "m"},
                          summary=summarize(recs, wall_s=3.0), records=recs if records else None)
    return write_report(report, path)


def test_bench_runs_become_samples_and_need_closed_loop_records(tmp_path: Path) -> None:
    samples = samples_from_bench(write_bench(tmp_path / "c4.json", "concurrency", 4))
    assert len(samples) == 20 and samples[0] == Sample(4, 128, pytest.approx(0.09), pytest.approx((1.0 - 0.09) / 31),
                                                       pytest.approx(1.0), 32)
    assert samples_from_bench(tmp_path / "c4.json", pool="cloud") == []
    with pytest.raises(SimConfigError, match="closed-loop"):
        samples_from_bench(write_bench(tmp_path / "r.json", "rate", None))
    with pytest.raises(SimConfigError, match="--records"):
        samples_from_bench(write_bench(tmp_path / "n.json", "concurrency", 2, records=False))


def test_the_default_sim_config_loads_with_its_profiles() -> None:
    sim = load_sim_config()
    assert set(sim.pools) == {"cloud", "edge"}
    assert not any(p.profile.placeholder for p in sim.pools.values())  # the demo profiles are measured
    sim.check_matches(policy_file())  # same pools as the shipped policy's


def test_the_production_scenario_loads_matches_its_policy_and_flags_its_modelled_edge_profile() -> None:
    from orchestrator.control.capacity import RequestMix, capacity_at_slo
    from orchestrator.control.policy_loader import load_policy_file

    here = DEFAULT_SIM_CONFIG_PATH.parent
    sim = load_sim_config(here / "production_sim.yaml")
    pf = load_policy_file(here / "production_policy.yaml")
    sim.check_matches(pf)
    assert sim.machines == {} and sim.pools["edge"].max_nodes == 4 == pf.pools["edge"].max_replicas
    assert sim.pools["cloud"].node_startup_s.quantile(0.5) >= 120  # GPU nodes take minutes
    assert not sim.pools["cloud"].profile.placeholder and sim.pools["edge"].profile.placeholder
    assert pf.pools["cloud"].profile == sim.pools["cloud"].profile and pf.pools["edge"].profile == sim.pools["edge"].profile
    assert pf.policy == PolicyFile.default().policy and pf.guardrails == PolicyFile.default().guardrails  # shipped
    for path in (here / "production_sim.yaml", here / "production_policy.yaml"):
        assert "ASSUMPTION" in path.read_text() and "https://" in path.read_text() + sim.pools["cloud"].profile.source
    # At these prices an H100 serves a short chat turn within the SLO for less per request/s than a CPU node.
    mix = RequestMix((256, 512, 1024), (64, 128, 256))
    per_rps = {n: pf.pools[n].cost_per_hour_usd / capacity_at_slo(
        sim.pools[n].profile, mix, ttft_slo_s=pf.slo.ttft_p95_s, e2e_slo_s=pf.slo.e2e_p95_s,
        max_concurrency=sim.pools[n].max_ongoing_requests).rps for n in ("cloud", "edge")}
    assert per_rps["cloud"] < per_rps["edge"], per_rps


def test_a_bad_sim_config_names_the_file_line_and_field(tmp_path: Path) -> None:
    doc = sim_config().model_dump(mode="json")
    doc["pools"]["cloud"]["replica_startup_s"] = {"dist": "gamma", "value": 3}
    doc["pools"]["edge"]["max_ongoing_requets"] = 4
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SimConfigError) as e:
        load_sim_config(path)
    text = str(e.value)
    assert "invalid sim config" in text
    assert "pools.cloud.replica_startup_s" in text and "gamma" in text
    assert "pools.edge.max_ongoing_requets: unknown field" in text
    assert f"{path}:" in text


def test_a_sim_config_with_a_missing_profile_or_unknown_pool_is_refused(tmp_path: Path) -> None:
    doc = sim_config().model_dump(mode="json")
    doc["pools"]["cloud"]["profile"] = "nowhere.yaml"
    path = tmp_path / "sim.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SimConfigError, match=r"nowhere\.yaml: cannot read replica profile"):
        load_sim_config(path)
    doc = sim_config().model_dump(mode="json")
    doc["router"]["fill_order"] = ["gpu"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SimConfigError, match="fill_order: 'gpu' is not one of the pools"):
        load_sim_config(path)
    other = policy_file().model_copy(update={"pools": {"cloud": policy_file().pools["cloud"]}})
    with pytest.raises(SimConfigError, match=r"differ from the policy's pools \['cloud'\]"):
        sim_config().check_matches(other)


def test_startup_delays_sample_within_their_distribution() -> None:
    rng = random.Random(0)
    u = UniformDelay(dist="uniform", low=2, high=4)
    assert all(2 <= u.sample(rng) <= 4 for _ in range(100)) and u.quantile(0.5) == 3
    ln = LogNormalDelay(dist="lognormal", median=40, sigma=0.2, max=60)
    xs = sorted(ln.sample(rng) for _ in range(2001))
    assert xs[1000] == pytest.approx(40, rel=0.05) and max(xs) <= 60
    assert ln.quantile(0.5) == pytest.approx(40)
    assert sim_config(cloud_startup=7).pools["cloud"].replica_startup_s.quantile(0.95) == 7  # a bare number
    assert profile()["points"][0]["tpot_s"] == 0.02


def test_a_tpot_that_grows_with_the_context_is_fitted_as_a_line_and_predicts_e2e() -> None:
    # TPOT = 4 ms + 2 us per token of context (prompt + half of the 32-token output), at 1 and 4 at once.
    samples = []
    for c in (1, 4):
        for p in (32, 256, 896):
            tpot = 0.004 * c + 2e-6 * (p + 16)
            samples += [Sample(c, p, 0.01 + p / 10000, tpot, 0.01 + p / 10000 + 31 * tpot, 32)] * 10
    fit = fit_profile(samples, name="context", source="test")
    pts = {pt.concurrency: pt for pt in fit.profile.points}
    assert pts[1].tpot_s == pytest.approx(0.004) and pts[1].tpot_s_per_context_token == pytest.approx(2e-6)
    assert pts[4].tpot_s == pytest.approx(0.016) and pts[4].tpot_s_per_context_token == pytest.approx(2e-6)
    assert fit.profile.tpot_s(1, 912) == pytest.approx(0.004 + 2e-6 * 912)
    assert fit.quality is not None and fit.quality.worst_e2e_error < 0.01
    assert any("per token of context" in n for n in fit.notes)
    # A TPOT flat in the prompt (known_samples) keeps the median and no slope.
    assert all(pt.tpot_s_per_context_token is None
               for pt in fit_profile(known_samples([64, 512]), name="k", source="t").profile.points)
