"""ServeScaler and LocalPoolBackend against real Ray: local pool nodes, Serve's external-scaler API, the drain rule.

The Ray work runs in a subprocess (``control_adapters_scenario.py``), once per module, and these tests assert
on the JSON it writes. Why a subprocess: the scenario needs its own multi-node ``Cluster`` (head with the
dashboard, pool nodes added and removed), while ``conftest.served_app`` owns a session-wide ``ray.init()``
in this process — a driver can be connected to one cluster only, and shutting the other one down is not
ours to do. The subprocess also gets a private ``RAY_TMPDIR``: ``Cluster`` writes the "current cluster"
address file that a bare ``ray.init()`` elsewhere on the machine would otherwise join.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

SCENARIO = Path(__file__).with_name("control_adapters_scenario.py")
REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300


class Scenario:
    def __init__(self, results: dict[str, Any], returncode: int | None, log: str, took_s: float) -> None:
        self.results, self.returncode, self.log, self.took_s = results, returncode, log, took_s

    def step(self, name: str) -> dict[str, Any]:
        steps = self.results.get("steps", {})
        if name not in steps:
            pytest.fail(f"the scenario did not reach step {name!r} (rc={self.returncode}, {self.took_s:.0f} s)\n"
                        f"error: {self.results.get('error')}\nlog tail:\n{self.log[-3000:]}")
        return steps[name]


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    tmp = Path(tempfile.mkdtemp(prefix="elo-", dir="/tmp"))  # short: Ray puts unix sockets under it
    out, log_path = tmp / "out.json", tmp / "scenario.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp), RAY_USAGE_STATS_ENABLED="0", RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               PYTHONPATH=str(REPO))
    started = time.monotonic()
    with open(log_path, "w") as log:
        # Own session so a timeout can stop the script and the Ray processes it started, and nothing else.
        proc = subprocess.Popen([sys.executable, str(SCENARIO), str(out)], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    took = time.monotonic() - started
    results = json.loads(out.read_text()) if out.exists() else {}
    yield Scenario(results, proc.returncode, log_path.read_text(errors="replace"), took)
    if proc.returncode == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"scenario failed; Ray logs and output kept in {tmp}")


def test_resized_pool_nodes_join_and_replicas_land_only_on_that_pools_nodes(scenario: Scenario):
    nodes = scenario.step("nodes_up")
    assert [n["state"] for n in nodes["cloud"]] == ["ready", "ready"]
    assert [n["state"] for n in nodes["edge"]] == ["ready"]
    assert all(n["ready_at_s"] >= n["started_at_s"] for n in nodes["cloud"] + nodes["edge"])

    up = scenario.step("replicas_up")
    head = scenario.step("setup")["head_node_id"]
    assert len(up["replica_nodes"]) == 2
    assert set(up["replica_nodes"]) <= set(up["cloud_nodes"])
    assert not set(up["replica_nodes"]) & (set(up["edge_nodes"]) | {head})
    assert up["edge_replicas"] == dict.fromkeys(up["edge_nodes"], 0)


def test_same_replica_target_twice_posts_once(scenario: Scenario):
    requests = [tuple(r) for r in scenario.step("replicas_up")["requests"]]
    assert requests.count(("POST", "/api/v1/applications/elo-test/deployments/pool-cloud/scale")) == 1
    assert requests.count(("GET", "/api/serve/applications/")) == 2


def test_node_hosting_a_live_replica_is_not_removed(scenario: Scenario):
    busy = scenario.step("busy_resize")
    assert set(busy["replicas_on"].values()) == {1}
    assert sorted(state for _, state in busy["nodes"]) == ["draining", "ready"]  # one chosen, none removed
    assert len(busy["alive"]) == 2

    one = scenario.step("scale_down_one")
    assert one["ready"] == [1, 0]
    (survivor, node), = one["alive_after"].items()
    assert one["alive_before"][survivor] == node  # the replica Serve kept never moved or restarted
    assert one["nodes"] == [node]  # its node stayed; the node that emptied went


def test_scale_down_removes_nodes_only_after_their_replicas_are_gone(scenario: Scenario):
    down = scenario.step("scale_to_zero")
    timeline = down["timeline"]
    # Right after the scale-down the replica is still shutting down (~2 s): its node must stay.
    assert timeline[0] == {"alive_before": 1, "nodes_after": 1, "alive_on_kept_nodes": 1}, timeline
    assert timeline[-1]["nodes_after"] == 0 and down["replicas"] == [0, 0]
    assert down["replica_deaths"], "replicas were stopped, so there are dead replica actors"
    for death in down["replica_deaths"].values():
        assert "ray.kill" in (death["message"] or ""), death  # stopped by Serve, not killed with their node
    assert len(down["removed_nodes"]) == 2
    assert down["fencing"], "idle nodes were drained in Ray (no new leases) before removal"


def test_a_deleted_pods_drain_hook_lets_its_request_finish_while_serve_moves_the_replica(scenario: Scenario):
    step = scenario.step("pod_deleted")
    hook = step["hook"]
    print("\npod deleted: elo drain-node said", hook["stdout"].strip())
    # The request in flight on the node finished there, on the old replica, before that replica was stopped.
    assert step["served_by"] == step["old_replica"]
    # The hook returned because the node was empty, not at its deadline (that exits 1).
    assert hook["returncode"] == 0, hook
    assert f"node {step['doomed_node']}: 1 Serve replica(s) at the start, 0 left after" in hook["stdout"]
    # Serve's replacement runs on the pool's other node.
    assert len(step["alive_after"]) == 1 and step["old_replica"] not in step["alive_after"]
    (node,) = step["alive_after"].values()
    assert node != step["doomed_node"] and node in step["cloud_nodes"]


def test_unknown_deployment_is_a_clear_not_retried_error(scenario: Scenario):
    missing = scenario.step("not_found")
    assert missing["error"] == "NotFoundError"
    assert "pool-gpu" in missing["message"] and "pool-cloud" in missing["message"]
    assert missing["requests"] == [["GET", "/api/serve/applications/"]]


def test_node_startup_is_measured(scenario: Scenario):
    startup = scenario.step("startup")["startup_s"]
    for pool in ("cloud", "edge"):
        assert startup[pool] is not None and startup[pool] > 0


def test_cluster_tears_down_cleanly(scenario: Scenario):
    scenario.step("teardown")
    assert "teardown_error" not in scenario.results and scenario.returncode == 0
