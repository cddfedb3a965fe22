"""Test support: the Ray head as the KubeRay controller sees it over HTTP, simulated.

Two real HTTP servers, as ``elo controller`` reaches them in a cluster:

- the Ray dashboard's Serve REST API (``dashboard_url``): ``GET /api/serve/applications/`` (Ray 2.60's
  ``ServeInstanceDetails``) and ``POST /api/v1/applications/{app}/deployments/{deployment}/scale``
  (``ray/dashboard/modules/serve/serve_head.py``);
- the router's control endpoints (``router_url``): ``GET /elo/pools`` (``RouterStats``) and ``PUT /elo/routing``
  (a ``RoutingPlan``), as ``deployments/router.py`` serves them.

Their answers come from :class:`SimulatedServe` (Serve's controller starting, placing and stopping the replicas of
the ``elo`` application on the Ray nodes, which are the worker pods of the Kubernetes API emulator) and
:class:`SimulatedRouter` (some concurrent requests spread over the pools by the router's own routing function).
The test advances both between controller ticks, on its fake clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp.web
from pydantic import ValidationError

from deployments.config import AppConfig
from deployments.contract import RoutingPlan, fill_order, router_stats, with_plan
from deployments.routing import Outcome, PoolView, RequestFeatures, route
from deployments.window import PoolWindow

APP_NAME = "elo"
ROUTER_DEPLOYMENT = "router"
HEAD_INSTANCE, HEAD_IP = "elo-head-x7k2p", "10.0.255.1"  # the head pod: hosts the router, never a pool replica
# Replica states the router counts as starting (deployments/router.py _STARTING_STATES).
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")


def ray_node_id(pod: str) -> str:
    """A Ray NodeID (28 bytes, hex) for the Ray node of a pod."""
    return hashlib.sha224(pod.encode()).hexdigest()


def deployment_of(pool: str) -> str:
    return f"pool-{pool}"  # deployments.app.pool_deployment_name


@dataclass
class Replica:
    replica_id: str
    deployment: str
    state: str  # a ReplicaState: STARTING, RUNNING, STOPPING
    started_at_s: float  # wall clock (Serve's start_time_s)
    pod: str | None = None  # the Ray node it runs on; None while waiting for a node with room
    node_ip: str | None = None
    since_s: float = 0.0  # wall clock of its last change (placed, running, stopping)
    seq: int = 0


class SimulatedServe:
    """Ray Serve's controller for the ``elo`` application, as far as the controller can tell over its REST API.

    The application is deployed as ``deployments.app.build_app`` deploys ``config``: a router on the head and one
    deployment per pool, started with ``max(1, replicas)`` replicas (Serve cannot deploy zero), external scaling
    enabled. Per :meth:`reconcile`, for each pool deployment:

    - replicas whose node is gone are *lost* (:attr:`lost`): what draining must prevent;
    - a STOPPING replica is gone ``stop_s`` after its stop (graceful shutdown: it still holds its node until then);
      a placed STARTING replica is RUNNING ``replica_startup_s[pool]`` after placement;
    - above the target, replicas stop in Ray 2.60's order (``DeploymentScheduler._get_replicas_to_stop``): not
      RUNNING first, then those on nodes with the fewest replicas, newest first; below it, new replicas start;
    - a replica waiting for a node is placed on the *newest* ready pod of its pool's worker group with room
      (``replicas_per_pod``), so the busy pods are not simply the oldest ones.

    A pod is a Ray node from its Ready condition until it is deleted. ``pods(group)`` lists the group's pod
    objects (e.g. ``FakeKubeRay.pods``); it is read outside the lock (it runs on the emulator's loop).
    """

    def __init__(self, pods: Callable[[str], list[dict[str, Any]]], groups: Mapping[str, str], config: AppConfig, *,
                 clock: Callable[[], float], wall_clock: Callable[[], float], replica_startup_s: Mapping[str, float],
                 stop_s: float = 10.0, replicas_per_pod: int = 1) -> None:
        self._pods, self.groups, self.config = pods, dict(groups), config
        self.clock, self.wall_clock = clock, wall_clock
        self.replica_startup_s, self.stop_s, self.replicas_per_pod = dict(replica_startup_s), stop_s, replicas_per_pod
        self._lock = threading.Lock()
        self._seq = 0
        self.deployed_at_s = wall_clock()
        self.targets: dict[str, int] = {ROUTER_DEPLOYMENT: 1}
        self.targets.update({deployment_of(pool): max(1, cfg.replicas) for pool, cfg in config.pools.items()})
        self.replicas: list[Replica] = [self._new(ROUTER_DEPLOYMENT, "RUNNING", HEAD_INSTANCE, HEAD_IP)]
        self.scales: list[tuple[float, str, int]] = []  # (controller clock, deployment, target): the POSTs seen
        self.lost: list[str] = []

    # -- the simulated cluster ----------------------------------------------------------------------------------

    def run_on(self, pool: str, pod: str, ip: str | None) -> None:
        """A RUNNING replica of ``pool`` on ``pod`` (deployed before the test starts)."""
        with self._lock:
            self.replicas.append(self._new(deployment_of(pool), "RUNNING", pod, ip))

    def reconcile(self) -> None:
        nodes = {pool: self._ray_nodes(group) for pool, group in self.groups.items()}
        now = self.wall_clock()
        with self._lock:
            alive = {name for pods in nodes.values() for name in pods} | {HEAD_INSTANCE}
            for r in list(self.replicas):
                pool = self._pool(r)
                if r.pod is not None and r.pod not in alive:
                    self.lost.append(f"{r.deployment} replica {r.replica_id} ({r.state}) on {r.pod}")
                    self.replicas.remove(r)
                elif r.state == "STOPPING" and now - r.since_s >= self.stop_s:
                    self.replicas.remove(r)
                elif r.state == "STARTING" and r.pod is not None and pool is not None \
                        and now - r.since_s >= self.replica_startup_s[pool]:
                    r.state, r.since_s = "RUNNING", now
            for pool in self.groups:
                self._scale(deployment_of(pool), now)
                self._place(deployment_of(pool), nodes[pool], now)

    def _ray_nodes(self, group: str) -> dict[str, tuple[str, str | None]]:
        """``{pod: (creationTimestamp, IP)}`` of the group's pods that are Ray nodes (Ready, not being deleted)."""
        nodes = {}
        for pod in self._pods(group):
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or ())
            if ready and not pod["metadata"].get("deletionTimestamp"):
                nodes[pod["metadata"]["name"]] = (pod["metadata"]["creationTimestamp"], pod["status"].get("podIP"))
        return nodes

    def _scale(self, deployment: str, now: float) -> None:
        live = [r for r in self.replicas if r.deployment == deployment and r.state != "STOPPING"]
        excess = len(live) - self.targets[deployment]
        if excess > 0:
            on_node: dict[str | None, int] = {}
            for r in self.replicas:
                if r.state == "RUNNING":
                    on_node[r.pod] = on_node.get(r.pod, 0) + 1
            order = sorted(live, key=lambda r: (r.state == "RUNNING", on_node.get(r.pod, 0) if r.state == "RUNNING"
                                                else 0, -r.seq))
            for r in order[:excess]:
                if r.pod is None:
                    self.replicas.remove(r)  # never started: nothing to shut down
                else:
                    r.state, r.since_s = "STOPPING", now
        for _ in range(-excess):
            self.replicas.append(self._new(deployment, "STARTING"))

    def _place(self, deployment: str, nodes: Mapping[str, tuple[str, str | None]], now: float) -> None:
        for r in [r for r in self.replicas if r.deployment == deployment and r.pod is None]:
            held = {name: sum(1 for o in self.replicas if o.pod == name) for name in nodes}
            room = [name for name in nodes if held[name] < self.replicas_per_pod]
            if not room:
                return
            pod = max(room, key=lambda name: (nodes[name][0], name))  # the newest ready pod with room
            r.pod, r.node_ip, r.since_s = pod, nodes[pod][1], now

    def _new(self, deployment: str, state: str, pod: str | None = None, ip: str | None = None) -> Replica:
        self._seq += 1
        now = self.wall_clock()
        return Replica(f"{self._seq:04d}{hashlib.sha1(deployment.encode()).hexdigest()[:4]}", deployment, state,
                       now, pod, ip, now, self._seq)

    def _pool(self, r: Replica) -> str | None:
        return next((pool for pool in self.groups if deployment_of(pool) == r.deployment), None)

    # -- what the test reads ------------------------------------------------------------------------------------

    def target(self, pool: str) -> int:
        with self._lock:
            return self.targets[deployment_of(pool)]

    def states(self, pool: str) -> dict[str, int]:
        """Replica states of ``pool``'s deployment (``serve.status()``'s ``replica_states``)."""
        with self._lock:
            states: dict[str, int] = {}
            for r in self.replicas:
                if r.deployment == deployment_of(pool):
                    states[r.state] = states.get(r.state, 0) + 1
            return states

    def replicas_on(self, pod: str) -> int:
        """Replicas (of any deployment, in any state) on ``pod``."""
        with self._lock:
            return sum(1 for r in self.replicas if r.pod == pod)

    # -- the REST API -------------------------------------------------------------------------------------------

    def details(self) -> dict[str, Any]:
        """``GET /api/serve/applications/``: ``ServeInstanceDetails`` (``ray/serve/schema.py``, Ray 2.60)."""
        with self._lock:
            deployments = {name: self._deployment_details(name, target) for name, target in self.targets.items()}
        head = {"node_id": ray_node_id(HEAD_INSTANCE), "node_ip": HEAD_IP, "node_instance_id": HEAD_INSTANCE}
        return {
            "controller_info": {**head, "actor_id": "c0" * 16, "actor_name": "SERVE_CONTROLLER_ACTOR",
                                "worker_id": "c1" * 28, "log_file_path": "/serve/controller_1.log"},
            "proxy_location": "EveryNode",
            "http_options": {"host": "0.0.0.0", "port": 8000},
            "grpc_options": {"port": 9000, "grpc_servicer_functions": []},
            "proxies": {},
            "applications": {APP_NAME: {
                "name": APP_NAME,
                "route_prefix": "/",
                "docs_path": None,
                "status": "RUNNING",
                "message": "",
                "last_deployed_time_s": self.deployed_at_s,
                "deployed_app_config": {"name": APP_NAME, "route_prefix": "/",
                                        "import_path": "deployments.app:app_builder",
                                        "args": {"config": self.config.model_dump(mode="json")},
                                        "external_scaler_enabled": True},
                "source": "declarative",
                "deployments": deployments,
                "external_scaler_enabled": True,
            }},
            "target_capacity": None,
        }

    def _deployment_details(self, name: str, target: int) -> dict[str, Any]:
        replicas = [r for r in self.replicas if r.deployment == name]
        live = sum(1 for r in replicas if r.state != "STOPPING")
        running = sum(1 for r in replicas if r.state == "RUNNING")
        status = ("HEALTHY" if live == running == target == len(replicas)
                  else "UPSCALING" if running < target else "DOWNSCALING")
        return {
            "name": name,
            "status": status,
            "status_trigger": "CONFIG_UPDATE_COMPLETED",
            "message": "",
            "deployment_config": {"name": name, "num_replicas": target},
            "target_num_replicas": target,
            "required_resources": {"CPU": 0},
            "replicas": [self._replica_details(r) for r in replicas],
            "recent_dead_replicas": [],
        }

    def _replica_details(self, r: Replica) -> dict[str, Any]:
        """``ReplicaDetails``: its node by ``node_id``, ``node_ip`` and ``node_instance_id`` (the pod's name, as
        KubeRay sets ``RAY_CLOUD_INSTANCE_ID``); all three None while it waits for a node."""
        actor = hashlib.sha1(r.replica_id.encode()).hexdigest()[:32]
        return {
            "node_id": ray_node_id(r.pod) if r.pod else None,
            "node_ip": r.node_ip,
            "node_instance_id": r.pod,
            "actor_id": actor,
            "actor_name": f"SERVE_REPLICA::{APP_NAME}#{r.deployment}#{r.replica_id}",
            "worker_id": None if r.pod is None else hashlib.sha224(actor.encode()).hexdigest(),
            "log_file_path": None if r.pod is None else f"/serve/replica_{APP_NAME}_{r.deployment}_{r.replica_id}.log",
            "replica_id": r.replica_id,
            "state": r.state,
            "pid": None if r.pod is None else 1000 + r.seq,
            "start_time_s": r.started_at_s,
        }

    def scale(self, app: str, deployment: str, body: Any) -> tuple[int, dict[str, Any]]:
        """``POST .../scale``: the answers of serve_head.py's ``scale_deployment``."""
        target = body.get("target_num_replicas") if isinstance(body, dict) else None
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            return 400, {"error": f"Invalid request body: {body!r}"}
        with self._lock:
            if app != APP_NAME or deployment not in self.targets:
                return 404, {"error": "Application or Deployment not found"}
            self.targets[deployment] = target
            self.scales.append((self.clock(), deployment, target))
        return 200, {"message": "Scaling request received. Deployment will get scaled asynchronously."}


