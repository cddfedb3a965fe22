"""The KubeRay pool backend against a Kubernetes API server over real HTTP (kmock's emulator): reads, guarded
patches, the drain rule, retries and errors; and its pure parts (what to patch) on their own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import kmock
import pytest

from orchestrator.control.adapters.base import NodeInfo
from orchestrator.control.adapters.kuberay import (
    KubeRayPoolBackend,
    KubernetesAccessError,
    RetryPolicy,
    WorkerGroup,
    find_group,
    plan_resize,
    resize_patch,
)
from orchestrator.control.adapters.serve_placement import ServeReplicaPlacement, count_replicas_by_pod
from orchestrator.control.errors import (
    CapacityUnavailableError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
)
from tests.unit.kube_api import (
    PODS,
    RAYCLUSTERS,
    RAYSERVICES,
    FakeKubeRay,
    KubeServer,
    kube_server,
    raycluster,
    rayservice,
    worker_group,
    worker_pod,
)

NS = "serving"
WALL0 = 1_750_000_000.0  # the fake wall clock when the fake monotonic clock reads 1000
GROUPS = {"cloud": "cloud-gpu", "edge": "edge-cpu"}


class Clocks:
    """The backend's clock (monotonic-like) and the wall clock pod timestamps are in, advancing together."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now - 1000.0


@pytest.fixture
def kube() -> Iterator[KubeServer]:
    with kube_server() as server:
        yield server


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def make_backend(kube: KubeServer, clocks: Clocks, busy: dict[str, int] | None = None, *,
                 sleeps: list[float] | None = None, timeout_s: float = 2.0, **kwargs) -> KubeRayPoolBackend:
    """The backend under test; ``busy`` is the Serve replica count per pod (mutable, read at each call)."""
    busy = {} if busy is None else busy
    kwargs.setdefault("raycluster", None if "rayservice" in kwargs else "elo")
    return KubeRayPoolBackend(
        kube.api_client(), NS, GROUPS, replicas_on=lambda pods: {name: busy.get(name, 0) for name in pods},
        clock=clocks.clock, wall_clock=clocks.wall, request_timeout_s=timeout_s,
        retry=RetryPolicy(attempts=3, backoff_s=0.01, sleep=(sleeps if sleeps is not None else []).append),
        **kwargs)


def seed(kube: KubeServer, *groups: dict, pods: tuple[dict, ...] = (), name: str = "elo") -> None:
    def put(api) -> None:
        api.put(RAYCLUSTERS, NS, raycluster(name, *groups))
        for pod in pods:
            api.put(PODS, NS, pod)

    kube.call(put)


def ready_pod(name: str, group: str = "cloud-gpu", age_s: float = 600.0, startup_s: float = 30.0,
              ip: str | None = None, cluster: str = "elo") -> dict:
    return worker_pod(name, cluster, group, WALL0 - age_s, WALL0 - age_s + startup_s, ip=ip)


def cluster_group(kube: KubeServer, group: str, name: str = "elo") -> dict:
    rc = kube.call(lambda api: api.get(RAYCLUSTERS, NS, name))
    return next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == group)


def patches(kube: KubeServer) -> list[list[dict]]:
    return [r.data for r in kube.requests("PATCH", RAYCLUSTERS)]


def states(nodes: list[NodeInfo]) -> dict[str, str]:
    return {n.node_id: n.state for n in nodes}


# --- scaling up and down -------------------------------------------------------------------------------------


