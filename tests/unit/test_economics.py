"""The shipped cost_aware policy in the simulator on synthetic traces with known answers: the cheapest mix that
meets the SLO (edge only while it carries the load, cloud for what it cannot, cloud back to zero after)."""

from __future__ import annotations

import numpy as np

from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.sim.engine import Simulator, prepare_workload, simulate, synthetic_trace
from tests.unit.sim_support import policy_file, profile, sim_config

CLOUD_PROFILE = profile(overhead_s=0.05, tpot_s=0.02, max_concurrency=8)
EDGE_PROFILE = profile(overhead_s=0.1, tpot_s=0.04, max_concurrency=4, slowdown=0.01)


def cost_aware(**guardrails: float):
    """cost_aware knowing the simulated replicas' profiles (the calibrated prior), short delays for a test."""
    return policy_file(name="cost_aware", knobs={"cloud_idle_to_zero_s": 60},
                       cloud={"profile": CLOUD_PROFILE}, edge={"profile": EDGE_PROFILE},
                       guardrails={"downscale_delay_s": 30, **guardrails})


def sim(**kw):
    return sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, router={"fill_order": None}, **kw)


def attainment(result) -> float:
    ok = (result.status == 200) & (result.ttft_s <= result.slo.ttft_p95_s) & (result.e2e_s <= result.slo.e2e_p95_s)
    return float(ok.mean())


def share(result, pool: str) -> float:
    return float((result.pool == result.pool_names.index(pool)).mean())


def test_light_load_goes_to_edge_and_cloud_scales_to_zero():
    # 1 rps of 50-token answers (~2.2 s each): ~2 requests at once, well within one edge replica's SLO capacity.
    trace = synthetic_trace(1.0, 600, prompt_tokens=100, output_tokens=50, seed=1)
    result = simulate(trace, cost_aware(), sim(cloud_initial=1))
    assert (result.status == 200).all()
    assert attainment(result) >= 0.99
    assert share(result, "edge") > 0.95, "the cheap pool that meets the SLO takes the traffic"
    cloud_spans = result.ready_spans["cloud"]
    assert cloud_spans and all(stop is not None for _, stop in cloud_spans), "cloud scaled to zero"
    assert result.ready_replica_seconds("cloud", result.end_s) < 0.25 * result.end_s


def test_a_step_beyond_the_edge_cap_starts_cloud_which_goes_back_to_zero_after():
    # 1 rps, then 12 rps for 4 minutes (beyond 3 edge replicas at the SLO), then 1 rps again.
    trace = synthetic_trace([(0.0, 1.0), (200.0, 12.0), (440.0, 1.0)], 900, prompt_tokens=100, output_tokens=50,
                            seed=2)
    result = simulate(trace, cost_aware(upscale_delay_s=5), sim(cloud_initial=0))
    arrivals = result.workload.arrival_s
    cloud = result.pool == result.pool_names.index("cloud")
    assert cloud[(arrivals > 200) & (arrivals < 440)].any(), "the burst reached the cloud pool"
    assert not cloud[arrivals < 200].any(), "no cloud before the step"
    spans = result.ready_spans["cloud"]
    assert spans and spans[0][0] > 200 and all(stop is not None for _, stop in spans), "cloud back to zero"
    last_stop = max(stop for _, stop in spans)
    assert not cloud[arrivals > last_stop].any(), "nothing routed to a pool sized to zero"
    # Refused (429 with Retry-After, never lost) only while cloud cold-starts from zero: the step, the upscale
    # delay, node (5 s) and replica (20 s) start, within two ticks.
    refused = result.status != 200
    assert set(result.status[refused].tolist()) <= {429}
    assert ((arrivals[refused] >= 200) & (arrivals[refused] <= 200 + 5 + 5 + 20 + 2 * 5)).all()
    # The edge pool served throughout, the cloud pool only around the burst: at zero well before the trace ends
    # (the demand's smoothing, cloud_idle_to_zero_s 60 and the downscale delay of 30 s after the burst).
    assert last_stop < 440 + 300 and result.end_s - last_stop > 200
    assert np.isfinite(result.ttft_s[result.status == 200]).all()


def static(edge: int, cloud: int):
    def policy(snapshot, state, now):
        return ScalePlan({"edge": PoolTarget(edge, edge), "cloud": PoolTarget(cloud, cloud)}, "static"), state

    return policy


def test_a_load_exactly_two_edge_replicas_serve_settles_at_edge_two_cloud_zero():
    # 1 rps of 50-token answers: one edge replica misses the SLO, two meet it (checked by replay): the optimum.
    trace = synthetic_trace(1.0, 1200, prompt_tokens=100, output_tokens=50, seed=3)
    one, two = (Simulator(prepare_workload(trace), cost_aware(), sim(cloud_initial=0, edge_initial=n),
                          policy=static(n, 0)).run() for n in (1, 2))
    assert attainment(one) < 0.9 and attainment(two) >= 0.99
    result = simulate(trace, cost_aware(), sim(cloud_initial=0, edge_initial=1))
    t = result.timeline
    settled = (t["t_s"] > 300) & (t["t_s"] < 1190)
    edge, cloud = t["edge.ready"][settled], t["cloud.ready"][settled]
    assert set(cloud.tolist()) == {0}, "cloud is never needed"
    assert edge.min() >= 2 and (edge == 2).mean() > 0.6, "edge at two (three only on Poisson peaks)"
    assert attainment(result) >= 0.99
