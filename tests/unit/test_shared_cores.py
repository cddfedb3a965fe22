"""Pools that share one machine's cores (the embedded default): the model, the simulator that serves and starts
replicas on it, and cost_aware, which adds no replica there that would add no capacity and has the pool whose busy
threads cost the others more than it serves yield its cores."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from deployments.config import AppConfig
from orchestrator.control.machine import SharedCores
from orchestrator.control.plan import PoolTarget, ScalePlan
from orchestrator.control.policies.base import PolicyState
from orchestrator.control.policies.cost_aware import CostAware
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot
from orchestrator.elastic import local_machine
from orchestrator.sim.engine import simulate, synthetic_trace
from tests.unit.sim_support import policy_file, profile, sim_config

TWO_CORES = {"local": {"cores": 2, "pools": {"cloud": {"busy_cores": 2, "startup_cores": 1},
                                             "edge": {"busy_cores": 2, "startup_cores": 1}}}}
CLOUD_PROFILE = profile(overhead_s=0.05, tpot_s=0.02, max_concurrency=8)
EDGE_PROFILE = profile(overhead_s=0.1, tpot_s=0.04, max_concurrency=4, slowdown=0.01)


# --- the model -------------------------------------------------------------------------------------------------

def test_replicas_run_at_full_speed_until_the_cores_are_asked_for_then_share_them():
    m = SharedCores(4, {"cloud": 2, "edge": 1}, {"cloud": 1})
    assert m.speed({"cloud": 1, "edge": 2}) == 1.0  # 4 cores asked, 4 there
    assert m.speed({"cloud": 2, "edge": 2}) == pytest.approx(4 / 6)
    assert m.speed({"cloud": 1, "edge": 2}, starting={"cloud": 1}) == pytest.approx(4 / 5)  # a start slows them
    assert m.speed({"other": 9}) == 1.0, "pools not on the machine draw nothing from it"
    # Saturated, a replica more of the same efficiency adds nothing: the machine's capacity stays flat.
    flat = SharedCores(2, {"edge": 2})
    assert flat.capacity_rps({"edge": 1}, {"edge": 3.0}) == flat.capacity_rps({"edge": 3}, {"edge": 3.0}) == 3.0
    assert flat.describe({"edge": 3}) == "2 cores shared by 3 replicas (6 cores busy)"


def test_a_machine_with_no_cores_negative_draws_or_unknown_startup_pools_is_refused():
    with pytest.raises(ValueError, match="cores must be > 0"):
        SharedCores(0, {"edge": 1})
    with pytest.raises(ValueError, match="must be >= 0"):
        SharedCores(2, {"edge": -1})
    with pytest.raises(ValueError, match="without busy_cores"):
        SharedCores(2, {"edge": 1}, {"cloud": 1})


def test_the_sim_config_refuses_unknown_pools_and_a_pool_on_two_machines():
    with pytest.raises(ValidationError, match="unknown pool 'gpu'"):
        sim_config(machines={"m": {"cores": 2, "pools": {"gpu": {"busy_cores": 1}}}})
    with pytest.raises(ValidationError, match="one at most"):
        sim_config(machines={"a": {"cores": 2, "pools": {"edge": {"busy_cores": 1}}},
                             "b": {"cores": 2, "pools": {"edge": {"busy_cores": 1}}}})


def test_the_local_backend_machine_is_this_process_cpus_or_the_given_cores():
    config = AppConfig.model_validate({"pools": {
        "cloud": {"engine": "vllm"}, "edge": {"engine": "transformers", "num_threads": 1}}})
    import os

    cpus = float(len(os.sched_getaffinity(0)))
    m = local_machine(config, cores=0.5)  # a budget below the CPUs: a replica's threads cannot use more
    assert (m.cores, dict(m.busy_cores), dict(m.startup_cores)) == (0.5, {"cloud": 0.5, "edge": 0.5},
                                                                      {"cloud": 0.5, "edge": 0.5})
    # A budget above them (`--cores 16` on this VM): a replica still runs as many threads as it sees CPUs, so
    # 16 cores hold 16 / cpus busy vLLM replicas, not one.
    m = local_machine(config, cores=16)
    assert (m.cores, dict(m.busy_cores)) == (16.0, {"cloud": cpus, "edge": 1.0})
    assert local_machine(config).cores == cpus
    # Measured busy cores (scripts/bench_shared_cores.py) replace the thread counts: on 2 cores, one edge replica
    # at 1.41 leaves room, so a second one adds capacity (2 x 2 / 2.82 = 1.42 replicas' worth), as measured live.
    fitted = AppConfig.model_validate({"pools": {"cloud": {"engine": "vllm", "busy_cores": 1.89},
                                                 "edge": {"engine": "transformers", "busy_cores": 1.41}}})
    m = local_machine(fitted, cores=2)
    assert dict(m.busy_cores) == {"cloud": 1.89, "edge": 1.41}
    assert m.capacity_rps({"edge": 2}, {"edge": 1.0}) == pytest.approx(2 * 2 / 2.82)
    threads = AppConfig.model_validate({"pools": {"cloud": {"engine": "vllm"}, "edge": {"engine": "transformers"}}})
    if cpus >= 2:  # by thread count, a second replica on 2 cores adds nothing
        assert local_machine(threads, cores=2).capacity_rps({"edge": 2}, {"edge": 1.0}) == pytest.approx(1.0)


# --- the simulator ---------------------------------------------------------------------------------------------

def static(edge: int, cloud: int):
    def policy(snapshot, state, now):
        return ScalePlan({"edge": PoolTarget(edge, edge), "cloud": PoolTarget(cloud, cloud)}, "static"), state

    return policy


def run(machines: dict | None, *, edge: int, cloud: int, rps: float = 2.0):
    trace = synthetic_trace(rps, 300, prompt_tokens=100, output_tokens=50, seed=3)
    cfg = sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, cloud_initial=cloud, edge_initial=edge,
                     machines=machines, router={"fill_order": ["edge", "cloud"]})
    return simulate(trace, policy_file(), cfg, policy=static(edge, cloud))


def test_one_busy_replica_alone_on_the_machine_runs_at_its_profile_speed():
    alone, independent = run(TWO_CORES, edge=1, cloud=0, rps=0.5), run(None, edge=1, cloud=0, rps=0.5)
    assert (alone.status == 200).all()
    np.testing.assert_allclose(alone.e2e_s, independent.e2e_s)


def test_two_pools_serving_at_once_on_two_cores_slow_each_other_down():
    shared, independent = run(TWO_CORES, edge=1, cloud=1), run(None, edge=1, cloud=1)
    both = shared.pool == shared.pool_names.index("cloud")
    assert both.any() and (~both).any(), "the load spills from edge to cloud: both pools serve"
    ok = (shared.status == 200) & (independent.status == 200)
    ratio = np.median(shared.e2e_s[ok]) / np.median(independent.e2e_s[ok])
    assert ratio > 1.3, f"sharing 2 cores between two busy replicas must cost time, got x{ratio:.2f}"


def test_a_replica_started_while_the_cores_are_busy_takes_longer_to_start():
    def ready_at(machines):
        trace = synthetic_trace(3.0, 200, prompt_tokens=100, output_tokens=50, seed=4)
        cfg = sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, cloud_initial=0, edge_initial=1,
                         machines=machines, edge_startup=10.0, router={"fill_order": ["edge", "cloud"]})
        result = simulate(trace, policy_file(), cfg, policy=static(2, 0))
        return sorted(start for start, _ in result.ready_spans["edge"])[1]

    assert ready_at(TWO_CORES) > ready_at(None) + 2.0  # 10 s at 2/3 speed: ~15 s instead of 10


# --- cost_aware on shared cores --------------------------------------------------------------------------------

def cost_aware(**edge):
    return policy_file(name="cost_aware", knobs={"cloud_idle_to_zero_s": 60},
                       cloud={"profile": CLOUD_PROFILE}, edge={"profile": EDGE_PROFILE, **edge},
                       guardrails={"downscale_delay_s": 30, "upscale_delay_s": 5})


def test_cost_aware_adds_no_edge_replica_that_would_only_share_the_cores_and_says_why():
    # 4 rps of 50-token answers: more than one edge replica carries at the SLO, so cost_aware wants a second.
    trace = synthetic_trace(4.0, 300, prompt_tokens=100, output_tokens=50, seed=5)
    independent = simulate(trace, cost_aware(), sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE,
                                                           cloud_initial=0, router={"fill_order": None}))
    assert len(independent.ready_spans["edge"]) >= 2, "with independent capacity the edge pool grows"

    shared = simulate(trace, cost_aware(), sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE,
                                                      cloud_initial=0, router={"fill_order": None},
                                                      machines=TWO_CORES))
    assert len(shared.ready_spans["edge"]) == 1, "on 2 shared cores a second edge replica adds no capacity"
    refusals = [d["refused"]["edge"] for d in shared.decisions if "edge" in d["refused"]]
    assert refusals, "the refusal is logged"
    assert "edge 1->2 would add no capacity: 2 cores shared by 2 replicas (4 cores busy)" in refusals[0]
    assert all("edge 1->2" in r for r in refusals)


def test_on_shared_cores_a_pool_at_zero_with_requests_waiting_only_for_it_still_gets_a_replica():
    # Prompts of 600 tokens are beyond the edge pool's limit: only cloud (at zero) can serve them.
    trace = synthetic_trace(1.0, 200, prompt_tokens=600, output_tokens=20, seed=6)
    cfg = sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, cloud_initial=0,
                     router={"fill_order": None}, machines=TWO_CORES,
                     edge={"eligibility": {"max_prompt_tokens": 500}})
    result = simulate(trace, cost_aware(max_prompt_tokens=500), cfg)
    assert result.ready_spans["cloud"], "cloud started for the requests only it may serve"
    assert (result.pool[result.status == 200] == result.pool_names.index("cloud")).all()


def test_on_shared_cores_the_edge_pool_yields_to_a_needed_cloud_pool_and_only_then():
    policy = CostAware(cost_aware())
    machine = SharedCores(2, {"cloud": 2, "edge": 2}, {"cloud": 1, "edge": 1}, name="local")

    def plan(rps: float, cloud_ready: int = 1, shared: tuple = (machine,)):
        snap = ClusterSnapshot.of(0, PoolSnapshot("edge", 1, ready_nodes=1, arrival_rate_rps=rps),
                                  PoolSnapshot("cloud", cloud_ready, 1 - cloud_ready, ready_nodes=1), shared=shared)
        return policy(snap, PolicyState(), 0)[0]

    # 4 rps: beyond the edge replica's SLO capacity (~1.9 rps), so the demand spills to cloud. On 2 cores shared by
    # both, the two busy replicas serve (1.9 + 7.6) / 2 rps, cloud alone 7.6: edge yields, and says so in numbers.
    busy = plan(4.0)
    assert busy.routing.pools["edge"].yields and not busy.routing.pools["cloud"].yields
    assert "edge yields its cores to cloud (last resort only): 2 cores shared by 2 replicas (4 cores busy)" in busy.reason
    assert "yields" in busy.details["pools"]["edge"]["machine"]
    # Light load the edge pool carries: cloud is not needed, edge keeps its traffic (so cloud drains and goes).
    assert not plan(0.5).routing.pools["edge"].yields
    # Cloud still starting: nothing to yield to.
    assert not plan(4.0, cloud_ready=0).routing.pools["edge"].yields
    # Pools on independent hardware (KubeRay nodes) never yield.
    assert not plan(4.0, shared=()).routing.pools["edge"].yields


def test_in_the_simulator_a_yielding_edge_pool_leaves_the_shared_cores_to_cloud():
    trace = synthetic_trace(4.0, 300, prompt_tokens=100, output_tokens=50, seed=7)

    def edge_share(machines):
        cfg = sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, cloud_initial=1, edge_initial=1,
                         router={"fill_order": None}, machines=machines)
        result = simulate(trace, cost_aware(max_replicas=1), cfg)
        late = (result.workload.arrival_s > 60) & (result.status == 200)
        return (result.pool[late] == result.pool_names.index("edge")).mean(), result

    independent, _ = edge_share(None)
    shared, result = edge_share(TWO_CORES)
    assert independent > 0.15, f"on its own cores edge takes its SLO share, got {independent:.0%}"
    assert shared < 0.05, f"on cores shared with a needed cloud pool edge yields, got {shared:.0%}"
    assert (result.status == 200).mean() > 0.99


def test_on_shared_cores_vllm_is_not_grown_for_edge_threads_that_will_stand_aside():
    # Cloud starts from zero at 4 rps. With independent capacity both pools grow (edge to 3, cloud to 2 at once).
    # On 2 shared cores the edge pool will yield once cloud is ready, so its threads are not counted against a
    # second cloud replica: one cloud replica serves, at the speed of one alone on the cores.
    trace = synthetic_trace(4.0, 600, prompt_tokens=100, output_tokens=50, seed=7)

    def run_on(machines):
        cfg = sim_config(cloud_profile=CLOUD_PROFILE, edge_profile=EDGE_PROFILE, cloud_initial=0, edge_initial=1,
                         router={"fill_order": None}, machines=machines)
        return simulate(trace, cost_aware(), cfg)

    independent, shared = run_on(None), run_on(TWO_CORES)
    assert len(independent.ready_spans["cloud"]) >= 2 and len(independent.ready_spans["edge"]) == 3
    assert len(shared.ready_spans["cloud"]) == 1 and len(shared.ready_spans["edge"]) == 1
    ok = shared.status == 200
    late = (shared.workload.arrival_s > 120) & ok
    assert (shared.pool[late] == shared.pool_names.index("cloud")).all()
    assert np.median(shared.e2e_s[late]) < 1.2 * (0.05 + 0.02 * 50), "cloud alone on the cores: its profile speed"
