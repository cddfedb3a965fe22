"""The trace-replay engine on synthetic traces: known answers for steady load, a step, drains, refusals, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.bench.trace import TraceRequest, load_trace
from orchestrator.control.config import PolicyFile
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies import PolicyState
from orchestrator.control.snapshot import ClusterSnapshot
from orchestrator.sim.baselines import gpu_only
from orchestrator.sim.engine import Simulator, prepare_workload, simulate, synthetic_trace
from orchestrator.sim.model import load_sim_config
from tests.unit.sim_support import AZURE_CODE_TRACE, policy_file, profile, sim_config


def ready_at(result, pool: str) -> list[float]:
    return sorted(start for start, _ in result.ready_spans[pool])


def timeline_after(result, key: str, t_s: float, until_s: float) -> np.ndarray:
    t = result.timeline["t_s"]
    return result.timeline[key][(t >= t_s) & (t <= until_s)]


def test_constant_rate_settles_to_steady_replica_counts() -> None:
    # 6 rps, each request ~1.03 s on the replica: 6-7 ongoing, 4 per cloud replica -> 2 replicas, always.
    trace = synthetic_trace(6.0, 900, prompt_tokens=100, output_tokens=50, poisson=False)
    result = simulate(trace, policy_file(), sim_config())
    assert (result.status == 200).all()
    assert set(timeline_after(result, "cloud.ready", 120, 890)) == {2}
    assert set(timeline_after(result, "cloud.starting", 120, 890)) == {0}
    assert set(timeline_after(result, "edge.ready", 0, 890)) == {1}  # its min; the router prefers cloud
    assert result.accounts["cloud"].scale_ups == 1
    assert not [d for d in result.decisions if 120 < d["at_s"] <= 890]


def test_a_step_scales_up_after_the_upscale_delay_plus_node_and_replica_startup() -> None:
    # 1 rps until 300 s, then 6 rps: the wish for a 2nd cloud replica starts at the first tick after the step
    # (305 s), lasts the 15 s upscale delay (320 s), then the node (5 s) and the replica (20 s) start: 345 s.
    trace = synthetic_trace([(0.0, 1.0), (300.0, 6.0)], 600, prompt_tokens=100, output_tokens=50, poisson=False)
    result = simulate(trace, policy_file(guardrails={"upscale_delay_s": 15}), sim_config(
        node_startup=5.0, cloud_startup=20.0))
    starts = ready_at(result, "cloud")
    assert starts[0] == 0.0 and len(starts) == 2
    assert 300 + 15 + 5 + 20 <= starts[1] <= 300 + 15 + 5 + 20 + 2 * 5
    assert starts[1] == pytest.approx(345.0)


def test_the_same_seed_gives_the_same_run_and_another_seed_other_startups() -> None:
    trace = synthetic_trace([(0.0, 2.0), (200.0, 12.0), (400.0, 1.0)], 700, seed=3)
    sim = sim_config(cloud_startup={"dist": "lognormal", "median": 20, "sigma": 0.5},
                     edge_startup={"dist": "uniform", "low": 2, "high": 9})
    pf = policy_file()
    a, b, c = simulate(trace, pf, sim, seed=7), simulate(trace, pf, sim, seed=7), simulate(trace, pf, sim, seed=8)
    assert np.array_equal(a.status, b.status)
    assert np.array_equal(a.ttft_s, b.ttft_s, equal_nan=True)
    assert a.accounts == b.accounts and a.ready_spans == b.ready_spans
    assert a.ready_spans != c.ready_spans


def test_scale_down_drains_replicas_before_their_nodes_go() -> None:
    # 10 s requests at 1 rps; a scripted policy runs 2 cloud replicas, then 1 from 60 s, then 0 from 150 s:
    # each scale-down lands on a busy replica.
    def scripted(snapshot: ClusterSnapshot, state: PolicyState, now: float) -> tuple[ScalePlan, PolicyState]:
        cloud = 2 if now < 60 else (1 if now < 150 else 0)
        return ScalePlan({"cloud": PoolTarget(cloud, cloud), "edge": PoolTarget(1, 1)}, f"cloud {cloud}"), state

    trace = synthetic_trace(1.0, 120, prompt_tokens=10, output_tokens=500, poisson=False)
    sim = Simulator(prepare_workload(trace), policy_file(), sim_config(cloud_initial=2), policy=scripted)
    result = sim.run()
    assert (result.status == 200).all()  # nothing cut by a scale-down
    cloud = sim.cluster.pools["cloud"]
    drained = [r for r in cloud.all_replicas if r.stop_s is not None and r.gone_s is not None and r.gone_s > r.stop_s]
    assert drained, "expected a replica that finished requests after it was told to stop"
    for r in cloud.all_replicas:
        if r.node is not None and r.node.removed_s is not None:
            assert r.gone_s is not None and r.node.removed_s >= r.gone_s
    assert all(n.removed_s is not None for n in cloud.all_nodes)  # min 0: all gone by the end


def test_gpu_only_never_places_work_on_the_edge_pool() -> None:
    trace = synthetic_trace([(0.0, 3.0), (120.0, 20.0), (240.0, 3.0)], 400, seed=1)
    spec = gpu_only(policy_file(), sim_config())
    assert spec is not None
    result = spec.run(prepare_workload(trace))
    edge = result.pool_names.index("edge")
    assert not (result.pool == edge).any()
    assert result.accounts["edge"].replica_seconds == 0 and result.accounts["edge"].node_seconds == 0
    assert (result.status == 200).sum() > 0.5 * len(trace)


def test_a_request_no_pool_takes_is_refused_with_the_routers_400() -> None:
    sim = sim_config(cloud={"eligibility": {"max_prompt_tokens": 10}}, edge={"eligibility": {"max_prompt_tokens": 10}})
    result = simulate(synthetic_trace(2.0, 30, prompt_tokens=100, seed=0), policy_file(), sim)
    assert set(result.status.tolist()) == {400}


def test_requests_wait_for_a_pool_scaled_to_zero_instead_of_failing() -> None:
    # Only the cloud pool takes these requests, and it starts at zero: the router holds them (WAIT), the policy
    # sees them queued and starts a replica (15 s delay + 5 s node + 20 s replica), then they are served.
    sim = sim_config(cloud_initial=0, edge={"eligibility": {"max_prompt_tokens": 10}})
    result = simulate(synthetic_trace(1.0, 60, prompt_tokens=100, output_tokens=20, poisson=False), policy_file(), sim)
    assert (result.status == 200).all()
    assert result.ttft_s[0] >= 15 + 5 + 20 - 5  # the first one waited for the whole cold start
    assert not (result.pool == result.pool_names.index("edge")).any()


def test_requests_longer_than_the_context_get_400_like_the_router() -> None:
    sim = sim_config().model_copy(update={"max_model_len": 128})
    result = simulate([TraceRequest(0.0, 100, 10), TraceRequest(1.0, 120, 20), TraceRequest(2.0, 200, 1)],
                      policy_file(), sim)
    assert result.status.tolist() == [200, 400, 400]


def test_workload_speedup_rate_scale_and_clamps() -> None:
    trace = synthetic_trace(2.0, 600, prompt_tokens=5000, output_tokens=300, seed=2)
    w = prepare_workload(trace, speedup=2.0, max_prompt_tokens=900, max_output_tokens=124)
    assert w.duration_s == pytest.approx(trace[-1].arrival_s / 2)
    assert w.clamped_prompts == w.clamped_outputs == len(trace)
    assert w.prompt_tokens.max() == 900 and w.output_tokens.max() == 124
    doubled = prepare_workload(trace, rate_scale=2.0, seed=0)
    assert len(doubled) == 2 * len(trace)
    assert np.all(np.diff(doubled.arrival_s) >= 0)
    halved = prepare_workload(trace, rate_scale=0.5, seed=0)
    assert 0.4 * len(trace) < len(halved) < 0.6 * len(trace)
    assert np.array_equal(prepare_workload(trace, rate_scale=1.5, seed=4).arrival_s,
                          prepare_workload(trace, rate_scale=1.5, seed=4).arrival_s)


def test_a_burst_beyond_every_pool_is_refused_with_429() -> None:
    # Everything at once: 8 slots + 8 queue on cloud, 4 + 4 on edge -> 24 accepted, the rest refused.
    burst = [TraceRequest(0.0, 10, 2000) for _ in range(40)]
    result = simulate(burst, policy_file(), sim_config())
    assert (result.status == 200).sum() == 24
    assert (result.status == 429).sum() == 16


@pytest.mark.skipif(not AZURE_CODE_TRACE.exists(), reason=f"shared Azure trace not present at {AZURE_CODE_TRACE}")
def test_the_azure_code_trace_replays_under_the_default_policy() -> None:
    trace = load_trace(AZURE_CODE_TRACE)
    result = simulate(trace, PolicyFile.default(), load_sim_config())
    assert len(result.status) == len(trace) > 8000
    assert set(result.status.tolist()) <= {200, 400, 429, 503, 504}
    assert (result.status == 200).mean() > 0.5
    assert result.end_s >= trace[-1].arrival_s


def test_profile_placeholders_are_reported() -> None:
    sim = sim_config(cloud_profile={**profile(), "placeholder": True})
    assert simulate(synthetic_trace(1.0, 10), policy_file(), sim).placeholder_profiles == ("cloud",)


def test_an_engine_that_batches_in_waves_makes_an_arrival_wait_for_the_running_batch():
    # One edge replica of the wave engine: 0.1 s overhead, 1 ms per prompt token, 0.1 s per output token at any
    # batch size. A (t=0, 11 tokens out) runs alone; B (t=0.5) and C (t=0.6) wait for A to end at 1.2 s, then
    # prefill together and decode as one batch; C (2 tokens) leaves first, B (4 tokens) after.
    edge = profile(overhead_s=0.1, tpot_s=0.1, prefill=1000.0, max_concurrency=4)
    sim = sim_config(edge_profile=edge, cloud_initial=0, router={"fill_order": ["edge", "cloud"]},
                     edge={"batching": "waves"})
    trace = [TraceRequest(0.0, 100, 11), TraceRequest(0.5, 100, 4), TraceRequest(0.6, 100, 2)]
    r = simulate(trace, policy_file(), sim)
    assert (r.pool == r.pool_names.index("edge")).all()
    a_end = 0.0 + 0.1 + 0.1 + 10 * 0.1  # prefill 100 tokens + overhead, then 10 more tokens
    first = a_end + 0.2 + 0.1  # B's and C's prompts prefilled together, then the overhead
    assert r.ttft_s.tolist() == pytest.approx([0.2, first - 0.5, first - 0.6])
    assert r.e2e_s.tolist() == pytest.approx([a_end, first + 3 * 0.1 - 0.5, first + 0.1 - 0.6])
    continuous = simulate(trace, policy_file(), sim_config(edge_profile=edge, cloud_initial=0,
                                                           router={"fill_order": ["edge", "cloud"]}))
    assert continuous.ttft_s[1] < r.ttft_s[1]  # joining the running batch at once is sooner


def test_decode_slows_with_the_context_on_both_engines():
    # 1 ms per output token plus 10 us per token of context: a 900-token prompt decodes 10x slower than an empty one.
    slope = profile(overhead_s=0.1, tpot_s=0.001, prefill=1000.0, max_concurrency=4)
    slope["points"] = [{**pt, "tpot_s_per_context_token": 1e-5} for pt in slope["points"]]
    for batching in ("continuous", "waves"):
        sim = sim_config(edge_profile=slope, cloud_initial=0, router={"fill_order": ["edge", "cloud"]},
                         edge={"batching": batching})
        trace = [TraceRequest(0.0, 900, 11), TraceRequest(30.0, 10, 11)]
        r = simulate(trace, policy_file(), sim)
        # 10 further tokens; token j (2..11) reads the prompt and j - 1 outputs: a mean context of prompt + 5.5
        assert (r.e2e_s - r.ttft_s).tolist() == pytest.approx([10 * (0.001 + 1e-5 * 905.5),
                                                               10 * (0.001 + 1e-5 * 15.5)]), batching


def test_the_summary_locates_where_a_runs_slo_misses_cluster() -> None:
    import io

    from rich.console import Console

    from orchestrator.sim.report import run_table, summarize

    # 1 rps, then 30 s at 40 rps that 1 cloud + 1 edge replica cannot carry (a new one takes 120 s), then 1 rps.
    trace = synthetic_trace([(0.0, 1.0), (300.0, 40.0), (330.0, 1.0)], 600, prompt_tokens=100, output_tokens=50,
                            poisson=False)
    s = summarize(simulate(trace, policy_file(), sim_config(cloud_startup=120.0, edge_startup=120.0)))
    w = s.worst_miss_window
    assert s.slo_attainment < 1.0 and w is not None
    assert (w.start_s, w.width_s, w.arrivals) == (300.0, 30.0, 1200)  # the burst's 30 s and its 1,200 arrivals
    assert 0.5 < w.share_of_misses <= 1.0 and 0 < w.misses <= w.arrivals
    assert "of misses at 300-330 s" in w.describe()
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(run_table(s))
    text = console.export_text()
    assert "where the misses cluster" in text and w.describe() in text
    calm = summarize(simulate(synthetic_trace(1.0, 120, prompt_tokens=100, output_tokens=50, poisson=False),
                              policy_file(), sim_config()))
    assert calm.slo_attainment == 1.0 and calm.worst_miss_window is None
