"""The whole control loop over KubeRay: `elo controller`'s wiring (build_kuberay_controller) with the shipped policy
on a fake clock, against a RayCluster served over real HTTP by kmock's emulator and a simulated Ray head (Serve's REST
API, the router's control endpoints) over real HTTP too, through a burst and an idle period; and the wiring's parts
and `elo controller`'s bad arguments."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from deployments.config import AppConfig
from deployments.contract import RoutingPlan
from orchestrator.control.adapters.base import NodeInfo
from orchestrator.control.adapters.kuberay import REQUIRED_ACCESS, KubeRayPoolBackend, RetryPolicy
from orchestrator.control.adapters.router import ObservedMetrics
from orchestrator.control.adapters.serve_placement import ServeReplicaPlacement
from orchestrator.control.adapters.serve_scaler import ServeScaler
from orchestrator.control.config import DEFAULT_POLICY_PATH, ConfigError, PolicyFile
from orchestrator.control.journal import DecisionLog
from orchestrator.control.policy_reload import watch_policy_file
from orchestrator.kube import (
    _until_done,
    build_kuberay_controller,
    controller_command,
    parse_groups,
    releasable_at_zero,
    reloader,
    run_until_signalled,
)
from tests.unit.kube_api import PODS, RAYCLUSTERS, FakeKubeRay, KubeServer, kube_server, raycluster, worker_group
from tests.unit.kube_api import worker_pod as make_pod
from tests.unit.ray_head import SimulatedRouter, SimulatedServe, head_server

NS = "serving"
WALL0 = 1_750_000_000.0
GROUPS = {"cloud": "cloud-gpu", "edge": "edge-cpu"}


class Clocks:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with kube_server() as server:
        yield server


def group_spec(kube: KubeServer, group: str) -> dict:
    rc = kube.call(lambda api: api.get(RAYCLUSTERS, NS, "elo"))
    return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == group)


class NodeWitness:
    """What the controller observes of the pools' nodes (ObservedMetrics' backend), passed through unchanged: which
    pods it saw draining, and how many Serve replicas each held then."""

    def __init__(self, backend: KubeRayPoolBackend, serve: SimulatedServe) -> None:
        self.backend, self.serve = backend, serve
        self.draining: dict[str, int] = {}  # pod -> replicas on it when first seen draining

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        nodes = self.backend.list_nodes(pool)
        for node in nodes:
            if node.state == "draining":
                self.draining.setdefault(node.node_id, self.serve.replicas_on(node.node_id))
        return nodes

    def measured_startup_s(self, pool: str) -> float | None:
        return self.backend.measured_startup_s(pool)


# The chart's scale-to-zero values (k8s/helm/elo/ci/scale-to-zero-values.yaml): the cloud pool deployed at zero (so
# Serve starts it with one replica, released by the controller), requests fill the edge pool first.
APP_CONFIG = AppConfig.model_validate({"pools": {"cloud": {"engine": "vllm", "replicas": 0},
                                                 "edge": {"engine": "transformers", "max_ongoing_requests": 8,
                                                          "max_queued_requests": 8}},
                                       "router": {"fill_order": ["edge", "cloud"], "cold_start_wait_s": 240}})


def scale_to_zero_cluster(kube: KubeServer, clocks: Clocks) -> tuple[FakeKubeRay, SimulatedServe, SimulatedRouter]:
    """The chart's scale-to-zero RayCluster in kmock (cloud group at 0, one edge pod running), its operator, Serve
    with the edge replica on that pod, and the router in front of them."""
    kube.call(lambda api: (api.put(RAYCLUSTERS, NS, raycluster("elo", worker_group("cloud-gpu", 0, 0, 2),
                                                                worker_group("edge-cpu", 1, 1, 3))),
                           api.put(PODS, NS, make_pod("elo-edge-cpu-worker-000", "elo", "edge-cpu", WALL0 - 600,
                                                      WALL0 - 590, ip="10.0.1.1"))))
    operator = FakeKubeRay(kube, "elo", clocks.wall, {"cloud-gpu": 40.0, "edge-cpu": 8.0})
    serve = SimulatedServe(operator.pods, GROUPS, APP_CONFIG, clock=clocks.clock, wall_clock=clocks.wall,
                           replica_startup_s={"cloud": 20.0, "edge": 5.0})
    serve.run_on("edge", "elo-edge-cpu-worker-000", "10.0.1.1")
    return operator, serve, SimulatedRouter(serve, APP_CONFIG, clock=clocks.clock)


def test_a_burst_grows_the_cloud_worker_group_and_idleness_takes_it_back_to_zero(kube, tmp_path):
    """`elo controller`'s wiring end to end: the Kubernetes API (kmock), the Ray dashboard's Serve API and the
    router's control endpoints (tests.unit.ray_head) all over real HTTP, through a burst and an idle period."""
    clocks = Clocks()
    operator, serve, router = scale_to_zero_cluster(kube, clocks)
    policy = PolicyFile.default()
    with head_server(serve, router) as head:
        controller = build_kuberay_controller(
            policy, api_client=kube.api_client(), namespace=NS, groups=GROUPS, router_url=head.router_url,
            dashboard_url=head.dashboard_url, state_dir=tmp_path, raycluster="elo", clock=clocks.clock,
            wall_clock=clocks.wall, retry=RetryPolicy(backoff_s=0.0))
        backend = controller.backend
        assert isinstance(backend, KubeRayPoolBackend) and isinstance(controller.metrics, ObservedMetrics)
        witness = controller.metrics.backend = NodeWitness(backend, serve)
        seen: dict[str, list[int]] = {"cloud-gpu": [], "edge-cpu": []}
        plans: dict[float, RoutingPlan | None] = {}  # each tick's routing plan, by tick

        def run(seconds: float) -> None:
            for _ in range(int(seconds / policy.tick_interval_s)):
                operator.reconcile()
                serve.reconcile()
                plan = controller.tick()
                assert plan is not None, "the controller could not observe the pools"
                plans[clocks.now] = plan.routing
                for group in seen:
                    seen[group].append(group_spec(kube, group)["replicas"])
                clocks.now += policy.tick_interval_s

        try:
            # As `elo controller` starts: the pool deployed at zero got one replica from Serve; back to zero.
            assert controller.scaler.release_pools_deployed_at_zero(list(policy.pools)) == ["cloud"]
            router.load(concurrent=32, arrival_rps=5.0)  # more than the edge pool can take: it queues
            run(240)
            peak = {"cloud": max(seen["cloud-gpu"]), "edge": max(seen["edge-cpu"])}
            assert peak["cloud"] >= 1 and peak["edge"] >= 2, seen  # both groups grew for the burst
            cloud_now = seen["cloud-gpu"][-1]
            assert [p["status"]["phase"] for p in operator.pods("cloud-gpu")] == ["Running"] * cloud_now
            assert (serve.target("cloud"), serve.states("cloud")) == (cloud_now, {"RUNNING": cloud_now})
            assert backend.measured_startup_s("cloud") == pytest.approx(40.0)
            # Ask -> ready of the replicas, on the fake clock: the pod's start (40 s), then the replica's (20 s).
            assert controller.scaler.measured_startup_s("cloud") == pytest.approx(65.0)
            burst = router.pools()["pools"]
            # The router fills the cheap pool up to its SLO-safe concurrency and sends the rest to the cloud pool;
            # nothing is refused and nothing waits once both pools are up.
            assert burst["cloud"]["running"] > 0 and burst["edge"]["running"] > 0, burst
            assert sum(p["in_flight"] for p in burst.values()) == 32
            assert sum(p["rejected_rate_rps"] + p["waiting"] for p in burst.values()) == 0
            assert router.plan is not None and router.plan.fill_order[0] == "edge"  # cost order: edge is cheaper

            router.load(concurrent=0, arrival_rps=0.0)
            run(720)
        finally:
            controller.scaler.close()
            controller.routing.client.close()
    assert group_spec(kube, "cloud-gpu")["replicas"] == 0 and operator.pods("cloud-gpu") == []
    assert group_spec(kube, "edge-cpu")["replicas"] == 1 and len(operator.pods("edge-cpu")) == 1
    assert min(seen["edge-cpu"]) >= 1  # never below the edge pool's minimum
    assert operator.surplus_deleted == []  # every pod removed was named by the backend, never picked by KubeRay
    assert (serve.target("cloud"), serve.target("edge")) == (0, 1)
    assert serve.lost == []  # no pod was removed from under a Serve replica
    # Draining was exercised: pods chosen to go while Serve replicas were on them were kept until those were gone.
    assert witness.draining and all(witness.draining.values()), witness.draining
    live_pods = {p["metadata"]["name"] for g in GROUPS.values() for p in operator.pods(g)}
    assert not set(witness.draining) & live_pods
    decisions = DecisionLog(tmp_path / "decisions.jsonl").tail(10_000)
    assert decisions and not [d["errors"] for d in decisions if d["errors"]]
    # Serve was asked for exactly the decisions' replica targets, when they changed (after the release at start).
    target, expected = {"cloud": 0, "edge": 1}, [(0.0, "pool-cloud", 0)]
    for d in decisions:
        for pool, t in d["targets"].items():
            if t["replicas"] != target[pool]:
                target[pool] = t["replicas"]
                expected.append((d["at_s"], f"pool-{pool}", t["replicas"]))
    assert serve.scales == expected
    posted = {pool: [n for _, d, n in serve.scales if d == f"pool-{pool}"] for pool in GROUPS}
    assert (max(posted["cloud"]), posted["cloud"][-1], max(posted["edge"]), posted["edge"][-1]) == (
        peak["cloud"], 0, peak["edge"], 1)
    # Every plan put on the router is one the controller decided that tick (with the replicas on their way), and
    # the router was told each change once.
    assert router.puts, "the controller never sent a routing plan"
    for at, put in router.puts:
        decided = plans[at]
        assert put.slo is not None and (put.slo.ttft_s, put.slo.e2e_s) == (policy.slo.ttft_p95_s, policy.slo.e2e_p95_s)
        assert decided is not None and put.model_copy(update={"starting": {}, "slo": None}) == decided.model_copy(
            update={"starting": {}})
    assert all(a != b for (_, a), (_, b) in zip(router.puts, router.puts[1:], strict=False))
    logged = {d["at_s"]: d["routing"] for d in decisions}
    assert all(logged[at] is not None for at, _ in router.puts)
    assert router.plan.fill_order[0] == "edge" and router.plan.pools["cloud"].accepting is False  # back to zero
    # Every call on the wire is one the chart's Role grants (REQUIRED_ACCESS), and each of those was used.
    used = {(r.resource.group, r.resource.plural, _verb(r)) for r in kube.requests() if r.resource is not None}
    assert used == set(REQUIRED_ACCESS) - {("ray.io", "rayservices", "get")}, used  # this test names the RayCluster


