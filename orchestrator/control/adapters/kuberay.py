"""Act: the KubeRay pool backend — each pool is a worker group of a RayCluster (or of a RayService's active cluster).

A pool's nodes are the worker group's pods, found by KubeRay's labels ``ray.io/cluster=<cluster>`` and
``ray.io/group=<group>``. A pod is *ready* when its ``Ready`` condition is ``True``, *starting* otherwise, and
*draining* when it is on its way out (named in ``scaleStrategy.workersToDelete``, being deleted, finished) or
kept only until the Serve replicas on it are gone. Pods KubeRay has not created yet for a raised ``replicas``
are listed as starting nodes with synthetic ids (``<group>-pending-<n>``), so the controller never asks twice.

Resizing writes only the two fields this backend owns, ``replicas`` and ``scaleStrategy.workersToDelete`` of
its own groups, in one JSON patch guarded by ``test`` operations on the ``resourceVersion`` it read and on the
group's name (what Ray's own KubeRay autoscaler does, ``ray/autoscaler/_private/kuberay/node_provider.py``):
a concurrent writer makes the API server refuse the patch (422, or 409), and the backend re-reads and
recomputes (bounded). Scale-down follows the shared drain rule
(:func:`~orchestrator.control.adapters.base.choose_scale_down`): idle pods are named in ``workersToDelete``
*and* ``replicas`` is lowered in the same patch — with ``enableInTreeAutoscaling: false`` KubeRay would
otherwise delete random pods, busy ones included. Busy pods are kept, draining, until their replicas are gone.
Names in ``workersToDelete`` whose pods are gone are pruned by the next resize (KubeRay does not clear them).

Every API call is retried on 5xx, 429, timeouts and connection errors with exponential backoff (tenacity,
bounded); 401/403/404 become clear :mod:`orchestrator.control.errors` naming the verb, resource and namespace
(and, for 403, the RBAC rule to grant). RBAC used: ``rayclusters`` get/patch, ``rayservices`` get (with a
RayService), ``pods`` list.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import tenacity
import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from orchestrator.control.adapters.base import NodeInfo, choose_scale_down
from orchestrator.control.errors import (
    CapacityUnavailableError,
    ConflictError,
    ControlError,
    NotFoundError,
    PermanentError,
    TransientError,
)

log = logging.getLogger(__name__)

RAY_API_GROUP = "ray.io"
RAY_API_VERSION = "v1"
CLUSTER_LABEL = "ray.io/cluster"  # KubeRay's utils.RayClusterLabelKey
GROUP_LABEL = "ray.io/group"  # KubeRay's utils.RayNodeGroupLabelKey
JSON_PATCH = "application/json-patch+json"

ReplicasOn = Callable[[Mapping[str, "str | None"]], Mapping[str, int]]
"""Serve replicas per pod: called with ``{pod name: pod IP or None}``, answers ``{pod name: live replicas}``."""


# Every (API group, resource, verb) this backend calls: the Helm chart's Role grants exactly these (tested on both
# sides: the control-loop test checks the calls on the wire, the chart test checks the Role).
REQUIRED_ACCESS: frozenset[tuple[str, str, str]] = frozenset({
    ("ray.io", "rayclusters", "get"),
    ("ray.io", "rayclusters", "patch"),
    ("ray.io", "rayservices", "get"),
    ("", "pods", "list"),
})


class KubernetesAccessError(PermanentError, PermissionError):
    """The Kubernetes API refused the controller (401 bad credentials, 403 missing RBAC); the message says what
    to grant. A :class:`PermissionError` too, so ``except PermissionError`` catches it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries: ``attempts`` per API request on 5xx/429/timeouts (waiting ``backoff_s``, doubled
    each time, at most ``max_backoff_s``), and ``conflict_attempts`` read-modify-write rounds on a concurrent write."""

    attempts: int = 4
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    conflict_attempts: int = 3
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.conflict_attempts < 1:
            raise ValueError(f"attempts and conflict_attempts must be >= 1, got {self.attempts}, "
                             f"{self.conflict_attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"backoff_s and max_backoff_s must be >= 0, got {self.backoff_s}, {self.max_backoff_s}")

    def retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
            retry=tenacity.retry_if_exception(is_retryable),
            sleep=self.sleep,
            reraise=True,
        )


def is_retryable(error: BaseException) -> bool:
    """5xx, 429, timeouts, refused or reset connections: the same request may succeed a moment later."""
    if isinstance(error, ApiException):
        return error.status == 429 or (error.status or 0) >= 500
    return isinstance(error, urllib3.exceptions.HTTPError)


# --- pure: the RayCluster's worker group, its pods, and what to patch ------------------------------------------


@dataclass(frozen=True)
class WorkerGroup:
    """One ``spec.workerGroupSpecs[index]`` of a RayCluster, the fields this backend reads."""

    index: int
    name: str
    replicas: int
    min_replicas: int
    max_replicas: int
    workers_to_delete: tuple[str, ...] = ()
    has_scale_strategy: bool = False
    suspended: bool = False

    @property
    def desired(self) -> int:
        """The pods KubeRay keeps: ``replicas`` clamped to [minReplicas, maxReplicas]; none while suspended."""
        if self.suspended:
            return 0
        return min(max(self.replicas, self.min_replicas), self.max_replicas)


def find_group(cluster: Mapping[str, Any], group: str) -> WorkerGroup:
    """The worker group named ``group`` in a RayCluster object. Raises NotFoundError naming the groups there."""
    meta = cluster.get("metadata") or {}
    specs = (cluster.get("spec") or {}).get("workerGroupSpecs") or []
    for index, spec in enumerate(specs):
        if spec.get("groupName") != group:
            continue
        if int(spec.get("numOfHosts") or 1) != 1:
            raise PermanentError(f"worker group {group!r} of RayCluster {meta.get('name')!r} has numOfHosts="
                                 f"{spec.get('numOfHosts')}; multi-host worker groups are not supported")
        strategy = spec.get("scaleStrategy")
        return WorkerGroup(
            index=index,
            name=group,
            replicas=int(spec.get("replicas") or 0),
            min_replicas=int(spec.get("minReplicas") or 0),
            max_replicas=int(spec.get("maxReplicas", 2**31 - 1)),
            workers_to_delete=tuple((strategy or {}).get("workersToDelete") or ()),
            has_scale_strategy=isinstance(strategy, dict),
            suspended=bool(spec.get("suspend")),
        )
    names = ", ".join(repr(s.get("groupName")) for s in specs) or "none"
    raise NotFoundError(f"RayCluster {meta.get('name')!r} in namespace {meta.get('namespace')!r} has no worker "
                        f"group {group!r} (its worker groups: {names}); check the pool -> group mapping (--group)")


@dataclass(frozen=True)
class PodView:
    """What the backend needs of one worker pod; times are wall-clock Unix seconds."""

    name: str
    created_at_s: float
    ready_at_s: float | None = None  # the Ready condition is True since then; None: not ready
    ip: str | None = None
    leaving: bool = False  # being deleted, or finished (Failed/Succeeded): no longer one of the group's nodes

    @classmethod
    def of(cls, pod: Any) -> PodView:
        """From a ``kubernetes.client.V1Pod``."""
        meta, status = pod.metadata, pod.status
        created = _unix_s(meta.creation_timestamp) or 0.0
        ready_at = None
        for condition in (status.conditions if status is not None else None) or ():
            if condition.type == "Ready" and condition.status == "True":
                ready_at = _unix_s(condition.last_transition_time) or created
        phase = status.phase if status is not None else None
        return cls(meta.name, created, ready_at, status.pod_ip if status is not None else None,
                   leaving=meta.deletion_timestamp is not None or phase in ("Failed", "Succeeded"))


def _unix_s(value: datetime | str | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


def pending_node_id(group: str, n: int) -> str:
    """Synthetic id of the n-th (1-based) pod KubeRay has been asked for and has not created yet."""
    return f"{group}-pending-{n}"


def group_nodes(pool: str, group: WorkerGroup, pods: Sequence[PodView], *, pending_since_s: float,
                to_clock: Callable[[float], float], draining: Collection[str] = ()) -> tuple[list[NodeInfo],
                                                                                              list[NodeInfo]]:
    """``(nodes, movable)``: every node of the group as NodeInfo, and the ones a resize may keep or remove.

    Pods named in ``workersToDelete`` or leaving are *draining* and not movable (KubeRay is deleting them);
    pods in ``draining`` (busy, chosen to go) are draining and movable; the others are ready or starting.
    Missing pods up to :attr:`WorkerGroup.desired` are synthetic starting nodes asked for at ``pending_since_s``.
    ``to_clock`` converts wall-clock seconds to the backend's clock.
    """
    deleting = set(group.workers_to_delete)
    nodes: list[NodeInfo] = []
    movable: list[NodeInfo] = []
    for pod in sorted(pods, key=lambda p: (p.created_at_s, p.name)):
        started = to_clock(pod.created_at_s)
        ready = None if pod.ready_at_s is None else max(started, to_clock(pod.ready_at_s))
        if pod.leaving or pod.name in deleting:
            nodes.append(NodeInfo(pod.name, pool, "draining", started, ready))
            continue
        state = "draining" if pod.name in draining else ("ready" if ready is not None else "starting")
        node = NodeInfo(pod.name, pool, state, started, ready)
        nodes.append(node)
        movable.append(node)
    for n in range(1, group.desired - len(movable) + 1):
        node = NodeInfo(pending_node_id(group.name, n), pool, "starting", pending_since_s)
        nodes.append(node)
        movable.append(node)
    return nodes, movable


@dataclass(frozen=True)
class GroupResize:
    """What one resize writes: ``replicas`` and ``workers_to_delete`` of the group, and why."""

    replicas: int
    workers_to_delete: tuple[str, ...]
    remove: tuple[str, ...] = ()  # pods named for deletion by this resize
    drain: tuple[str, ...] = ()  # busy pods kept, draining, until their replicas are gone
    capped_at: int | None = None  # the target was above maxReplicas: the group is capped here


def plan_resize(group: WorkerGroup, movable: Sequence[NodeInfo], present: Collection[str], target_nodes: int,
                replicas_on: Mapping[str, int]) -> GroupResize:
    """The group's new ``replicas`` and ``workersToDelete`` for ``target_nodes`` nodes (clamped to the group's
    [minReplicas, maxReplicas]).

    ``movable`` are the nodes from :func:`group_nodes`; ``present`` the names of every pod that exists.
    Scale-down takes :func:`choose_scale_down`'s choice: idle chosen pods are named in ``workersToDelete`` and
    leave ``replicas`` with them; busy ones stay counted (draining); synthetic pending nodes go by lowering
    ``replicas`` alone. Names of pods already gone are pruned from ``workersToDelete``.
    """
    if target_nodes < 0:
        raise ValueError(f"nodes must be >= 0, got {target_nodes}")
    wanted = min(max(target_nodes, group.min_replicas), group.max_replicas)
    choice = choose_scale_down(movable, wanted, replicas_on)
    remove_pods = tuple(name for name in choice.remove if name in present)
    replicas = max(wanted, len(movable) - len(choice.remove))
    still_deleting = tuple(name for name in group.workers_to_delete if name in present)
    workers_to_delete = still_deleting + tuple(name for name in remove_pods if name not in still_deleting)
    capped = group.max_replicas if target_nodes > group.max_replicas else None
    return GroupResize(replicas, workers_to_delete, remove_pods, choice.drain, capped)


def resize_patch(resource_version: str | None, group: WorkerGroup, replicas: int,
                 workers_to_delete: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON patch (RFC 6902) moving ``group`` to ``replicas`` / ``workers_to_delete``; [] when nothing changes.

    It opens with ``test`` operations on the resourceVersion that was read and on the group's name at its index,
    so it applies only to the object the decision was made on; it touches no other field.
    """
    base = f"/spec/workerGroupSpecs/{group.index}"
    ops: list[dict[str, Any]] = []
    if replicas != group.replicas:
        ops.append({"op": "add", "path": f"{base}/replicas", "value": replicas})
    if tuple(workers_to_delete) != group.workers_to_delete:
        if group.has_scale_strategy:
            ops.append({"op": "add", "path": f"{base}/scaleStrategy/workersToDelete", "value": list(workers_to_delete)})
        else:
            ops.append({"op": "add", "path": f"{base}/scaleStrategy",
                        "value": {"workersToDelete": list(workers_to_delete)}})
    if not ops:
        return []
    guards = [{"op": "test", "path": f"{base}/groupName", "value": group.name}]
    if resource_version is not None:
        guards.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})
    return guards + ops


