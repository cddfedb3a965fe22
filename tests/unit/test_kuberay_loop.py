"""The whole control loop over KubeRay: the real Controller and shipped policy on a fake clock, resizing the worker
groups of a RayCluster served over real HTTP by kmock's emulator, through a burst and an idle period; and the
`elo controller` wiring and its bad arguments."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.control.adapters.kuberay import REQUIRED_ACCESS, KubeRayPoolBackend, RetryPolicy
from orchestrator.control.adapters.router import ObservedMetrics
from orchestrator.control.adapters.serve_placement import ServeReplicaPlacement
from orchestrator.control.adapters.serve_scaler import ServeScaler
from orchestrator.control.config import DEFAULT_POLICY_PATH, ConfigError, PolicyFile
from orchestrator.control.journal import DecisionLog
from orchestrator.control.loop import Controller
from orchestrator.control.policy_reload import watch_policy_file
from orchestrator.kube import build_kuberay_controller, controller_command, parse_groups, reloader, run_until_signalled
from tests.unit.kube_api import PODS, RAYCLUSTERS, FakeKubeRay, KubeServer, kube_server, raycluster, worker_group
from tests.unit.kube_api import worker_pod as make_pod

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


class Traffic:
    """The router's side, scripted: per-pool load windows (``/elo/pools``) and the routing preference it is sent."""

    def __init__(self) -> None:
        self.load: dict[str, dict[str, Any]] = {}
        self.preferences: list[dict[str, str]] = []

    def burst(self) -> None:  # more than the edge pool can take: it queues
        self.load = {"edge": {"arrival_rate_rps": 5.0, "queued": 20, "running": 12}, "cloud": {}}

    def idle(self) -> None:
        self.load = {"edge": {}, "cloud": {}}

    def pools(self) -> dict[str, dict[str, Any]]:
        return self.load

    def set_preference(self, preferred_pool_by_class: Mapping[str, str]) -> None:
        self.preferences.append(dict(preferred_pool_by_class))


class Serve:
    """Serve's side, modelled from the emulated cluster: a replica is ready once a ready pod of its pool's group
    holds it (one per pod, oldest pods first); the pods holding replicas are busy for the drain rule."""

    def __init__(self, operator: FakeKubeRay) -> None:
        self.operator = operator
        self.targets = {"cloud": 0, "edge": 1}

    def _holders(self, pool: str) -> list[str]:
        ready = [p for p in self.operator.pods(GROUPS[pool]) if p["status"]["phase"] == "Running"]
        ready.sort(key=lambda p: p["metadata"]["creationTimestamp"])
        return [p["metadata"]["name"] for p in ready][:self.targets[pool]]

    def set_replicas(self, pool: str, replicas: int) -> None:
        self.targets[pool] = replicas

    def get_replicas(self, pool: str) -> tuple[int, int]:
        ready = len(self._holders(pool))
        return ready, self.targets[pool] - ready

    def replicas_on(self, pods: Mapping[str, str | None]) -> dict[str, int]:
        busy = {name for pool in self.targets for name in self._holders(pool)}
        return {name: int(name in busy) for name in pods}


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with kube_server() as server:
        yield server


def group_spec(kube: KubeServer, group: str) -> dict:
    rc = kube.call(lambda api: api.get(RAYCLUSTERS, NS, "elo"))
    return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == group)


def test_a_burst_grows_the_cloud_worker_group_and_idleness_takes_it_back_to_zero(kube, tmp_path):
    clocks = Clocks()
    kube.call(lambda api: (api.put(RAYCLUSTERS, NS, raycluster("elo", worker_group("cloud-gpu", 0, 0, 2),
                                                                worker_group("edge-cpu", 1, 1, 3))),
                           api.put(PODS, NS, make_pod("elo-edge-cpu-worker-000", "elo", "edge-cpu", WALL0 - 600,
                                                      WALL0 - 590, ip="10.0.1.1"))))
    operator = FakeKubeRay(kube, "elo", clocks.wall, {"cloud-gpu": 40.0, "edge-cpu": 8.0})
    serve, traffic = Serve(operator), Traffic()
    backend = KubeRayPoolBackend(kube.api_client(), NS, GROUPS, raycluster="elo", replicas_on=serve.replicas_on,
                                 clock=clocks.clock, wall_clock=clocks.wall, retry=RetryPolicy(backoff_s=0.0))
    policy = PolicyFile.default()
    controller = Controller(policy, ObservedMetrics(traffic, serve, backend, list(policy.pools), clock=clocks.clock),
                            serve, backend, traffic, clock=clocks.clock, wall_clock=clocks.wall,
                            decisions=DecisionLog(tmp_path / "decisions.jsonl"))
    seen: dict[str, list[int]] = {"cloud-gpu": [], "edge-cpu": []}

    def run(seconds: float) -> None:
        for _ in range(int(seconds / policy.tick_interval_s)):
            operator.reconcile()
            controller.tick()
            for group in seen:
                seen[group].append(group_spec(kube, group)["replicas"])
            clocks.now += policy.tick_interval_s

    traffic.burst()
    run(240)
    assert max(seen["cloud-gpu"]) == 2 and max(seen["edge-cpu"]) == 3
    assert [p["status"]["phase"] for p in operator.pods("cloud-gpu")] == ["Running", "Running"]
    assert serve.get_replicas("cloud") == (2, 0)
    assert backend.measured_startup_s("cloud") == pytest.approx(40.0)

    traffic.idle()
    run(720)
    assert group_spec(kube, "cloud-gpu")["replicas"] == 0 and operator.pods("cloud-gpu") == []
    assert group_spec(kube, "edge-cpu")["replicas"] == 1 and len(operator.pods("edge-cpu")) == 1
    assert min(seen["edge-cpu"]) >= 1  # never below the edge pool's minimum
    assert operator.surplus_deleted == []  # every pod removed was named by the backend, never picked by KubeRay
    assert serve.targets == {"cloud": 0, "edge": 1}
    decisions = DecisionLog(tmp_path / "decisions.jsonl").tail(10_000)
    assert decisions and not [d["errors"] for d in decisions if d["errors"]]
    assert traffic.preferences[-1] == {"default": "edge"}  # the burst is over: back to the cheap pool
    # Every call on the wire is one the chart's Role grants (REQUIRED_ACCESS), and each of those was used.
    used = {(r.resource.group, r.resource.plural, _verb(r)) for r in kube.requests() if r.resource is not None}
    assert used == set(REQUIRED_ACCESS) - {("ray.io", "rayservices", "get")}, used  # this test names the RayCluster


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