def test_a_controller_restarted_mid_cold_start_keeps_the_pool_it_is_starting(kube, tmp_path):
    """`elo controller` restarted (a new pod, the same state) while the cloud pool cold-starts from zero: its
    start-up step that sets pools deployed at zero back to zero must leave the starting pool alone, and the cold
    start goes on to a ready replica that serves."""
    clocks = Clocks()
    operator, serve, router = scale_to_zero_cluster(kube, clocks)
    policy = PolicyFile.default()
    with head_server(serve, router) as head:
        def start():
            return build_kuberay_controller(
                policy, api_client=kube.api_client(), namespace=NS, groups=GROUPS, router_url=head.router_url,
                dashboard_url=head.dashboard_url, state_dir=tmp_path, raycluster="elo", clock=clocks.clock,
                wall_clock=clocks.wall, retry=RetryPolicy(backoff_s=0.0))

        def tick(controller) -> None:
            operator.reconcile()
            serve.reconcile()
            assert controller.tick() is not None
            clocks.now += policy.tick_interval_s

        first = start()
        try:
            assert first.scaler.release_pools_deployed_at_zero(releasable_at_zero(first)) == ["cloud"]
            router.load(concurrent=32, arrival_rps=5.0)
            for _ in range(200):  # until the controller asked for a cloud replica
                tick(first)
                if serve.target("cloud") >= 1:
                    break
            assert serve.target("cloud") >= 1 and serve.states("cloud").get("RUNNING", 0) == 0  # cold-starting
        finally:
            first.scaler.close()
            first.routing.client.close()
        restarted = start()
        try:
            assert restarted.sized_before("cloud")
            assert restarted.scaler.release_pools_deployed_at_zero(releasable_at_zero(restarted)) == []
            targets = []
            for _ in range(int(120 / policy.tick_interval_s)):
                tick(restarted)
                targets.append(serve.target("cloud"))
        finally:
            restarted.scaler.close()
            restarted.routing.client.close()
    assert min(targets) >= 1, targets  # never taken back while it started
    assert serve.states("cloud").get("RUNNING", 0) >= 1 and router.pools()["pools"]["cloud"]["running"] > 0
    # What decides is the restored state: a controller without it would offer the pool to the release step.
    assert "cloud" in releasable_at_zero(
        type(restarted)(policy, restarted.metrics, restarted.scaler, restarted.backend, restarted.routing,
                        clock=clocks.clock))


