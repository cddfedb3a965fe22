"""Test support: a Kubernetes API server over real HTTP (kmock's emulator on a background event loop) for KubeRay.

The sync ``kubernetes`` client under test talks HTTP to it exactly as to a cluster; only the server is emulated.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kubernetes import client as k8s

T = TypeVar("T")

RAYCLUSTERS = kmock.resource("ray.io", "v1", "rayclusters")
RAYSERVICES = kmock.resource("ray.io", "v1", "rayservices")
PODS = kmock.resource("", "v1", "pods")
SERVED = (RAYCLUSTERS, RAYSERVICES, PODS)  # served by the emulator's own fast paths



def patch_not_applicable() -> kmock.KubernetesError:
    """kube-apiserver's answer to a JSON patch that does not apply, e.g. a failed ``test`` (handlers/patch.go)."""
    return kmock.KubernetesError(422, "Invalid", "the server rejected our request due to an error in our request",
                                 {"kind": ""})


def label_selector_matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based selectors: ``k=v``, ``k==v``, ``k!=v``, comma-separated."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        else:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
    return True


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesEmulator):
    """kmock's in-memory API server plus the behaviours of a real one the KubeRay backend relies on.

    - Every write bumps ``metadata.resourceVersion`` (kmock keeps none).
    - PATCH applies a JSON patch (RFC 6902) atomically; one that does not apply (a failed ``test``) is the 422
      kube-apiserver answers, and changes nothing (kmock answers 500).
      A merge patch naming a stale ``metadata.resourceVersion`` is 409.
    - LIST honours equality-based ``labelSelector`` (kmock ignores it).
    - Reads and patches are served straight from the object store: kmock matches every request against its whole
      request history, O(n) per request, too slow for a control loop's thousands of requests.
    - :meth:`inject` registers a fault (kmock's own request-matching DSL) that answers *instead of* the server:
      the stored objects do not change, as when a real server answers 403/409/5xx.
    """

    _faults: list[kmock.View] = attrs.field(factory=list, init=False)
    _version: int = attrs.field(default=0, init=False)

    def inject(self, view: kmock.View, *payload: Any) -> None:
        """Answer requests seen by ``view`` (e.g. ``api[kmock.method.PATCH][:1]``) with ``payload``."""
        self._faults.append(view)
        reaction = view
        for item in payload:
            reaction = reaction << item

    def put(self, resource: kmock.resource, namespace: str, obj: dict[str, Any]) -> None:
        """Store ``obj`` (a create or replace by a controller that is not under test), with a new resourceVersion."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", namespace)
        meta["resourceVersion"] = self._next_version()
        self.objects[resource, namespace, meta["name"]] = obj

    def get(self, resource: kmock.resource, namespace: str, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def remove(self, resource: kmock.resource, namespace: str, name: str) -> None:
        self.objects[resource, namespace, name].delete()

    def names(self, resource: kmock.resource, namespace: str) -> list[str]:
        return [name for (res, ns, name), obj in self.objects.items()
                if res == resource and ns == namespace and not obj.deleted]

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if any(request in fault for fault in self._faults):
            return await kmock.RawHandler._handle(self, request)  # the fault answers; nothing is stored
        if request.resource in SERVED and request.subresource is None:  # not e.g. Ray's /api/serve/...
            if request.action == kmock.action.FETCH:
                return aiohttp.web.json_response(self._fetch(request))
            if request.action == kmock.action.LIST:
                return aiohttp.web.json_response(self._list(request))
            if request.action == kmock.action.UPDATE:
                return aiohttp.web.json_response(self._patch(request))
        return await super()._handle(request)

    def _fetch(self, request: kmock.Request) -> dict[str, Any]:
        obj = self.get(request.resource, request.namespace, request.name)
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        return obj

    def _list(self, request: kmock.Request) -> dict[str, Any]:
        selector = request.params.get("labelSelector", "")
        items = [copy.deepcopy(obj.raw) for (res, ns, _), obj in self.objects.items()
                 if res == request.resource and (request.namespace is None or ns == request.namespace)
                 and not obj.deleted]
        items = [i for i in items if label_selector_matches((i.get("metadata") or {}).get("labels") or {}, selector)]
        return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": str(self._version)},
                "items": items}

    def _patch(self, request: kmock.Request) -> dict[str, Any]:
        current = self._fetch(request)
        rv = current["metadata"].get("resourceVersion")
        if isinstance(request.data, list):
            try:
                patched = jsonpatch.apply_patch(current, request.data)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise patch_not_applicable() from e
        elif isinstance(request.data, dict):
            wanted_rv = (request.data.get("metadata") or {}).get("resourceVersion")
            if wanted_rv is not None and wanted_rv != rv:
                raise kmock.KubernetesError(409, "Conflict", "the object has been modified; please apply your "
                                            "changes to the latest version and try again")
            patched = kmock.Object(current)
            patched.patch(request.data)
            patched = patched.raw
        else:
            raise kmock.KubernetesError(400, "BadRequest", f"unsupported patch body {request.data!r}")
        if patched == current:
            return patched  # a no-op patch does not bump the resourceVersion
        patched["metadata"]["resourceVersion"] = self._next_version()
        self.objects[request.resource, request.namespace, request.name].history.append(patched)
        return patched


class KubeServer:
    """A :class:`KubeApiEmulator` served over HTTP from a background thread's event loop.

    The test thread talks to it with the sync ``kubernetes`` client (:meth:`api_client`) and changes its state
    only through :meth:`call`, which runs on the server's loop (no data race with request handling).
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.api: KubeApiEmulator
        self.url = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-api-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError("the Kubernetes API emulator did not start") from self._error

    def _run(self) -> None:
        async def serve() -> None:
            self._stop = asyncio.Event()
            async with KubeApiEmulator() as api, kmock.Server(api) as server:
                self.api, self.url = api, str(server.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        try:
            self._loop.run_until_complete(serve())
        except BaseException as e:  # surfaced by __init__
            self._error = e
            self._ready.set()

    def call(self, fn: Callable[[KubeApiEmulator], T]) -> T:
        """Run ``fn(api)`` on the server's event loop and return its result."""

        async def run() -> T:
            return fn(self.api)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def api_client(self) -> k8s.ApiClient:
        """A client of this server only (no kubeconfig), urllib3's own retries off: the backend owns retries."""
        config = k8s.Configuration()
        config.host = self.url
        config.retries = 0
        return k8s.ApiClient(config)

    def requests(self, method: str | None = None, resource: kmock.resource | None = None) -> list[kmock.Request]:
        """Requests the server has seen so far, optionally of one HTTP method and resource."""

        def pick(api: KubeApiEmulator) -> list[kmock.Request]:
            return [r for r in api if (method is None or r.method.value == method.upper())
                    and (resource is None or r.resource == resource)]

        return self.call(pick)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@contextmanager
def kube_server() -> Iterator[KubeServer]:
    server = KubeServer()
    try:
        yield server
    finally:
        server.close()


# --- objects, as KubeRay and the kubelet would write them --------------------------------------------------------


def rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def worker_group(name: str, replicas: int, min_replicas: int = 0, max_replicas: int = 5,
                 workers_to_delete: list[str] | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"groupName": name, "replicas": replicas, "minReplicas": min_replicas,
                             "maxReplicas": max_replicas, "numOfHosts": 1, "rayStartParams": {},
                             "template": {"spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray"}]}}}
    if workers_to_delete is not None:
        group["scaleStrategy"] = {"workersToDelete": workers_to_delete}
    return group