def test_scaling_up_raises_replicas_in_one_guarded_patch_and_lists_the_asked_for_pods_as_starting(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0, max_replicas=2), worker_group("edge-cpu", 1, 1, 3),
         pods=(ready_pod("edge-1", "edge-cpu"),))
    rv = kube.call(lambda api: api.get(RAYCLUSTERS, NS, "elo"))["metadata"]["resourceVersion"]
    backend = make_backend(kube, clocks)

    backend.resize("cloud", 2)

    assert patches(kube) == [[
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "cloud-gpu"},
        {"op": "add", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2},
    ]]
    assert kube.requests("PATCH", RAYCLUSTERS)[0].headers["Content-Type"] == "application/json-patch+json"
    assert cluster_group(kube, "cloud-gpu")["replicas"] == 2
    assert cluster_group(kube, "edge-cpu")["replicas"] == 1  # the other group is not touched
    # KubeRay has not created the pods yet: they are starting nodes already, so the controller does not ask again.
    assert backend.list_nodes("cloud") == [NodeInfo("cloud-gpu-pending-1", "cloud", "starting", 1000.0),
                                           NodeInfo("cloud-gpu-pending-2", "cloud", "starting", 1000.0)]

    operator = FakeKubeRay(kube, "elo", clocks.wall, {"cloud-gpu": 45.0, "edge-cpu": 5.0})
    clocks.now += 2
    operator.reconcile()
    nodes = backend.list_nodes("cloud")
    assert [n.state for n in nodes] == ["starting", "starting"] and all(n.started_at_s == 1002.0 for n in nodes)
    assert backend.measured_startup_s("cloud") is None

    clocks.now += 45
    operator.reconcile()
    nodes = backend.list_nodes("cloud")
    assert [(n.state, n.started_at_s, n.ready_at_s) for n in nodes] == [("ready", 1002.0, 1047.0)] * 2
    assert backend.measured_startup_s("cloud") == pytest.approx(45.0)
    assert len(patches(kube)) == 1


def test_scaling_an_idle_group_down_names_its_pods_in_workers_to_delete_with_the_replicas(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 2), pods=(ready_pod("gpu-a"), ready_pod("gpu-b", age_s=300)))
    backend = make_backend(kube, clocks)

    backend.resize("cloud", 0)

    assert patches(kube)[0][2:] == [
        {"op": "add", "path": "/spec/workerGroupSpecs/0/replicas", "value": 0},
        {"op": "add", "path": "/spec/workerGroupSpecs/0/scaleStrategy",
         "value": {"workersToDelete": ["gpu-b", "gpu-a"]}},
    ]
    assert states(backend.list_nodes("cloud")) == {"gpu-a": "draining", "gpu-b": "draining"}
    backend.resize("cloud", 0)  # KubeRay has not deleted them yet: nothing to change
    assert len(patches(kube)) == 1

    FakeKubeRay(kube, "elo", clocks.wall, {}).reconcile()
    assert backend.list_nodes("cloud") == []
    backend.resize("cloud", 0)  # the pods are gone: their names are pruned (KubeRay does not clear the list)
    assert patches(kube)[-1][2:] == [
        {"op": "add", "path": "/spec/workerGroupSpecs/0/scaleStrategy/workersToDelete", "value": []}]
    backend.resize("cloud", 0)
    assert len(patches(kube)) == 2


def test_a_busy_pod_drains_until_its_replicas_are_gone_then_goes_by_name(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 3), pods=(ready_pod("gpu-a", age_s=900), ready_pod("gpu-b", age_s=800),
                                                    ready_pod("gpu-c", age_s=700)))
    busy = {"gpu-a": 1, "gpu-c": 2}
    backend = make_backend(kube, clocks, busy)

    backend.resize("cloud", 1)  # two go: idle gpu-b by name, busy gpu-a (fewer replicas than gpu-c) drains

    group = cluster_group(kube, "cloud-gpu")
    assert (group["replicas"], group["scaleStrategy"]["workersToDelete"]) == (2, ["gpu-b"])
    assert states(backend.list_nodes("cloud")) == {"gpu-a": "draining", "gpu-b": "draining", "gpu-c": "ready"}
    backend.resize("cloud", 1)  # gpu-a still busy: stays, nothing written
    assert len(patches(kube)) == 1

    busy["gpu-a"] = 0  # Serve moved its replica away
    backend.resize("cloud", 1)

    group = cluster_group(kube, "cloud-gpu")
    assert (group["replicas"], group["scaleStrategy"]["workersToDelete"]) == (1, ["gpu-b", "gpu-a"])
    operator = FakeKubeRay(kube, "elo", clocks.wall, {"cloud-gpu": 30.0})
    operator.reconcile()
    assert [p["metadata"]["name"] for p in operator.pods("cloud-gpu")] == ["gpu-c"]
    assert states(backend.list_nodes("cloud")) == {"gpu-c": "ready"}