def _verb(request) -> str:
    method = request.method.value
    if method == "GET":
        return "get" if request.name else "list"
    return {"PATCH": "patch", "POST": "create", "PUT": "update", "DELETE": "delete"}[method]


# --- wiring: build_kuberay_controller and `elo controller` ---------------------------------------------------


def test_the_kuberay_controller_is_wired_from_its_parts(kube, tmp_path):
    kube.call(lambda api: api.put(RAYCLUSTERS, NS, raycluster("elo", worker_group("cloud-gpu", 0, 0, 2),
                                                               worker_group("edge-cpu", 1, 1, 3))))
    controller = build_kuberay_controller(
        PolicyFile.default(), api_client=kube.api_client(), namespace=NS, groups=GROUPS,
        router_url="http://router:8000", dashboard_url="http://head:8265", state_dir=tmp_path, raycluster="elo")

    assert isinstance(controller.backend, KubeRayPoolBackend) and isinstance(controller.scaler, ServeScaler)
    assert isinstance(controller.backend._replicas_on, ServeReplicaPlacement)
    assert controller.scaler.dashboard_url == "http://head:8265"
    assert controller.state_store.path == tmp_path / "policy-state.json"
    assert [n.state for n in controller.backend.list_nodes("cloud")] == []
    controller.backend.resize("cloud", 1)
    assert group_spec(kube, "cloud-gpu")["replicas"] == 1