def raycluster(name: str, *groups: dict[str, Any], namespace: str = "serving") -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1", "kind": "RayCluster",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "elo"}},
        "spec": {"enableInTreeAutoscaling": False,
                 "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
                     {"name": "ray-head", "image": "rayproject/ray"}]}}},
                 "workerGroupSpecs": list(groups)},
    }


def rayservice(name: str, active_cluster: str | None, namespace: str = "serving") -> dict[str, Any]:
    status: dict[str, Any] = {"serviceStatus": "Running" if active_cluster else ""}
    if active_cluster:
        status["activeServiceStatus"] = {"rayClusterName": active_cluster, "applicationStatuses": {}}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": name, "namespace": namespace},
            "spec": {"rayClusterConfig": {}}, "status": status}


def worker_pod(name: str, cluster: str, group: str, created_at_s: float, ready_at_s: float | None = None,
               ip: str | None = None, deleting_at_s: float | None = None,
               namespace: str = "serving") -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(created_at_s)},
                  {"type": "Ready", "status": "True" if ready_at_s is not None else "False",
                   "lastTransitionTime": rfc3339(ready_at_s if ready_at_s is not None else created_at_s)}]
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(created_at_s),
                            "labels": {"ray.io/cluster": cluster, "ray.io/group": group, "ray.io/node-type": "worker",
                                       "ray.io/is-ray-node": "yes"}}
    if deleting_at_s is not None:
        meta["deletionTimestamp"] = rfc3339(deleting_at_s)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "ray-worker", "image": "rayproject/ray"}]},
            "status": {"phase": "Running" if ready_at_s is not None else "Pending", "podIP": ip,
                       "conditions": conditions}}