def test_a_busy_pod_is_not_named_when_a_replica_lands_on_it_between_the_count_and_the_patch(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 2), pods=(ready_pod("gpu-a", age_s=900), ready_pod("gpu-b", age_s=800)))
    counts = iter([{"gpu-a": 1, "gpu-b": 0}, {"gpu-b": 1}, {"gpu-a": 1, "gpu-b": 1}])
    backend = KubeRayPoolBackend(kube.api_client(), NS, GROUPS, raycluster="elo", clock=clocks.clock,
                                 wall_clock=clocks.wall, replicas_on=lambda pods: next(counts))

    backend.resize("cloud", 1)  # gpu-b looked idle, but the re-check right before the patch sees a replica

    assert patches(kube) == []
    assert states(backend.list_nodes("cloud")) == {"gpu-a": "ready", "gpu-b": "draining"}


def test_the_worker_groups_min_and_max_replicas_bound_the_target(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0), worker_group("edge-cpu", 1, min_replicas=1, max_replicas=3),
         pods=(ready_pod("edge-1", "edge-cpu"),))
    backend = make_backend(kube, clocks)

    backend.resize("edge", 0)  # below minReplicas: KubeRay would keep the pod anyway
    assert patches(kube) == []

    with pytest.raises(CapacityUnavailableError, match=r"'edge-cpu' of RayCluster 'elo' is capped at maxReplicas=3; "
                                                       r"5 node\(s\) asked for, replicas set to 3"):
        backend.resize("edge", 5)
    assert cluster_group(kube, "edge-cpu")["replicas"] == 3  # progress up to the cap
    assert len(backend.list_nodes("edge")) == 3


def test_the_same_target_twice_sends_one_patch(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0), worker_group("edge-cpu", 1, 1, 3))
    backend = make_backend(kube, clocks)

    backend.resize("cloud", 2)
    backend.resize("cloud", 2)

    assert len(kube.requests("PATCH")) == 1
    assert len(kube.requests("GET", RAYCLUSTERS)) == 2  # each call read before deciding


# --- never fighting another writer ---------------------------------------------------------------------------


def test_a_concurrent_write_is_kept_and_the_resize_is_recomputed_on_a_fresh_read(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 2), worker_group("edge-cpu", 1, 1, 3),
         pods=(ready_pod("gpu-a", age_s=900), ready_pod("gpu-b", age_s=800)))
    calls = []

    def replicas_on(pods):  # runs between the backend's read and its patch: another writer changes the cluster
        if not calls:
            def other_writer(api) -> None:
                rc = api.get(RAYCLUSTERS, NS, "elo")
                rc["metadata"]["labels"]["team"] = "serving"
                rc["spec"]["workerGroupSpecs"][1]["replicas"] = 2
                api.put(RAYCLUSTERS, NS, rc)

            kube.call(other_writer)
        calls.append(dict(pods))
        return dict.fromkeys(pods, 0)

    backend = KubeRayPoolBackend(kube.api_client(), NS, GROUPS, raycluster="elo", replicas_on=replicas_on,
                                 clock=clocks.clock, wall_clock=clocks.wall)
    backend.resize("cloud", 1)

    assert len(patches(kube)) == 2  # the first, made on the stale read, was refused as a whole (422)
    rc = kube.call(lambda api: api.get(RAYCLUSTERS, NS, "elo"))
    assert rc["metadata"]["labels"]["team"] == "serving"
    assert rc["spec"]["workerGroupSpecs"][1]["replicas"] == 2
    assert (rc["spec"]["workerGroupSpecs"][0]["replicas"],
            rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"]["workersToDelete"]) == (1, ["gpu-b"])


def test_a_409_conflict_is_retried_on_a_fresh_read(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0))
    kube.call(lambda api: api.inject(api[kmock.method.PATCH][:1], kmock.KubernetesError(
        409, "Conflict", 'Operation cannot be fulfilled on rayclusters.ray.io "elo": the object has been modified')))
    backend = make_backend(kube, clocks)

    backend.resize("cloud", 1)

    assert len(patches(kube)) == 2
    assert len(kube.requests("GET", RAYCLUSTERS)) == 2
    assert cluster_group(kube, "cloud-gpu")["replicas"] == 1