def test_a_policy_reload_may_not_change_the_pools(kube, tmp_path):
    controller = build_kuberay_controller(
        PolicyFile.default(), api_client=kube.api_client(), namespace=NS, groups=GROUPS,
        router_url="http://router:8000", dashboard_url="http://head:8265", state_dir=tmp_path, raycluster="elo")
    reload = reloader(controller, GROUPS)
    only_edge = PolicyFile.default().model_copy(update={"pools": {"edge": PolicyFile.default().pools["edge"]}})
    with pytest.raises(ConfigError, match=r"the policy's pools changed \(cloud, edge -> edge\); restart"):
        reload(only_edge)
    faster = PolicyFile.default().model_copy(update={"tick_interval_s": 2.0})
    reload(faster)
    assert controller.policy_file.tick_interval_s == 2.0


def test_a_changed_policy_file_is_reloaded_and_a_bad_one_rejected(tmp_path: Path):
    path = tmp_path / "policy.yaml"
    text = DEFAULT_POLICY_PATH.read_text()
    path.write_text(text)
    reloaded: list[PolicyFile] = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_policy_file, args=(path, reloaded.append, stop, 0.01))
    watcher.start()
    try:
        path.write_text("pools: {}\n")  # invalid: rejected, nothing reloaded
        os.utime(path, ns=(1, 1_000_000_000))
        time.sleep(0.1)
        assert reloaded == []
        path.write_text(text.replace("tick_interval_s: 5", "tick_interval_s: 3"))
        os.utime(path, ns=(1, 2_000_000_000))
        deadline = time.monotonic() + 5
        while not reloaded and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        watcher.join()
    assert [p.tick_interval_s for p in reloaded] == [3.0]