class FakeKubeRay:
    """The KubeRay operator and the kubelet, as far as the backend can tell: per reconcile, pods named in
    ``workersToDelete`` are deleted, missing pods up to ``replicas`` (clamped to [min, max]) are created,
    surplus pods are deleted newest first, and pods become Ready ``startup_s[group]`` after creation.
    Times are the test's fake wall clock."""

    def __init__(self, server: KubeServer, cluster: str, wall_clock: Callable[[], float],
                 startup_s: dict[str, float], namespace: str = "serving") -> None:
        self.server, self.cluster, self.namespace = server, cluster, namespace
        self.wall_clock, self.startup_s = wall_clock, startup_s
        self.surplus_deleted: list[str] = []  # pods KubeRay itself chose to delete (none named them)
        self._seq = 0

    def reconcile(self) -> None:
        self.server.call(self._reconcile)

    def _reconcile(self, api: KubeApiEmulator) -> None:
        now = self.wall_clock()
        rc = api.get(RAYCLUSTERS, self.namespace, self.cluster)
        assert rc is not None
        for spec in rc["spec"]["workerGroupSpecs"]:
            group = spec["groupName"]
            desired = min(max(spec.get("replicas", 0), spec.get("minReplicas", 0)), spec.get("maxReplicas", 2**31))
            doomed = set((spec.get("scaleStrategy") or {}).get("workersToDelete") or ())
            pods = sorted((api.get(PODS, self.namespace, n) for n in api.names(PODS, self.namespace)),
                          key=lambda p: p["metadata"]["creationTimestamp"])
            pods = [p for p in pods if p["metadata"]["labels"]["ray.io/group"] == group]
            for pod in pods:
                if pod["metadata"]["name"] in doomed:
                    api.remove(PODS, self.namespace, pod["metadata"]["name"])
            alive = [p for p in pods if p["metadata"]["name"] not in doomed]
            for pod in alive[desired:][::-1]:  # surplus: KubeRay's random deletion, here the newest
                api.remove(PODS, self.namespace, pod["metadata"]["name"])
                self.surplus_deleted.append(pod["metadata"]["name"])
            for _ in range(desired - len(alive)):
                self._seq += 1
                name = f"{self.cluster}-{group}-worker-{self._seq:03d}"
                api.put(PODS, self.namespace, worker_pod(name, self.cluster, group, now,
                                                         ip=f"10.0.0.{self._seq}"))
            for pod in alive[:desired]:
                created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                ready_at = created.timestamp() + self.startup_s[group]
                if pod["status"]["phase"] == "Pending" and now >= ready_at:
                    api.put(PODS, self.namespace, worker_pod(pod["metadata"]["name"], self.cluster, group,
                                                             created.timestamp(), ready_at,
                                                             ip=pod["status"]["podIP"]))

    def pods(self, group: str) -> list[dict[str, Any]]:
        def pick(api: KubeApiEmulator) -> list[dict[str, Any]]:
            pods = [api.get(PODS, self.namespace, n) for n in api.names(PODS, self.namespace)]
            return [p for p in pods if p and p["metadata"]["labels"]["ray.io/group"] == group]

        return self.server.call(pick)