def test_conflicts_that_do_not_stop_end_in_a_conflict_error(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0))
    kube.call(lambda api: api.inject(api[kmock.method.PATCH], kmock.KubernetesError(409, "Conflict", "modified")))
    backend = make_backend(kube, clocks)

    with pytest.raises(ConflictError, match=r"pool 'cloud': RayCluster 'elo' kept changing while it was resized "
                                            r"\(3 attempts\)"):
        backend.resize("cloud", 1)
    assert len(patches(kube)) == 3


# --- retries and errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_server_error_or_throttling_on_a_read_is_retried_with_backoff(kube, clocks, status):
    seed(kube, worker_group("cloud-gpu", 1), pods=(ready_pod("gpu-a"),))
    kube.call(lambda api: api.inject(api[kmock.method.GET, RAYCLUSTERS][:2],
                                     kmock.KubernetesError(status, "InternalError", "etcdserver: leader changed")))
    sleeps: list[float] = []
    backend = make_backend(kube, clocks, sleeps=sleeps)

    assert states(backend.list_nodes("cloud")) == {"gpu-a": "ready"}
    assert len(kube.requests("GET", RAYCLUSTERS)) == 3
    assert sleeps == [0.01, 0.02]  # exponential


def test_a_server_error_on_the_patch_is_retried(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0))
    kube.call(lambda api: api.inject(api[kmock.method.PATCH][:1], kmock.KubernetesError(500, "InternalError", "boom")))
    backend = make_backend(kube, clocks)

    backend.resize("cloud", 1)

    assert len(patches(kube)) == 2 and patches(kube)[0] == patches(kube)[1]
    assert cluster_group(kube, "cloud-gpu")["replicas"] == 1


def test_a_timeout_is_retried(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 1), pods=(ready_pod("gpu-a"),))
    kube.call(lambda api: api.inject(api[kmock.method.GET, PODS][:1], lambda: asyncio.sleep(0.6)))
    backend = make_backend(kube, clocks, timeout_s=0.2)

    assert states(backend.list_nodes("cloud")) == {"gpu-a": "ready"}
    assert len(kube.requests("GET", PODS)) == 2


def test_server_errors_that_last_become_a_transient_error(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 1))
    kube.call(lambda api: api.inject(api[kmock.method.GET, RAYCLUSTERS], kmock.KubernetesError(503, "Unavailable",
                                                                                               "apiserver is down")))
    with pytest.raises(TransientError, match=r"get rayclusters/elo in namespace 'serving': HTTP 503 after 3 "
                                             r"attempts: apiserver is down"):
        make_backend(kube, clocks).list_nodes("cloud")


def test_an_unreachable_api_server_is_a_transient_error(clocks):
    with kube_server() as kube:
        seed(kube, worker_group("cloud-gpu", 1))
        backend = make_backend(kube, clocks)
    with pytest.raises(TransientError, match=r"get rayclusters/elo in namespace 'serving': the Kubernetes API at "
                                             r"http://127\.0\.0\.1:\d+ is unreachable after 3 attempts"):
        backend.list_nodes("cloud")