# --- the adapter ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Op:
    """One API request, described for errors: verb, resource (plural, API group), object name, namespace."""

    verb: str
    plural: str
    name: str | None
    namespace: str
    api_group: str = RAY_API_GROUP

    def __str__(self) -> str:
        target = f"{self.plural}/{self.name}" if self.name else self.plural
        return f"{self.verb} {target} in namespace {self.namespace!r}"


class _StaleWrite(Exception):
    """The guarded patch was refused because the object changed since it was read (409, or 422: a test failed)."""


@dataclass
class _Observed:
    cluster: str
    resource_version: str | None
    group: WorkerGroup
    pods: list[PodView]


class KubeRayPoolBackend:
    """:class:`~orchestrator.control.adapters.base.PoolBackend` resizing KubeRay worker groups.

    ``groups`` maps each pool to its worker group (e.g. ``{"cloud": "cloud-gpu", "edge": "edge-cpu"}``). Exactly
    one of ``raycluster`` (a RayCluster's name) or ``rayservice`` (a RayService's name: its active RayCluster,
    ``status.activeServiceStatus.rayClusterName``, re-read on every call so an upgrade is followed) names the
    cluster. ``replicas_on`` counts the Serve replicas on pods (production:
    :class:`~orchestrator.control.adapters.serve_placement.ServeReplicaPlacement`). ``clock`` stamps nodes
    (pod times are converted from ``wall_clock``); ``retry`` bounds the retries; ``request_timeout_s`` bounds
    each request.
    """

    def __init__(self, api_client: k8s.ApiClient, namespace: str, groups: Mapping[str, str], *,
                 replicas_on: ReplicasOn, raycluster: str | None = None, rayservice: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 retry: RetryPolicy | None = None, request_timeout_s: float = 10.0,
                 startup_samples: int = 5) -> None:
        if (raycluster is None) == (rayservice is None):
            raise ValueError("name exactly one of raycluster (a RayCluster) or rayservice (a RayService), "
                             f"got raycluster={raycluster!r}, rayservice={rayservice!r}")
        if not groups:
            raise ValueError("groups must map at least one pool to a worker group")
        if request_timeout_s <= 0 or startup_samples < 1:
            raise ValueError(f"request_timeout_s must be > 0 and startup_samples >= 1, got {request_timeout_s}, "
                             f"{startup_samples}")
        self.namespace = namespace
        self.groups = dict(groups)
        self.raycluster, self.rayservice = raycluster, rayservice
        self._custom = k8s.CustomObjectsApi(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._replicas_on = replicas_on
        self._clock, self._wall_clock = clock, wall_clock
        self._retry = retry or RetryPolicy()
        self._timeout_s = request_timeout_s
        self._startup_samples = startup_samples
        self._lock = threading.RLock()
        self._draining: dict[str, set[str]] = {pool: set() for pool in self.groups}
        self._pending_since: dict[str, float] = {}
        # pool -> {pod name: (created at, seconds from creation to Ready)}
        self._startups: dict[str, dict[str, tuple[float, float]]] = {pool: {} for pool in self.groups}
        self._observed: set[str] = set()

    # -- PoolBackend ---------------------------------------------------------------------------------------

    def list_nodes(self, pool: str) -> list[NodeInfo]:
        with self._lock:
            nodes, _ = self._nodes(pool, self._observe(pool))
            return nodes

    def resize(self, pool: str, nodes: int) -> None:
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        with self._lock:
            self._group_of(pool)
            for _ in range(self._retry.conflict_attempts):
                seen = self._observe(pool)
                plan = self._plan(pool, seen, nodes)
                ops = resize_patch(seen.resource_version, seen.group, plan.replicas, plan.workers_to_delete)
                try:
                    if ops:
                        self._patch_cluster(seen.cluster, ops)
                except _StaleWrite as e:
                    log.info("pool %s: RayCluster %s changed while resizing (%s); re-reading", pool, seen.cluster, e)
                    continue
                self._draining[pool] = set(plan.drain)
                if ops:
                    self._log_change(pool, seen, plan)
                    if plan.replicas > seen.group.replicas:
                        self._pending_since.setdefault(pool, self._clock())
                break
            else:
                raise ConflictError(f"pool {pool!r}: RayCluster {seen.cluster!r} kept changing while it was resized "
                                    f"({self._retry.conflict_attempts} attempts); retrying on the next call")
            if plan.capped_at is not None:
                raise CapacityUnavailableError(
                    f"pool {pool!r}: worker group {seen.group.name!r} of RayCluster {seen.cluster!r} is capped at "
                    f"maxReplicas={plan.capped_at}; {nodes} node(s) asked for, replicas set to {plan.replicas}")

    def measured_startup_s(self, pool: str) -> float | None:
        """Average pod creation -> Ready of the group's most recent pods (seen by list_nodes/resize)."""
        with self._lock:
            self._group_of(pool)
            if pool not in self._observed:
                self._nodes(pool, self._observe(pool))
            samples = self._startups[pool].values()
            return sum(s for _, s in samples) / len(samples) if samples else None

    # -- observe -------------------------------------------------------------------------------------------

    def cluster_name(self) -> str:
        """The RayCluster the pools live in: the configured one, or the RayService's active cluster."""
        if self.raycluster is not None:
            return self.raycluster
        assert self.rayservice is not None
        op = _Op("get", "rayservices", self.rayservice, self.namespace)
        service = self._call(op, lambda: self._custom.get_namespaced_custom_object(
            RAY_API_GROUP, RAY_API_VERSION, self.namespace, "rayservices", self.rayservice,
            _request_timeout=self._timeout_s))
        active = ((service.get("status") or {}).get("activeServiceStatus") or {}).get("rayClusterName")
        if not active:
            raise TransientError(f"RayService {self.rayservice!r} in namespace {self.namespace!r} has no active "
                                 "RayCluster yet (status.activeServiceStatus.rayClusterName is empty); it is still "
                                 "starting, or failed to start (kubectl describe rayservice)", delay_s=10.0)
        return active

    def _group_of(self, pool: str) -> str:
        try:
            return self.groups[pool]
        except KeyError:
            raise NotFoundError(f"no worker group configured for pool {pool!r}; configured pools: "
                                f"{', '.join(sorted(self.groups))}") from None

    def _observe(self, pool: str) -> _Observed:
        group_name = self._group_of(pool)
        cluster = self.cluster_name()
        op = _Op("get", "rayclusters", cluster, self.namespace)
        obj = self._call(op, lambda: self._custom.get_namespaced_custom_object(
            RAY_API_GROUP, RAY_API_VERSION, self.namespace, "rayclusters", cluster, _request_timeout=self._timeout_s))
        group = find_group(obj, group_name)
        selector = f"{CLUSTER_LABEL}={cluster},{GROUP_LABEL}={group_name}"
        op = _Op("list", "pods", None, self.namespace, api_group="")
        pods = self._call(op, lambda: self._core.list_namespaced_pod(
            self.namespace, label_selector=selector, _request_timeout=self._timeout_s))
        self._observed.add(pool)
        return _Observed(cluster, (obj.get("metadata") or {}).get("resourceVersion"), group,
                         [PodView.of(p) for p in pods.items or ()])

    def _nodes(self, pool: str, seen: _Observed) -> tuple[list[NodeInfo], list[NodeInfo]]:
        now, wall = self._clock(), self._wall_clock()
        self._record_startups(pool, seen.pods)
        live = sum(1 for p in seen.pods if not p.leaving and p.name not in seen.group.workers_to_delete)
        if seen.group.desired > live:
            pending_since = self._pending_since.setdefault(pool, now)
        else:
            pending_since = self._pending_since.pop(pool, now)
        present = {p.name for p in seen.pods}
        self._draining[pool] &= present
        return group_nodes(pool, seen.group, seen.pods, pending_since_s=pending_since,
                           to_clock=lambda wall_s: now - (wall - wall_s), draining=self._draining[pool])

    def _record_startups(self, pool: str, pods: Sequence[PodView]) -> None:
        samples = self._startups[pool]
        for pod in pods:
            if pod.ready_at_s is not None:
                samples[pod.name] = (pod.created_at_s, max(0.0, pod.ready_at_s - pod.created_at_s))
        for name in sorted(samples, key=lambda n: samples[n][0])[:-self._startup_samples]:
            del samples[name]

    # -- act -----------------------------------------------------------------------------------------------

    def _plan(self, pool: str, seen: _Observed, nodes: int) -> GroupResize:
        _, movable = self._nodes(pool, seen)
        present = {p.name: p.ip for p in seen.pods}
        wanted = min(max(nodes, seen.group.min_replicas), seen.group.max_replicas)
        if len(movable) <= wanted:
            return plan_resize(seen.group, movable, present, nodes, {})
        candidates = {n.node_id: present[n.node_id] for n in movable if n.node_id in present}
        counts = dict(self._count_replicas(pool, candidates))
        plan = plan_resize(seen.group, movable, present, nodes, counts)
        if plan.remove:  # re-check right before removing: a replica may have landed since the first count
            recheck = self._count_replicas(pool, {name: present[name] for name in plan.remove})
            if any(recheck.get(name, 0) for name in plan.remove):
                counts.update(recheck)
                plan = plan_resize(seen.group, movable, present, nodes, counts)
        return plan

    def _count_replicas(self, pool: str, pods: Mapping[str, str | None]) -> Mapping[str, int]:
        if not pods:
            return {}
        try:
            return self._replicas_on(pods)
        except ControlError:
            raise
        except Exception as e:  # an injected reader failing in any way: never remove what may be busy
            raise TransientError(f"pool {pool!r}: cannot tell which pods host Serve replicas, so none is removed "
                                 f"({type(e).__name__}: {e})") from e

    def _patch_cluster(self, cluster: str, ops: list[dict[str, Any]]) -> None:
        op = _Op("patch", "rayclusters", cluster, self.namespace)
        self._call(op, lambda: self._custom.patch_namespaced_custom_object(
            RAY_API_GROUP, RAY_API_VERSION, self.namespace, "rayclusters", cluster, ops,
            _content_type=JSON_PATCH, _request_timeout=self._timeout_s), guarded=True)

    def _log_change(self, pool: str, seen: _Observed, plan: GroupResize) -> None:
        g = seen.group
        log.info("pool %s: worker group %s/%s replicas %d -> %d%s%s", pool, seen.cluster, g.name, g.replicas,
                 plan.replicas, f", deleting idle {', '.join(plan.remove)}" if plan.remove else "",
                 f", draining busy {', '.join(plan.drain)}" if plan.drain else "")

    # -- HTTP ----------------------------------------------------------------------------------------------

    def _call(self, op: _Op, fn: Callable[[], Any], *, guarded: bool = False) -> Any:
        """``fn()`` with retries on transient failures; every failure leaves as a project error (or _StaleWrite)."""
        try:
            return self._retry.retrying()(fn)
        except ApiException as e:
            if guarded and (e.status == 409 or _is_patch_not_applicable(e)):
                raise _StaleWrite(f"HTTP {e.status}: {_server_message(e)}") from e
            raise self._translate(op, e) from e
        except urllib3.exceptions.HTTPError as e:
            raise TransientError(f"{op}: the Kubernetes API at {self._custom.api_client.configuration.host} is "
                                 f"unreachable after {self._retry.attempts} attempts ({type(e).__name__}: {e})") from e

    def _translate(self, op: _Op, e: ApiException) -> ControlError:
        status, message = e.status, _server_message(e)
        if status == 401:
            return KubernetesAccessError(f"{op}: the Kubernetes API rejected the controller's credentials (HTTP 401: "
                                         f"{message}); check its ServiceAccount token or kubeconfig")
        if status == 403:
            group = op.api_group or '""'
            return KubernetesAccessError(
                f"{op}: forbidden (HTTP 403: {message}). Grant the controller's ServiceAccount a Role in namespace "
                f"{op.namespace!r} with the rule apiGroups: [{group}], resources: [{op.plural}], verbs: [{op.verb}] "
                "(the Helm chart's controller Role has it)")
        if status == 404:
            what = {"rayclusters": "RayCluster", "rayservices": "RayService"}.get(op.plural, op.plural)
            return NotFoundError(f"{op}: {what} {op.name!r} not found in namespace {op.namespace!r} (HTTP 404: "
                                 f"{message}); check the name and --namespace, and that KubeRay's CRDs are installed")
        if status == 429 or (status or 0) >= 500:
            return TransientError(f"{op}: HTTP {status} after {self._retry.attempts} attempts: {message}",
                                  _retry_after_s(e, default=5.0))
        return PermanentError(f"{op}: HTTP {status}: {message}")


def _status_body(e: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(e.body) if e.body else None
    except (TypeError, ValueError):
        body = None
    return body if isinstance(body, dict) else {}


def _server_message(e: ApiException) -> str:
    """The ``message`` of the API server's Status body, else the HTTP reason."""
    return str(_status_body(e).get("message") or e.reason or "no message")


def _is_patch_not_applicable(e: ApiException) -> bool:
    """A 422 saying the JSON patch does not apply to the object as it is now: a ``test`` operation failed (or a
    path it names is gone). kube-apiserver answers it with a generic message and no causes
    (``NewGenericServerResponse(422, ...)`` in ``handlers/patch.go``); a schema violation lists its causes."""
    return e.status == 422 and not (_status_body(e).get("details") or {}).get("causes")


def _retry_after_s(e: ApiException, default: float) -> float:
    try:
        return max(0.0, float((e.headers or {}).get("Retry-After", default)))
    except (TypeError, ValueError):
        return default


__all__ = [
    "CLUSTER_LABEL",
    "GROUP_LABEL",
    "GroupResize",
    "KubeRayPoolBackend",
    "KubernetesAccessError",
    "PodView",
    "ReplicasOn",
    "RetryPolicy",
    "WorkerGroup",
    "find_group",
    "group_nodes",
    "is_retryable",
    "pending_node_id",
    "plan_resize",
    "resize_patch",
]
