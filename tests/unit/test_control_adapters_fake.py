"""The actuator contract without Ray: recording fakes, the shared drain rule, and ServeScaler on a fake dashboard."""

from __future__ import annotations

import json
from types import SimpleNamespace

import httpx
import pytest

from orchestrator.control.adapters.base import NodeInfo, PoolBackend, ReplicaScaler, ScaleDown, choose_scale_down
from orchestrator.control.adapters.fake import Call, FakePoolBackend, FakeReplicaScaler
from orchestrator.control.adapters.local_backend import LocalPoolBackend, LocalPoolSpec
from orchestrator.control.adapters.serve_scaler import ServeScaler
from orchestrator.control.errors import (
    CapacityUnavailableError,
    ConflictError,
    ControlError,
    NotFoundError,
    PermanentError,
    TransientError,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- error vocabulary ------------------------------------------------------------------------------------------

def test_errors_fall_in_two_families_the_loop_can_catch():
    assert issubclass(NotFoundError, PermanentError)
    for kind in (ConflictError, CapacityUnavailableError):
        assert issubclass(kind, TransientError)
    for kind in (TransientError, PermanentError):
        assert issubclass(kind, ControlError)
    assert TransientError("x", delay_s=2.5).delay_s == 2.5
    assert CapacityUnavailableError("x").delay_s > ConflictError("x").delay_s
    with pytest.raises(ValueError):
        TransientError("x", delay_s=-1)


# -- the drain rule --------------------------------------------------------------------------------------------

def node(node_id: str, state: str = "ready", started_at_s: float = 0.0) -> NodeInfo:
    return NodeInfo(node_id, "cloud", state, started_at_s, None if state == "starting" else started_at_s)  # type: ignore[arg-type]


def test_drain_rule_removes_idle_nodes_and_drains_busy_ones():
    nodes = [node("a"), node("b"), node("c")]
    assert choose_scale_down(nodes, 1, {"a": 2, "b": 0, "c": 1}) == ScaleDown(remove=("b",), drain=("c",))


def test_drain_rule_does_nothing_when_the_pool_is_not_too_big():
    assert choose_scale_down([node("a", "draining")], 1, {"a": 1}) == ScaleDown()
    assert choose_scale_down([], 0, {}) == ScaleDown()


def test_drain_rule_breaks_ties_by_draining_then_starting_then_newest():
    nodes = [node("old", started_at_s=1), node("new", started_at_s=5), node("boot", "starting", 9),
             node("drn", "draining", 0)]
    assert choose_scale_down(nodes, 3, {}).remove == ("drn",)
    assert choose_scale_down(nodes, 2, {}).remove == ("drn", "boot")
    assert choose_scale_down(nodes, 1, {}).remove == ("drn", "boot", "new")


def test_drain_rule_prefers_an_idle_node_over_one_already_draining():
    assert choose_scale_down([node("d", "draining"), node("i")], 1, {"d": 1}) == ScaleDown(remove=("i",))


def test_node_info_rejects_unknown_states_and_time_travel():
    with pytest.raises(ValueError):
        NodeInfo("n", "cloud", "gone", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NodeInfo("n", "cloud", "ready", 5.0, 4.0)


# -- FakeReplicaScaler -----------------------------------------------------------------------------------------

def test_fakes_satisfy_the_protocols():
    assert isinstance(FakeReplicaScaler(), ReplicaScaler)
    assert isinstance(FakePoolBackend(), PoolBackend)


def test_fake_scaler_records_every_call_but_writes_only_changes():
    scaler = FakeReplicaScaler({"cloud": 0, "edge": 1})
    scaler.set_replicas("cloud", 2)
    scaler.set_replicas("cloud", 2)
    assert scaler.calls_to("set_replicas") == [Call("set_replicas", ("cloud", 2))] * 2
    assert scaler.writes == [Call("set_replicas", ("cloud", 2))]
    assert scaler.get_replicas("cloud") == (2, 0)
    assert scaler.targets == {"cloud": 2, "edge": 1}


def test_fake_scaler_replicas_start_then_become_ready_on_the_fake_clock():
    clock = FakeClock()
    scaler = FakeReplicaScaler(["cloud"], clock=clock, startup_s=30.0)
    scaler.set_replicas("cloud", 2)
    assert scaler.get_replicas("cloud") == (0, 2)
    clock.now += 29.0
    assert scaler.get_replicas("cloud") == (0, 2)
    clock.now += 1.0
    assert scaler.get_replicas("cloud") == (2, 0)


def test_fake_scaler_scale_down_drops_starting_replicas_first():
    clock = FakeClock()
    scaler = FakeReplicaScaler({"cloud": 2}, clock=clock, startup_s=10.0)
    scaler.set_replicas("cloud", 4)
    scaler.set_replicas("cloud", 3)
    assert scaler.get_replicas("cloud") == (2, 1)
    scaler.set_replicas("cloud", 1)
    assert scaler.get_replicas("cloud") == (1, 0)


def test_fake_scaler_make_ready_promotes_starting_replicas():
    scaler = FakeReplicaScaler(["edge"], startup_s=60.0)
    scaler.set_replicas("edge", 3)
    scaler.make_ready("edge")
    assert scaler.get_replicas("edge") == (3, 0)


def test_fake_scaler_raises_the_injected_error_once_and_changes_nothing():
    scaler = FakeReplicaScaler({"cloud": 1})
    scaler.fail_next(TransientError("dashboard unreachable", delay_s=1.0), method="set_replicas")
    assert scaler.get_replicas("cloud") == (1, 0)  # other methods are not affected
    with pytest.raises(TransientError, match="dashboard unreachable"):
        scaler.set_replicas("cloud", 3)
    assert scaler.targets == {"cloud": 1} and scaler.writes == []
    scaler.set_replicas("cloud", 3)
    assert scaler.targets == {"cloud": 3}
    assert [c.method for c in scaler.calls] == ["get_replicas", "set_replicas", "set_replicas"]


def test_fake_scaler_injected_errors_without_a_method_hit_the_next_call_in_order():
    scaler = FakeReplicaScaler(["cloud"])
    scaler.fail_next(ConflictError("first"))
    scaler.fail_next(PermanentError("second"))
    with pytest.raises(ConflictError):
        scaler.get_replicas("cloud")
    with pytest.raises(PermanentError):
        scaler.set_replicas("cloud", 1)
    scaler.set_replicas("cloud", 1)


def test_fake_scaler_unknown_pool_is_not_found():
    with pytest.raises(NotFoundError, match="gpu"):
        FakeReplicaScaler(["cloud"]).set_replicas("gpu", 1)
    with pytest.raises(ValueError):
        FakeReplicaScaler(["cloud"]).set_replicas("cloud", -1)


# -- FakePoolBackend -------------------------------------------------------------------------------------------

def states(backend: FakePoolBackend, pool: str) -> list[str]:
    return [n.state for n in backend.list_nodes(pool)]


def test_fake_backend_nodes_start_join_and_are_measured_on_the_fake_clock():
    clock = FakeClock()
    backend = FakePoolBackend(["cloud"], clock=clock, startup_s=90.0)
    assert backend.measured_startup_s("cloud") is None
    backend.resize("cloud", 2)
    assert states(backend, "cloud") == ["starting", "starting"]
    clock.now += 90.0
    nodes = backend.list_nodes("cloud")
    assert [n.state for n in nodes] == ["ready", "ready"]
    assert all(n.ready_at_s == n.started_at_s + 90.0 for n in nodes)
    assert backend.measured_startup_s("cloud") == 90.0


def test_fake_backend_resize_is_idempotent():
    backend = FakePoolBackend({"edge": 1})
    backend.resize("edge", 3)
    backend.resize("edge", 3)
    assert len(backend.list_nodes("edge")) == 3
    assert backend.writes == [Call("resize", ("edge", 3))]


def test_fake_backend_removes_idle_nodes_and_drains_busy_ones_until_they_are_empty():
    backend = FakePoolBackend({"cloud": 3})
    a, b, c = (n.node_id for n in backend.list_nodes("cloud"))
    backend.host(a, 1)
    backend.host(b, 2)
    backend.resize("cloud", 0)
    assert backend.removed == [c]
    assert states(backend, "cloud") == ["draining", "draining"]
    backend.resize("cloud", 0)  # replicas still there: nothing more goes
    assert backend.removed == [c]
    backend.host(a, 0)
    backend.resize("cloud", 0)
    assert backend.removed == [c, a]
    backend.host(b, 0)
    backend.resize("cloud", 0)
    assert backend.removed == [c, a, b] and backend.list_nodes("cloud") == []


def test_fake_backend_never_removes_a_node_hosting_a_replica():
    backend = FakePoolBackend({"cloud": 2})
    a, b = (n.node_id for n in backend.list_nodes("cloud"))
    backend.host(a, 1)
    backend.host(b, 1)
    for _ in range(3):
        backend.resize("cloud", 0)
    assert backend.removed == [] and states(backend, "cloud") == ["draining", "draining"]


def test_fake_backend_scale_up_undrains_before_starting_new_nodes():
    backend = FakePoolBackend({"cloud": 2})
    a, _ = (n.node_id for n in backend.list_nodes("cloud"))
    for n in backend.list_nodes("cloud"):
        backend.host(n.node_id, 1)
    backend.resize("cloud", 1)
    assert states(backend, "cloud").count("draining") == 1
    backend.resize("cloud", 3)
    assert states(backend, "cloud") == ["ready", "ready", "ready"]
    assert backend.removed == []


def test_fake_backend_cap_makes_progress_then_reports_capacity():
    backend = FakePoolBackend(["edge"], max_nodes={"edge": 2})
    with pytest.raises(CapacityUnavailableError, match="capped at 2"):
        backend.resize("edge", 4)
    assert len(backend.list_nodes("edge")) == 2


def test_fake_backend_injected_error_and_unknown_pool():
    backend = FakePoolBackend(["cloud"])
    backend.fail_next(CapacityUnavailableError("no GPUs in zone"), method="resize")
    with pytest.raises(CapacityUnavailableError):
        backend.resize("cloud", 1)
    assert backend.list_nodes("cloud") == []
    backend.resize("cloud", 1)
    assert len(backend.list_nodes("cloud")) == 1
    with pytest.raises(NotFoundError):
        backend.resize("gpu", 1)


# -- ServeScaler against a fake Ray dashboard (httpx.MockTransport, shapes from ray/dashboard serve_head.py) ----

class FakeDashboard:
    """Answers GET /api/serve/applications/ and POST .../scale like Ray 2.60's dashboard; records requests."""

    def __init__(self, external_scaler_enabled: bool = True) -> None:
        self.targets = {"pool-cloud": 0, "pool-edge": 1}
        self.states: dict[str, list[str]] = {"pool-cloud": [], "pool-edge": ["RUNNING"]}
        self.external_scaler_enabled = external_scaler_enabled
        self.configured_replicas: dict[str, int] = {}  # the deployed AppConfig's pools.<pool>.replicas
        self.requests: list[tuple[str, str]] = []
        self.answers: list[httpx.Response | Exception] = []  # forced answers for the next requests

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        if self.answers:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if request.method == "GET" and request.url.path == "/api/serve/applications/":
            deployments = {name: {"name": name, "target_num_replicas": self.targets[name],
                                  "replicas": [{"replica_id": str(i), "state": s} for i, s in
                                               enumerate(self.states[name])]} for name in self.targets}
            return httpx.Response(200, json={"applications": {"elo": {
                "name": "elo", "deployments": deployments,
                "deployed_app_config": {"name": "elo", "import_path": "deployments.app:app_builder", "args": {
                    "config": {"pools": {p: {"replicas": n} for p, n in self.configured_replicas.items()}}}},
                "external_scaler_enabled": self.external_scaler_enabled}}})
        parts = request.url.path.split("/")  # /api/v1/applications/{app}/deployments/{dep}/scale
        if request.method == "POST" and parts[-1] == "scale":
            app, dep = parts[4], parts[6]
            n = json.loads(request.content)["target_num_replicas"]
            if app != "elo" or dep not in self.targets:
                return httpx.Response(404, json={"error": "Application or Deployment not found"})
            self.targets[dep] = n
            return httpx.Response(200, json={"message": "Scaling request received."})
        return httpx.Response(404, text="404: Not Found")

    def posts(self) -> int:
        return sum(1 for method, _ in self.requests if method == "POST")


def serve_scaler(dashboard: FakeDashboard, sleeps: list[float] | None = None, **kwargs) -> ServeScaler:
    client = httpx.Client(transport=httpx.MockTransport(dashboard))
    return ServeScaler("http://dash:8265/", client=client, sleep=(sleeps if sleeps is not None else []).append,
                       **kwargs)


def test_serve_scaler_posts_once_for_the_same_target():
    dashboard = FakeDashboard()
    scaler = serve_scaler(dashboard)
    scaler.set_replicas("cloud", 2)
    scaler.set_replicas("cloud", 2)
    assert dashboard.posts() == 1 and dashboard.targets["pool-cloud"] == 2
    assert ("POST", "/api/v1/applications/elo/deployments/pool-cloud/scale") in dashboard.requests


def test_serve_scaler_counts_ready_and_still_missing_replicas():
    dashboard = FakeDashboard()
    dashboard.targets["pool-cloud"] = 3
    dashboard.states["pool-cloud"] = ["RUNNING", "STARTING", "PENDING_MIGRATION", "STOPPING"]
    assert serve_scaler(dashboard).get_replicas("cloud") == (2, 1)
    dashboard.targets["pool-cloud"] = 1  # scaling down: extra running replicas are ready, nothing is starting
    assert serve_scaler(dashboard).get_replicas("cloud") == (2, 0)


def test_serve_scaler_measures_replica_startup_from_ask_to_ready():
    dashboard, now = FakeDashboard(), [100.0]
    dashboard.targets["pool-cloud"], dashboard.states["pool-cloud"] = 0, []
    scaler = serve_scaler(dashboard, clock=lambda: now[0])
    assert scaler.get_replicas("cloud") == (0, 0) and scaler.measured_startup_s("cloud") is None
    scaler.set_replicas("cloud", 2)
    dashboard.states["pool-cloud"] = ["STARTING", "STARTING"]
    now[0] = 130.0
    assert scaler.get_replicas("cloud") == (0, 2) and scaler.measured_startup_s("cloud") is None
    dashboard.states["pool-cloud"] = ["RUNNING", "STARTING"]
    now[0] = 160.0
    scaler.get_replicas("cloud")
    assert scaler.measured_startup_s("cloud") == 60.0
    dashboard.states["pool-cloud"] = ["RUNNING", "RUNNING"]
    now[0] = 180.0
    scaler.get_replicas("cloud")
    assert scaler.measured_startup_s("cloud") == 70.0  # mean of 60 and 80
    # A replica that restarts on its own (nobody asked) measures nothing.
    dashboard.states["pool-cloud"] = ["RUNNING", "STARTING"]
    scaler.get_replicas("cloud")
    dashboard.states["pool-cloud"] = ["RUNNING", "RUNNING"]
    now[0] = 500.0
    scaler.get_replicas("cloud")
    assert scaler.measured_startup_s("cloud") == 70.0


def test_pools_configured_at_zero_are_released_once_and_only_if_never_ready():
    dashboard = FakeDashboard()
    dashboard.configured_replicas = {"cloud": 0, "edge": 1}
    dashboard.targets["pool-cloud"], dashboard.states["pool-cloud"] = 1, ["STARTING"]  # Serve deployed one
    scaler = serve_scaler(dashboard)
    assert scaler.release_pools_deployed_at_zero(["cloud", "edge"]) == ["cloud"]
    assert dashboard.targets == {"pool-cloud": 0, "pool-edge": 1}
    # A restarted controller finds cloud scaled up and serving: it is left alone.
    dashboard.targets["pool-cloud"], dashboard.states["pool-cloud"] = 1, ["RUNNING"]
    assert serve_scaler(dashboard).release_pools_deployed_at_zero(["cloud", "edge"]) == []
    assert dashboard.targets["pool-cloud"] == 1


def test_releasing_a_pool_whose_deployment_is_not_listed_yet_is_not_found_so_the_caller_retries():
    dashboard = FakeDashboard()
    del dashboard.targets["pool-cloud"]
    with pytest.raises(NotFoundError, match="not listed yet"):
        serve_scaler(dashboard).release_pools_deployed_at_zero(["cloud"], {"cloud": 0})


def test_releasing_pools_before_the_app_is_deployed_is_not_found():
    dashboard = FakeDashboard()
    dashboard.answers.append(httpx.Response(200, json={"applications": {}}))
    with pytest.raises(NotFoundError, match="is not deployed .*release pools deployed at zero"):
        serve_scaler(dashboard).release_pools_deployed_at_zero(["cloud"])


def test_serve_scaler_unknown_deployment_is_not_found_without_retry():
    dashboard = FakeDashboard()
    with pytest.raises(NotFoundError, match="no deployment 'pool-gpu'.*pool-cloud, pool-edge"):
        serve_scaler(dashboard).set_replicas("gpu", 1)
    assert dashboard.requests == [("GET", "/api/serve/applications/")]


def test_serve_scaler_unknown_application_is_not_found():
    with pytest.raises(NotFoundError, match="'other' is not deployed"):
        serve_scaler(FakeDashboard(), app_name="other").get_replicas("cloud")


def test_serve_scaler_refuses_an_app_deployed_without_external_scaling():
    dashboard = FakeDashboard(external_scaler_enabled=False)
    with pytest.raises(PermanentError, match="external_scaler_enabled"):
        serve_scaler(dashboard).set_replicas("cloud", 1)
    assert dashboard.posts() == 0


@pytest.mark.parametrize(("status", "body", "error"), [
    (400, {"error": "Invalid request body: target_num_replicas must be >= 0"}, PermanentError),
    (404, {"error": "Application or Deployment not found"}, NotFoundError),
    (409, {"error": "changed"}, ConflictError),
    (412, {"error": "Cannot update replicas: external_scaler_enabled=false"}, PermanentError),
    (412, {"error": "Deployment is deleted"}, NotFoundError),
])
def test_serve_scaler_maps_client_errors_with_the_server_message_and_no_retry(status, body, error):
    dashboard = FakeDashboard()
    scaler = serve_scaler(dashboard)
    scaler.get_replicas("cloud")
    dashboard.requests.clear()
    dashboard.answers = [httpx.Response(200, json={"applications": {"elo": {
        "deployments": {"pool-cloud": {"target_num_replicas": 0}}, "external_scaler_enabled": True}}}),
        httpx.Response(status, json=body)]
    with pytest.raises(error, match=body["error"]) as info:
        scaler.set_replicas("cloud", 1)
    assert type(info.value) is error
    assert len(dashboard.requests) == 2  # one GET, one POST: 4xx is not retried


def test_serve_scaler_retries_5xx_with_backoff_then_raises_transient():
    dashboard = FakeDashboard()
    sleeps: list[float] = []
    scaler = serve_scaler(dashboard, sleeps, attempts=3, backoff_s=0.5)
    dashboard.answers = [httpx.Response(503, json={"error": "Serve controller is not available"},
                                        headers={"Retry-After": "7"})] * 3
    with pytest.raises(TransientError, match="Serve controller is not available") as info:
        scaler.get_replicas("cloud")
    assert info.value.delay_s == 7.0
    assert sleeps == [0.5, 1.0] and len(dashboard.requests) == 3


def test_serve_scaler_recovers_when_a_retry_succeeds():
    dashboard = FakeDashboard()
    sleeps: list[float] = []
    dashboard.answers = [httpx.ConnectError("connection refused"), httpx.Response(500, text="Traceback ...")]
    serve_scaler(dashboard, sleeps).set_replicas("cloud", 1)
    assert dashboard.targets["pool-cloud"] == 1 and len(sleeps) == 2


def test_serve_scaler_timeouts_become_transient_errors():
    dashboard = FakeDashboard()
    dashboard.answers = [httpx.ReadTimeout("slow")] * 2
    with pytest.raises(TransientError, match="unreachable after 2 attempts") as info:
        serve_scaler(dashboard, attempts=2).get_replicas("edge")
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


# -- LocalPoolBackend's bookkeeping on a fake Cluster (no Ray: the module imports Ray only when it talks to it) --

class FakeRayNode:
    def __init__(self, node_id: str, resources: dict[str, float]) -> None:
        self.node_id = node_id
        self._ray_params = SimpleNamespace(resources=resources)


class FakeCluster:
    """Just what LocalPoolBackend uses of ray.cluster_utils.Cluster; joining a node takes ``join_s`` fake seconds."""

    address = "127.0.0.1:6379"

    def __init__(self, clock: FakeClock, join_s: float = 2.0) -> None:
        self.clock, self.join_s = clock, join_s
        self.head_node = FakeRayNode("head", {})
        self.worker_nodes: set[FakeRayNode] = set()
        self.alive = {"head"}
        self.added: list[dict] = []
        self.add_error: Exception | None = None
        self.global_state = self

    def node_table(self) -> list[dict]:
        return [{"NodeID": n, "Alive": True} for n in self.alive]

    def add_node(self, wait: bool = True, **args) -> FakeRayNode:
        if self.add_error:
            raise self.add_error
        self.clock.now += self.join_s
        node = FakeRayNode(f"n{len(self.added)}", args["resources"])
        self.added.append(args)
        self.worker_nodes.add(node)
        self.alive.add(node.node_id)
        return node

    def remove_node(self, node: FakeRayNode) -> None:
        self.worker_nodes.discard(node)
        self.alive.discard(node.node_id)


class HostedLocalBackend(LocalPoolBackend):
    """LocalPoolBackend whose replica census (the Ray state API) is test input, like FakePoolBackend.host."""

    hosted: dict[str, int] = {}

    def replicas_on(self, node_ids):
        return {n: self.hosted.get(n, 0) for n in node_ids}


def local_backend(clock: FakeClock, cluster: FakeCluster, **spec) -> HostedLocalBackend:
    backend = HostedLocalBackend(cluster, {"cloud": LocalPoolSpec(**spec)}, clock, fence=False)  # type: ignore[arg-type]
    backend.hosted = {}
    return backend


def test_local_backend_tags_nodes_with_the_pool_resource_and_measures_their_join():
    clock = FakeClock()
    cluster = FakeCluster(clock, join_s=2.5)
    backend = local_backend(clock, cluster, replicas_per_node=2, num_cpus=4, memory_bytes=2**30)
    assert isinstance(backend, PoolBackend) and backend.measured_startup_s("cloud") is None
    backend.resize("cloud", 2)
    assert cluster.added == [{"num_cpus": 4, "resources": {"pool-cloud": 2}, "memory": 2**30}] * 2
    assert [n.state for n in backend.list_nodes("cloud")] == ["ready", "ready"]
    assert backend.measured_startup_s("cloud") == 2.5
    backend.resize("cloud", 2)
    assert len(cluster.added) == 2


def test_local_backend_drains_busy_nodes_and_removes_them_once_empty():
    clock = FakeClock()
    cluster = FakeCluster(clock)
    backend = local_backend(clock, cluster)
    backend.resize("cloud", 2)
    a, b = (n.node_id for n in backend.list_nodes("cloud"))
    backend.hosted = {a: 1, b: 1}
    backend.resize("cloud", 0)
    assert [n.state for n in backend.list_nodes("cloud")] == ["draining", "draining"]
    backend.hosted = {a: 0, b: 1}
    backend.resize("cloud", 0)
    assert [(n.node_id, n.state) for n in backend.list_nodes("cloud")] == [(b, "draining")]
    assert cluster.alive == {"head", b}
    backend.resize("cloud", 1)  # wanted again: un-drained rather than replaced
    assert [(n.node_id, n.state) for n in backend.list_nodes("cloud")] == [(b, "ready")]


def test_local_backend_cap_and_start_failures_are_capacity_errors():
    clock = FakeClock()
    cluster = FakeCluster(clock)
    backend = local_backend(clock, cluster, max_nodes=1)
    with pytest.raises(CapacityUnavailableError, match="max_nodes=1"):
        backend.resize("cloud", 3)
    assert len(backend.list_nodes("cloud")) == 1
    failing = FakeCluster(clock)
    failing.add_error = TimeoutError("node did not register")
    with pytest.raises(CapacityUnavailableError, match="node did not register"):
        local_backend(clock, failing).resize("cloud", 1)


def test_local_backend_add_node_off_the_main_thread_is_a_permanent_error():
    clock = FakeClock()
    cluster = FakeCluster(clock)
    cluster.add_error = ValueError("signal only works in main thread of the main interpreter")
    with pytest.raises(PermanentError, match="main thread"):
        local_backend(clock, cluster).resize("cloud", 1)


def test_local_backend_forgets_dead_nodes_and_replaces_them():
    clock = FakeClock()
    cluster = FakeCluster(clock)
    backend = local_backend(clock, cluster)
    backend.resize("cloud", 2)
    dead = backend.list_nodes("cloud")[0].node_id
    cluster.alive.discard(dead)
    assert dead not in [n.node_id for n in backend.list_nodes("cloud")]
    backend.resize("cloud", 2)
    assert len(backend.list_nodes("cloud")) == 2 and len(cluster.added) == 3


def test_local_backend_adopts_existing_pool_nodes_and_rejects_unknown_pools():
    clock = FakeClock()
    cluster = FakeCluster(clock)
    cluster.worker_nodes.add(FakeRayNode("old", {"pool-cloud": 1}))
    cluster.worker_nodes.add(FakeRayNode("other", {"pool-gpu": 1}))
    cluster.alive |= {"old", "other"}
    backend = local_backend(clock, cluster)
    assert [(n.node_id, n.state) for n in backend.list_nodes("cloud")] == [("old", "ready")]
    with pytest.raises(NotFoundError, match="edge"):
        backend.list_nodes("edge")