def test_forbidden_is_a_clear_error_naming_the_rbac_rule_and_is_not_retried(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0))
    kube.call(lambda api: api.inject(api[kmock.method.PATCH], kmock.KubernetesError(
        403, "Forbidden", 'rayclusters.ray.io "elo" is forbidden: User "system:serviceaccount:serving:elo" cannot '
        'patch resource "rayclusters" in API group "ray.io" in the namespace "serving"')))
    backend = make_backend(kube, clocks)

    with pytest.raises(PermissionError) as caught:
        backend.resize("cloud", 1)

    assert isinstance(caught.value, KubernetesAccessError) and isinstance(caught.value, PermanentError)
    message = str(caught.value)
    assert message.startswith("patch rayclusters/elo in namespace 'serving': forbidden (HTTP 403: rayclusters.ray.io")
    assert ("Grant the controller's ServiceAccount a Role in namespace 'serving' with the rule apiGroups: [ray.io], "
            "resources: [rayclusters], verbs: [patch]") in message
    assert len(kube.requests("PATCH")) == 1


def test_forbidden_pod_listing_names_the_core_api_group(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 0))
    kube.call(lambda api: api.inject(api[kmock.method.GET, PODS], kmock.KubernetesError(403, "Forbidden", "no")))

    with pytest.raises(KubernetesAccessError, match=r'list pods in namespace \'serving\': forbidden .* apiGroups: '
                                                    r'\[""\], resources: \[pods\], verbs: \[list\]'):
        make_backend(kube, clocks).list_nodes("cloud")
    assert len(kube.requests("GET", PODS)) == 1


def test_unauthorized_is_a_clear_error_and_is_not_retried(kube, clocks):
    kube.call(lambda api: api.inject(api[kmock.method.GET], kmock.KubernetesError(401, "Unauthorized", "Unauthorized")))

    with pytest.raises(KubernetesAccessError, match="rejected the controller's credentials .* check its "
                                                    "ServiceAccount token or kubeconfig"):
        make_backend(kube, clocks).list_nodes("cloud")
    assert len(kube.requests()) == 1


def test_a_missing_raycluster_is_not_found_and_is_not_retried(kube, clocks):
    with pytest.raises(NotFoundError, match=r"get rayclusters/nope in namespace 'serving': RayCluster 'nope' not "
                                            r"found in namespace 'serving'"):
        make_backend(kube, clocks, raycluster="nope").resize("cloud", 1)
    assert len(kube.requests()) == 1


# --- what the backend reads ----------------------------------------------------------------------------------


def test_pods_become_nodes_with_their_states_and_times_on_the_backends_clock(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 4, workers_to_delete=["gpu-doomed"]), pods=(
        worker_pod("gpu-1", "elo", "cloud-gpu", WALL0 - 100, WALL0 - 70),  # ready after 30 s
        worker_pod("gpu-2", "elo", "cloud-gpu", WALL0 - 50, WALL0 - 40),  # ready after 10 s
        worker_pod("gpu-3", "elo", "cloud-gpu", WALL0 - 5),  # starting
        worker_pod("gpu-doomed", "elo", "cloud-gpu", WALL0 - 200, WALL0 - 180),  # named in workersToDelete
        worker_pod("gpu-gone", "elo", "cloud-gpu", WALL0 - 300, deleting_at_s=WALL0 - 1),  # being deleted
        worker_pod("edge-1", "elo", "edge-cpu", WALL0 - 100, WALL0 - 99),  # another group
        worker_pod("other-1", "other", "cloud-gpu", WALL0 - 100, WALL0 - 99),  # another cluster
    ))

    nodes = make_backend(kube, clocks).list_nodes("cloud")

    assert nodes == [
        NodeInfo("gpu-gone", "cloud", "draining", 700.0),
        NodeInfo("gpu-doomed", "cloud", "draining", 800.0, 820.0),
        NodeInfo("gpu-1", "cloud", "ready", 900.0, 930.0),
        NodeInfo("gpu-2", "cloud", "ready", 950.0, 960.0),
        NodeInfo("gpu-3", "cloud", "starting", 995.0),
        NodeInfo("cloud-gpu-pending-1", "cloud", "starting", 1000.0),  # replicas 4, three live pods
    ]
    assert kube.requests("GET", PODS)[0].params["labelSelector"] == "ray.io/cluster=elo,ray.io/group=cloud-gpu"


