"""The `elo simulate / tune / sim2real / bench profile` commands end to end on small files (no cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.bench.stats import RequestRecord
from orchestrator.bench.trace import write_trace_jsonl
from orchestrator.cli import app
from orchestrator.sim.engine import simulate, synthetic_trace
from orchestrator.sim.sim2real import LiveRun, comparison_rows, integrate_ready, live_side, sim_side
from tests.unit.sim_support import policy_file, sim_config

runner = CliRunner()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    trace = tmp_path / "trace.jsonl"
    write_trace_jsonl(synthetic_trace([(0, 1.0), (60, 8.0), (120, 1.0)], 240, seed=0), trace)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(policy_file().model_dump(mode="json")))
    sim = tmp_path / "sim.yaml"
    sim.write_text(yaml.safe_dump(sim_config().model_dump(mode="json")))
    return {"trace": trace, "policy": policy, "sim": sim, "dir": tmp_path}


def test_simulate_compare_prints_writes_json_and_draws(files: dict[str, Path]) -> None:
    out = files["dir"] / "out"
    r = runner.invoke(app, ["simulate", "--trace", str(files["trace"]), "--policy", str(files["policy"]),
                            "--sim-config", str(files["sim"]), "--compare", "--out", str(out)],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "static peak" in r.output and "Ray Serve default" in r.output and "oracle" in r.output
    doc = json.loads((out / "simulation.json").read_text())
    runs = {run["label"]: run for run in doc["runs"]}
    assert set(runs) == {"queue_target (policy)", "static peak", "edge only", "best static mix", "Ray Serve default",
                         "KPA-like", "GPU only", "oracle"}
    assert runs["oracle"]["cost_ratio_to_oracle"] == pytest.approx(1.0)
    assert runs["oracle"]["slo_attainment"] >= 0.99  # the bound meets the SLO it is held to
    missing = [label for label, run in runs.items() if run["slo_attainment"] < run["target_attainment"]]
    assert r.output.count("misses SLO") == len(missing)  # each run below the target is marked in the table
    for run in runs.values():
        assert run["target_attainment"] == 0.99
        if run["slo_attainment"] >= 0.99:  # no run that meets the SLO is cheaper than the bound
            assert run["cost_ratio_to_oracle"] >= 1.0 - 1e-3, run["label"]
        for key in ("cost_usd", "cost_per_1m_output_tokens_usd", "slo_attainment", "rejected_429", "dropped",
                    "scaling_actions"):
            assert key in run
        assert {"replica_hours", "cost_usd"} <= set(run["pools"]["cloud"])
        assert run["ttft"]["p99_s"] is not None
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "compare.png" in pngs and "oracle.png" in pngs and len(pngs) == len(runs) + 1
    assert (out / "oracle.png").read_bytes()[:4] == b"\x89PNG"


def test_simulate_one_policy_prints_its_report(files: dict[str, Path]) -> None:
    r = runner.invoke(app, ["simulate", "--trace", str(files["trace"]), "--policy", str(files["policy"]),
                            "--sim-config", str(files["sim"]), "--out", str(files["dir"] / "one"), "--no-plots",
                            "--rate-scale", "0.5", "--speedup", "2"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "SLO attainment" in r.output and "cost per 1M output tokens" in r.output
    assert json.loads((files["dir"] / "one" / "simulation.json").read_text())["params"]["rate_scale"] == 0.5


@pytest.mark.parametrize(("text", "expected"), [
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:4x,10,5\n",
     "line 3: field 'TIMESTAMP': unparsable timestamp"),
    ("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n1.0,-3,5\n", "line 3: field 'prompt_tokens': negative"),
    ("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n2.0,10,5\n1.0,10,5\n", "line 4: field 'arrival_s': "
     "timestamps are not sorted"),
])
def test_a_malformed_trace_row_is_named_in_the_error(files: dict[str, Path], text: str, expected: str) -> None:
    bad = files["dir"] / "bad.csv"
    bad.write_text(text)
    r = runner.invoke(app, ["simulate", "--trace", str(bad), "--sim-config", str(files["sim"]),
                            "--policy", str(files["policy"]), "--out", str(files["dir"] / "x")],
                      env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert expected in " ".join(r.output.split())


def test_an_unsorted_trace_can_be_sorted_instead(files: dict[str, Path]) -> None:
    bad = files["dir"] / "unsorted.csv"
    bad.write_text("arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n2.0,10,5\n1.0,10,5\n")
    r = runner.invoke(app, ["simulate", "--trace", str(bad), "--sim-config", str(files["sim"]), "--policy",
                            str(files["policy"]), "--trace-sort", "--no-plots", "--out", str(files["dir"] / "s")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("command", "option", "value"), [
    ("simulate", "--speedup", "inf"), ("simulate", "--rate-scale", "0"), ("simulate", "--speedup", "nan"),
    ("tune", "--rate-scale", "-1"), ("sim2real", "--time-scale", "inf"),
])
def test_a_scale_factor_that_is_not_finite_and_positive_is_refused_naming_the_option(
        files: dict[str, Path], command: str, option: str, value: str) -> None:
    args = [command, "--trace", str(files["trace"]), "--policy", str(files["policy"]), option, value]
    if command == "tune":
        args += ["--space", str(files["dir"] / "no-space.yaml")]
    if command != "sim2real":
        args += ["--sim-config", str(files["sim"])]
    r = runner.invoke(app, args, env={"COLUMNS": "300"})
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and option in out and "must be a finite number > 0" in out, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), "a clear error, not a traceback"


def test_a_bad_sim_config_stops_simulate_with_its_line(files: dict[str, Path]) -> None:
    files["sim"].write_text(files["sim"].read_text().replace("drain_s:", "drain_seconds:"))
    r = runner.invoke(app, ["simulate", "--trace", str(files["trace"]), "--sim-config", str(files["sim"])],
                      env={"COLUMNS": "300"})
    assert r.exit_code == 2
    assert "drain_seconds: unknown field" in r.output


def test_tune_writes_a_best_policy_that_policy_validate_accepts(files: dict[str, Path]) -> None:
    space = files["dir"] / "space.yaml"
    space.write_text("method: random\nsamples: 3\nseed: 1\nknobs:\n  guardrails.downscale_delay_s: {low: 10, "
                     "high: 300}\n  pools.cloud.target_ongoing_requests_per_replica: [2, 4]\n")
    out = files["dir"] / "tune"
    r = runner.invoke(app, ["tune", "--trace", str(files["trace"]), "--policy", str(files["policy"]),
                            "--sim-config", str(files["sim"]), "--space", str(space), "--target-attainment", "0.5",
                            "--out", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "Pareto front" in r.output
    assert (out / "pareto.png").exists() and len(json.loads((out / "tune.json").read_text())["candidates"]) == 4
    v = runner.invoke(app, ["policy", "validate", str(out / "best_policy.yaml")])
    assert v.exit_code == 0, v.output


def test_tune_says_so_when_nothing_meets_the_target(files: dict[str, Path]) -> None:
    space = files["dir"] / "space.yaml"
    space.write_text("method: grid\nknobs:\n  guardrails.upscale_delay_s: [0]\n")
    files["policy"].write_text(files["policy"].read_text().replace("ttft_p95_s: 2.0", "ttft_p95_s: 0.001"))
    r = runner.invoke(app, ["tune", "--trace", str(files["trace"]), "--policy", str(files["policy"]),
                            "--sim-config", str(files["sim"]), "--space", str(space), "--out",
                            str(files["dir"] / "t")], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "no candidate reaches 95% SLO attainment" in r.output


# --- sim-to-real with a recorded live half ---------------------------------------------------------------------


def recorded_live(n: int = 40) -> LiveRun:
    records = [RequestRecord(index=i, status=200 if i % 10 else 429, start_s=i * 0.5,
                             ttft_s=0.2 if i % 10 else None, end_s=i * 0.5 + 1.5, output_tokens=64,
                             pool=("cloud" if i % 2 else "edge") if i % 10 else None) for i in range(n)]
    samples = [(0.0, {"cloud": 1, "edge": 1}), (10.0, {"cloud": 2, "edge": 1}), (20.0, {"cloud": 1, "edge": 1})]
    return LiveRun(endpoint="http://x", records=records, pool_samples=samples, window_s=30.0,
                   initial_ready={"cloud": 1, "edge": 1})


def test_replica_seconds_integrate_piecewise_constant_readings() -> None:
    assert integrate_ready(recorded_live().pool_samples, 30.0) == {"cloud": 40.0, "edge": 30.0}
    assert integrate_ready([(5.0, {"a": 2})], 10.0) == {"a": 10.0}


def test_sim_to_real_rows_set_measured_and_predicted_side_by_side() -> None:
    live = live_side(recorded_live())
    result = simulate(synthetic_trace(2.0, 20, poisson=False), policy_file(), sim_config())
    sim = sim_side(result, live.window_s)
    rows = {r[0]: r[1:] for r in comparison_rows(live, sim)}
    assert rows["cloud ready replica-seconds"][0] == "40.0"
    assert rows["requests served"][0] == "36" and rows["requests not served"][0] == "4"
    assert rows["TTFT p50"][0] == "200 ms"
    assert rows["E2E p95"][0] == "1,500 ms"
    assert rows["edge ready replica-seconds"][2] == f"x{float(rows['edge ready replica-seconds'][1]) / 30:.2f}"


def test_sim2real_cli_compares_a_recorded_live_run(files: dict[str, Path]) -> None:
    live = files["dir"] / "live.json"
    live.write_text(recorded_live().model_dump_json())
    out = files["dir"] / "s2r.json"
    r = runner.invoke(app, ["sim2real", "--trace", str(files["trace"]), "--slice-s", "20", "--policy",
                            str(files["policy"]), "--sim-config", str(files["sim"]), "--live-json", str(live),
                            "--out", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "cloud ready replica-seconds" in r.output
    doc = json.loads(out.read_text())
    assert doc["live"]["ready_replica_seconds"] == {"cloud": 40.0, "edge": 30.0}
    assert doc["simulated"]["window_s"] == 30.0
    again = runner.invoke(app, ["sim2real", "--trace", str(files["trace"]), "--slice-s", "20", "--policy",
                                str(files["policy"]), "--sim-config", str(files["sim"]), "--live-json", str(out)])
    assert again.exit_code == 0, again.output  # an --out file holds its live half too


def test_the_live_half_replays_exactly_the_simulated_requests_after_rate_scaling() -> None:
    from orchestrator.sim.engine import prepare_workload
    from orchestrator.sim.sim2real import workload_rows

    rows = synthetic_trace(4.0, 60, prompt_tokens=2000, output_tokens=300, seed=1)
    w = prepare_workload(rows, rate_scale=0.5, seed=3, max_prompt_tokens=900, max_output_tokens=124)
    live = workload_rows(w)
    assert 0.3 * len(rows) < len(live) == len(w) < 0.7 * len(rows)
    assert [r.arrival_s for r in live] == pytest.approx(w.arrival_s.tolist()) and live[0].arrival_s == 0.0
    assert {(r.prompt_tokens, r.output_tokens) for r in live} == {(900, 124)}


def test_sim2real_rate_scale_thins_the_slice_and_a_recorded_run_of_another_slice_is_flagged(
        files: dict[str, Path]) -> None:
    live = files["dir"] / "live.json"
    recorded = recorded_live()
    live.write_text(recorded.model_copy(update={"params": {"rate_scale": 1.0, "slice_s": 20.0}}).model_dump_json())
    out = files["dir"] / "s2r.json"
    args = ["sim2real", "--trace", str(files["trace"]), "--slice-s", "60", "--policy", str(files["policy"]),
            "--sim-config", str(files["sim"]), "--live-json", str(live), "--out", str(out)]
    full = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert full.exit_code == 0, full.output
    n_full = json.loads(out.read_text())["simulated"]["requests"]
    half = runner.invoke(app, [*args, "--rate-scale", "0.5"], env={"COLUMNS": "200"})
    assert half.exit_code == 0, half.output
    doc = json.loads(out.read_text())
    assert doc["params"]["rate_scale"] == 0.5 and doc["params"]["requests"] == doc["simulated"]["requests"]
    assert 0.3 * n_full < doc["simulated"]["requests"] < 0.7 * n_full
    assert "recorded with another slice" in half.output and "rate_scale 1.0 (now 0.5)" in half.output
    # the title counts the requests replayed, not the trace rows before scaling
    assert f"sim-to-real: {doc['simulated']['requests']} requests (rate x0.5 of {n_full} rows)" in half.output
    bad = runner.invoke(app, [*args, "--rate-scale", "0"])
    assert bad.exit_code == 2


def test_bench_profile_fits_runs_into_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    from orchestrator.bench.report import build_report, write_report
    from orchestrator.bench.stats import summarize
    from orchestrator.sim.profile import load_profile

    runs = []
    for c, prompt in ((1, 64), (1, 512), (4, 64)):
        recs = [RequestRecord(index=i, status=200, start_s=0.0, ttft_s=0.01 * c + prompt / 4000, end_s=1.0,
                              output_tokens=33, planned_prompt_tokens=prompt) for i in range(10)]
        rep = build_report(label="x", params={"mode": "concurrency", "concurrency": c, "url": "u", "model": "m"},
                           summary=summarize(recs, wall_s=1.0), records=recs)
        runs.append(str(write_report(rep, tmp_path / f"c{c}-{prompt}.json")))
    out = tmp_path / "fitted.yaml"
    r = runner.invoke(app, ["bench", "profile", *runs, "-o", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    p = load_profile(out)
    assert p.prefill_tokens_per_s == pytest.approx(4000, rel=0.01)
    assert [pt.concurrency for pt in p.points] == [1, 4]
    assert "fit quality over 3 (concurrency, prompt) groups: median TTFT within 0%" in r.output
    assert "# fit quality over 3" in out.read_text()  # the file keeps it in its header
    bad = runner.invoke(app, ["bench", "profile", str(tmp_path / "missing.json"), "-o", str(out)])
    assert bad.exit_code == 2