def test_the_controller_runs_until_sigterm_and_serves_its_gauges(kube, tmp_path):
    controller = build_kuberay_controller(
        PolicyFile.default(), api_client=kube.api_client(), namespace=NS, groups=GROUPS,
        router_url="http://127.0.0.1:9", dashboard_url="http://127.0.0.1:9", state_dir=tmp_path, raycluster="elo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scraped: list[str] = []

    def scrape_then_terminate() -> None:
        try:
            scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, scrape_then_terminate)
    timer.start()
    run_until_signalled(controller, None, GROUPS, port)
    timer.join()

    assert "elo_controller_ticks_total 1.0" in scraped[0]
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_release_at_zero_ends_quietly_when_the_controller_stops_under_it():
    stop = threading.Event()

    def step() -> list[str]:  # SIGTERM mid-call: run_until_signalled closes the scaler's client under it
        stop.set()
        raise RuntimeError("Cannot send a request, as the client has been closed.")

    _until_done(step, stop)

    def failing() -> list[str]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # not stopping: a real failure still surfaces
        _until_done(failing, threading.Event())


def invoke(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command("controller")(controller_command)
    app.command("noop")(lambda: None)  # two commands, so the app keeps the `controller` subcommand name
    result = CliRunner().invoke(app, ["controller", *args])
    return result.exit_code, " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


URLS = ("--router-url", "http://router:8000", "--dashboard-url", "http://head:8265")


@pytest.mark.parametrize(("args", "message"), [
    (("--backend", "local", "--raycluster", "elo"),
     "Invalid value for --backend: 'local' is not a pool backend here; only kuberay is supported"),
    ((), "Invalid value for --rayservice / --raycluster: name exactly one of --rayservice NAME or --raycluster NAME"),
    (("--rayservice", "a", "--raycluster", "b"), "name exactly one of --rayservice NAME or --raycluster NAME"),
    (("--raycluster", "elo", "--group", "cloud"), "Invalid value for --group: --group 'cloud': expected POOL=GROUP"),
    (("--raycluster", "elo", "--group", "cloud=a", "--group", "cloud=b"),
     "--group 'cloud=b': pool 'cloud' is already mapped to group 'a'"),
    (("--raycluster", "elo", "--group", "cloud=cloud-gpu"),
     "the policy's pools edge have no worker group; add --group POOL=GROUP for each (mapped now: cloud=cloud-gpu)"),
])
def test_bad_arguments_are_refused_with_a_clear_message(args, message):
    code, output = invoke(*URLS, *args)
    assert code == 2
    assert message in output


def test_a_bad_policy_file_is_refused_naming_the_file(tmp_path: Path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("pools: {}\n")
    code, output = invoke(*URLS, "--raycluster", "elo", "--policy", str(bad))
    assert code == 2 and f"{bad}: invalid policy file" in output


def test_without_a_cluster_or_kubeconfig_the_command_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    code, output = invoke(*URLS, "--raycluster", "elo")
    assert code == 2
    assert "no Kubernetes credentials: not running in a cluster (no ServiceAccount token) and no usable kubeconfig" \
        in output


def test_groups_default_to_the_charts_worker_groups():
    assert parse_groups([]) == {"cloud": "cloud-gpu", "edge": "edge-cpu"}
    assert parse_groups(["cloud = gpu-a ", "edge=cpu"]) == {"cloud": "gpu-a", "edge": "cpu"}


def test_elo_has_the_controller_command():
    from orchestrator.cli import app

    assert "controller" in [c.name for c in app.registered_commands]