def test_measured_startup_is_the_average_of_the_most_recent_pods(kube, clocks):
    pods = tuple(worker_pod(f"gpu-{i}", "elo", "cloud-gpu", WALL0 - 1000 + 100 * i, WALL0 - 1000 + 100 * i + 10 * i)
                 for i in range(1, 8))  # startups 10, 20, ... 70 s
    seed(kube, worker_group("cloud-gpu", 7), pods=pods)

    assert make_backend(kube, clocks).measured_startup_s("cloud") == pytest.approx((30 + 40 + 50 + 60 + 70) / 5)


def test_a_rayservice_is_followed_to_its_active_raycluster(kube, clocks):
    seed(kube, worker_group("cloud-gpu", 1), name="elo-raycluster-a",
         pods=(ready_pod("a-1", cluster="elo-raycluster-a"),))
    seed(kube, worker_group("cloud-gpu", 0), name="elo-raycluster-b")
    kube.call(lambda api: api.put(RAYSERVICES, NS, rayservice("elo", "elo-raycluster-a")))
    backend = make_backend(kube, clocks, rayservice="elo")

    assert states(backend.list_nodes("cloud")) == {"a-1": "ready"}

    kube.call(lambda api: api.put(RAYSERVICES, NS, rayservice("elo", "elo-raycluster-b")))  # an upgrade finished
    backend.resize("cloud", 2)

    assert cluster_group(kube, "cloud-gpu", "elo-raycluster-b")["replicas"] == 2
    assert cluster_group(kube, "cloud-gpu", "elo-raycluster-a")["replicas"] == 1


# --- bad input -----------------------------------------------------------------------------------------------


def test_an_unknown_pool_is_not_found_before_any_request(kube, clocks):
    backend = make_backend(kube, clocks)
    for call in (lambda: backend.list_nodes("gpu"), lambda: backend.resize("gpu", 1),
                 lambda: backend.measured_startup_s("gpu")):
        with pytest.raises(NotFoundError, match=r"^no worker group configured for pool 'gpu'; configured pools: "
                                                r"cloud, edge$"):
            call()
    assert kube.requests() == []


def test_a_negative_node_count_is_refused_before_any_request(kube, clocks):
    with pytest.raises(ValueError, match=r"^nodes must be >= 0, got -1$"):
        make_backend(kube, clocks).resize("cloud", -1)
    assert kube.requests() == []


def test_a_group_missing_from_the_raycluster_is_not_found(kube, clocks):
    seed(kube, worker_group("edge-cpu", 1))
    with pytest.raises(NotFoundError, match=r"^RayCluster 'elo' in namespace 'serving' has no worker group "
                                            r"'cloud-gpu' \(its worker groups: 'edge-cpu'\); check the pool -> group "
                                            r"mapping \(--group\)$"):
        make_backend(kube, clocks).resize("cloud", 1)


def test_a_rayservice_without_an_active_cluster_yet_is_a_transient_error(kube, clocks):
    kube.call(lambda api: api.put(RAYSERVICES, NS, rayservice("elo", None)))
    with pytest.raises(TransientError, match=r"^RayService 'elo' in namespace 'serving' has no active RayCluster yet "
                                             r"\(status.activeServiceStatus.rayClusterName is empty\)"):
        make_backend(kube, clocks, rayservice="elo").list_nodes("cloud")


def test_a_cluster_must_be_named_exactly_once(kube):
    for names in ({}, {"raycluster": "a", "rayservice": "b"}):
        with pytest.raises(ValueError, match="name exactly one of raycluster"):
            KubeRayPoolBackend(kube.api_client(), NS, GROUPS, replicas_on=dict, **names)