class SimulatedRouter:
    """The router's control endpoints, answered from a number of concurrent requests (:meth:`load`).

    Each :meth:`pools` spreads the concurrent requests over the pools one by one with the router's own ``route``
    (in the fill order of the plan in force, the controller's ``PUT /elo/routing``, else the configured order, with
    the plan's admission applied), given Serve's replica states as the router's readiness poll reads them: routed
    requests are in flight (running up to the pool's slots, queued beyond), requests held for a pool with replicas
    on their way are waiting, the rest refused. The arrival rate is split like the routed requests (the router
    counts an arrival once routed), a refusal counts against the first pool of the order. The answer is the
    router's own :class:`~deployments.contract.RouterStats`, made by its one producer. No latency samples: the
    policy sizes on load.
    """

    TOKENS_PER_S = 20.0  # per running request

    def __init__(self, serve: SimulatedServe, config: AppConfig, *, clock: Callable[[], float]) -> None:
        self.serve, self.config, self.clock = serve, config, clock
        self.concurrent, self.arrival_rps = 0, 0.0
        self.plan: RoutingPlan | None = None
        self.puts: list[tuple[float, RoutingPlan]] = []  # (controller clock, the plan put)
        self._lock = threading.Lock()

    def load(self, concurrent: int, arrival_rps: float) -> None:
        with self._lock:
            self.concurrent, self.arrival_rps = concurrent, arrival_rps

    def pools(self) -> dict[str, Any]:
        """``GET /elo/pools``: the router's ``RouterStats`` as JSON."""
        readiness = {pool: self.serve.states(pool) for pool in self.config.pools}
        with self._lock:
            concurrent, arrival_rps, plan = self.concurrent, self.arrival_rps, self.plan
        ready = {p: s.get("RUNNING", 0) for p, s in readiness.items()}
        starting = {p: sum(s.get(state, 0) for state in STARTING_STATES) for p, s in readiness.items()}
        in_flight, waiting = dict.fromkeys(self.config.pools, 0), dict.fromkeys(self.config.pools, 0)
        order = fill_order(plan, self.config).for_class(None)
        request = RequestFeatures(prompt_tokens=256, max_tokens=256)
        refused = 0

        def views() -> dict[str, PoolView]:
            return with_plan({name: PoolView(name, ready[name], in_flight[name], cfg.max_ongoing_requests,
                                             cfg.max_queued_requests, cfg.eligibility, starting[name],
                                             waiting[name], self.config.router.max_waiting_at_zero)
                              for name, cfg in self.config.pools.items()}, plan)

        for _ in range(concurrent):
            decision = route(request, views(), order)
            if decision.outcome is Outcome.ROUTE:
                in_flight[decision.pool] += 1
            elif decision.outcome is Outcome.WAIT:
                waiting[decision.pool] += 1
            else:
                refused += 1
        per_request_rps = arrival_rps / concurrent if concurrent else 0.0
        window_s = self.config.router.metrics_window_s
        now = self.clock()
        final = views()
        windows = {}
        for name, v in final.items():  # the window's events, spread over the last window_s seconds
            w = PoolWindow(window_s=window_s)
            running = min(v.in_flight, v.slots)
            events = [("arrived", round(v.in_flight * per_request_rps * window_s))]
            if name == order[0]:
                events.append(("rejected", round(refused * per_request_rps * window_s)))
            for kind, count in events:
                for i in range(count):
                    getattr(w, kind)(now - window_s * (i + 0.5) / count)
            if running:
                w.tokens.append((now, round(running * self.TOKENS_PER_S * window_s)))
            windows[name] = w
        return router_stats(final, windows, now, plan).model_dump(mode="json")

    def set_routing(self, body: Any) -> tuple[int, dict[str, Any]]:
        """``PUT /elo/routing``: the controller's routing plan, validated as the router does (400 otherwise)."""
        try:
            plan = RoutingPlan.model_validate(body)
        except ValidationError as e:
            return 400, {"error": {"message": f"Invalid routing plan: {e.errors()[0]['msg']}",
                                   "type": "invalid_request_error", "param": None, "code": None}}
        unknown = plan.unknown_pools(list(self.config.pools))
        if unknown:
            return 400, {"error": {"message": f"Unknown pools {unknown}; pools are {sorted(self.config.pools)}.",
                                   "type": "invalid_request_error", "param": "fill_order", "code": None}}
        with self._lock:
            self.plan = plan
            self.puts.append((self.clock(), plan))
        return 200, plan.model_dump(mode="json")