def test_a_multi_host_worker_group_is_refused():
    rc = raycluster("elo", {**worker_group("cloud-gpu", 1), "numOfHosts": 2})
    with pytest.raises(PermanentError, match="numOfHosts=2; multi-host worker groups are not supported"):
        find_group(rc, "cloud-gpu")


# --- pure parts ----------------------------------------------------------------------------------------------


def test_nothing_to_change_is_an_empty_patch():
    group = WorkerGroup(0, "g", 2, 0, 5, ("p1",), has_scale_strategy=True)
    assert resize_patch("7", group, 2, ["p1"]) == []
    assert resize_patch("7", group, 1, ["p1", "p2"])[2:] == [
        {"op": "add", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1},
        {"op": "add", "path": "/spec/workerGroupSpecs/0/scaleStrategy/workersToDelete", "value": ["p1", "p2"]},
    ]


def test_the_plan_prunes_gone_pods_and_lowers_replicas_for_pods_not_created_yet():
    group = WorkerGroup(1, "g", 3, 0, 5, ("gone", "leaving"))
    movable = [NodeInfo("p1", "x", "ready", 0.0, 1.0), NodeInfo("g-pending-1", "x", "starting", 5.0),
               NodeInfo("g-pending-2", "x", "starting", 5.0)]
    plan = plan_resize(group, movable, {"p1": None, "leaving": None}, 1, {})
    assert (plan.replicas, plan.workers_to_delete, plan.remove) == (1, ("leaving",), ())


def test_the_desired_pod_count_follows_kuberay():
    assert WorkerGroup(0, "g", 0, 1, 3).desired == 1
    assert WorkerGroup(0, "g", 9, 1, 3).desired == 3
    assert WorkerGroup(0, "g", 2, 1, 3, suspended=True).desired == 0


# --- Serve replica placement ---------------------------------------------------------------------------------

SERVE_DETAILS = {"applications": {"elo": {"deployments": {
    "pool-cloud": {"replicas": [
        {"replica_id": "r1", "state": "RUNNING", "node_ip": "10.0.0.1", "node_instance_id": "gpu-a"},
        {"replica_id": "r2", "state": "STARTING", "node_ip": "10.0.0.2", "node_instance_id": None},
        {"replica_id": "r3", "state": "STOPPED", "node_ip": "10.0.0.3"},
    ]},
    "router": {"replicas": [{"replica_id": "r4", "state": "RUNNING", "node_ip": "10.0.0.9"}]},  # the head
}}}}


def test_serve_replicas_are_placed_on_pods_by_instance_id_then_by_ip():
    pods = {"gpu-a": "10.0.0.1", "gpu-b": "10.0.0.2", "gpu-c": "10.0.0.3", "gpu-d": None}
    assert count_replicas_by_pod(SERVE_DETAILS, pods) == {"gpu-a": 1, "gpu-b": 1, "gpu-c": 0, "gpu-d": 0}


def test_serve_replica_placement_is_read_from_the_dashboard_over_http(kube):
    kube.call(lambda api: api["get /api/serve/applications/"] << SERVE_DETAILS)
    placement = ServeReplicaPlacement(kube.url)
    try:
        assert placement({"gpu-a": "10.0.0.1", "gpu-c": "10.0.0.3"}) == {"gpu-a": 1, "gpu-c": 0}
    finally:
        placement.close()


def test_serve_replica_placement_that_cannot_be_read_is_transient(kube):
    kube.call(lambda api: api["get /api/serve/applications/"] << 503 << b"dashboard starting")
    with pytest.raises(TransientError, match=r"cannot read Serve replica placement from .*: HTTP 503: 'dashboard "
                                             r"starting'\); no pod is removed until it can"):
        ServeReplicaPlacement(kube.url)({"gpu-a": "10.0.0.1"})