class HeadServer:
    """The dashboard (:attr:`dashboard_url`) and the router (:attr:`router_url`) on two ports of 127.0.0.1, served
    from a background thread's event loop. Handlers only read and write the simulations under their locks."""

    def __init__(self, serve: SimulatedServe, router: SimulatedRouter) -> None:
        self.serve, self.router = serve, router
        self._loop = asyncio.new_event_loop()
        self._runners: list[aiohttp.web.AppRunner] = []
        sockets = [socket.socket(), socket.socket()]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        self.dashboard_url, self.router_url = (f"http://127.0.0.1:{s.getsockname()[1]}" for s in sockets)
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-head", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(sockets), self._loop).result(10)

    async def _start(self, sockets: list[socket.socket]) -> None:
        dashboard = aiohttp.web.Application()
        dashboard.router.add_get("/api/serve/applications/", self._applications)
        dashboard.router.add_post("/api/v1/applications/{app}/deployments/{deployment}/scale", self._scale)
        router = aiohttp.web.Application()
        router.router.add_get("/elo/pools", self._pools)
        router.router.add_put("/elo/routing", self._routing)
        for app, sock in zip((dashboard, router), sockets, strict=True):
            runner = aiohttp.web.AppRunner(app, access_log=None)
            await runner.setup()
            await aiohttp.web.SockSite(runner, sock).start()
            self._runners.append(runner)

    async def _applications(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.serve.details())

    async def _scale(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        status, body = self.serve.scale(request.match_info["app"], request.match_info["deployment"],
                                        await _json(request))
        return aiohttp.web.json_response(body, status=status)

    async def _pools(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response(self.router.pools())

    async def _routing(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        status, body = self.router.set_routing(await _json(request))
        return aiohttp.web.json_response(body, status=status)

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def _json(request: aiohttp.web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


@contextmanager
def head_server(serve: SimulatedServe, router: SimulatedRouter) -> Iterator[HeadServer]:
    server = HeadServer(serve, router)
    try:
        yield server
    finally:
        server.close()
