"""Integration scenario for the actuator adapters, run in its own process by ``test_control_adapters.py``.

It owns a private Ray cluster (``ray.cluster_utils.Cluster``: head with dashboard, pool nodes added by
:class:`LocalPoolBackend`), deploys a tiny two-pool Serve app with ``external_scaler_enabled=True``, drives
:class:`ServeScaler` and :class:`LocalPoolBackend` through scale-up, drain and scale-down, and writes what it
observed as JSON to the path given as the only argument. Not a test module (pytest does not collect it).

Usage: ``RAY_TMPDIR=/tmp/elo-xyz python tests/integration/control_adapters_scenario.py /tmp/elo-xyz/out.json``
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

APP = "elo-test"
HEAD_RESOURCE = "node:__internal_head__"  # every Ray head node has it: pins the ingress to the head


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, fn: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = fn()
        except (httpx.HTTPError, ValueError):  # the dashboard answers errors or non-JSON while it starts
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def build_app():
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}})
    class Ingress:
        def __init__(self, cloud, edge) -> None:
            self.pools = {"cloud": cloud, "edge": edge}

        async def __call__(self, request) -> str:
            return "ok"

    @serve.deployment
    class Pool:
        def __call__(self, *args) -> str:
            return "ok"

        async def slow(self, seconds: float) -> str:
            """A long request; answers the actor that served it."""
            import asyncio

            import ray

            await asyncio.sleep(seconds)
            return ray.get_runtime_context().get_actor_id()

        def __del__(self) -> None:
            # Serve calls this on graceful shutdown: the replica stays alive ~2 s after a scale-down, a wide,
            # deterministic window in which the pool backend must find its node busy.
            time.sleep(2)

    def pool(name: str):
        # Serve refuses num_replicas=0 at deploy time: start at 1 (unschedulable until the pool has a node)
        # and let the scaler set 0 right after.
        return Pool.options(name=f"pool-{name}", num_replicas=1,
                            ray_actor_options={"num_cpus": 0, "resources": {f"pool-{name}": 1}}).bind()

    return Ingress.bind(pool("cloud"), pool("edge"))


def main(out_path: str) -> int:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from orchestrator.control.adapters.local_backend import LocalPoolBackend, LocalPoolSpec
    from orchestrator.control.adapters.serve_scaler import ServeScaler
    from orchestrator.control.errors import ControlError

    out: dict[str, Any] = {"steps": {}}
    t0 = time.monotonic()

    def record(step: str, **values: Any) -> None:
        out["steps"][step] = {"at_s": round(time.monotonic() - t0, 2), **values}
        Path(out_path).write_text(json.dumps(out, indent=1))

    cluster = None
    try:
        dash_port = free_port()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dash_port})
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        serve.run_many([serve.RunTarget(build_app(), name=APP, route_prefix="/", external_scaler_enabled=True)],
                       wait_for_applications_running=False)
        dashboard = f"http://127.0.0.1:{dash_port}"
        wait_until("the Serve REST API", timeout_s=180, fn=lambda: httpx.get(f"{dashboard}/api/serve/applications/", timeout=10)
                   .json().get("applications", {}).get(APP))
        head_id = cluster.head_node.node_id

        requests: list[tuple[str, str]] = []
        client = httpx.Client(event_hooks={"request": [lambda r: requests.append((r.method, r.url.path))]})
        scaler = ServeScaler(dashboard, app_name=APP, client=client)
        backend = LocalPoolBackend(cluster, {"cloud": LocalPoolSpec(replicas_per_node=1, num_cpus=0),
                                             "edge": LocalPoolSpec(replicas_per_node=1, num_cpus=0)},
                                   clock=time.monotonic)
        for pool in ("cloud", "edge"):
            scaler.set_replicas(pool, 0)
        wait_until("no pool replicas", lambda: all(scaler.get_replicas(p) == (0, 0) for p in ("cloud", "edge")))
        record("setup", head_node_id=head_id, dashboard=dashboard)

        def replica_actors(pool: str, detail: bool = False) -> list[Any]:
            return list_actors(address=cluster.address, detail=detail, limit=1000,
                               filters=[("class_name", "=", f"ServeReplica:{APP}:pool-{pool}")])

        def alive_replicas(pool: str) -> dict[str, str]:
            return {a.actor_id: a.node_id for a in replica_actors(pool) if a.state == "ALIVE"}

        def node_ids(pool: str) -> list[str]:
            return [n.node_id for n in backend.list_nodes(pool)]

        # 1. Nodes first, then replicas: replicas land on their own pool's nodes only.
        started = time.monotonic()
        backend.resize("cloud", 2)
        cloud_resize_s = time.monotonic() - started
        backend.resize("edge", 1)
        cloud_ids = set(node_ids("cloud"))
        record("nodes_up", cloud_resize_s=round(cloud_resize_s, 2),
               cloud=[asdict(n) for n in backend.list_nodes("cloud")],
               edge=[asdict(n) for n in backend.list_nodes("edge")],
               startup_s={p: backend.measured_startup_s(p) for p in ("cloud", "edge")})

        requests.clear()
        scaler.set_replicas("cloud", 2)
        scaler.set_replicas("cloud", 2)
        sent = list(requests)
        asked = time.monotonic()
        wait_until("2 ready cloud replicas", lambda: scaler.get_replicas("cloud") == (2, 0))
        replicas = alive_replicas("cloud")
        record("replicas_up", requests=sent, ready_after_s=round(time.monotonic() - asked, 2),
               replica_nodes=sorted(replicas.values()), cloud_nodes=node_ids("cloud"), edge_nodes=node_ids("edge"),
               edge_replicas=backend.replicas_on(node_ids("edge")))

        # 2. Fewer nodes while both still host a replica: nothing is removed, one node drains.
        backend.resize("cloud", 1)
        record("busy_resize", nodes=[(n.node_id, n.state) for n in backend.list_nodes("cloud")],
               replicas_on=backend.replicas_on(node_ids("cloud")), alive=alive_replicas("cloud"))

        # 3. Replicas first (2 -> 1), then the node that became idle goes; the busy one stays.
        scaler.set_replicas("cloud", 1)
        calls = 0

        def one_node_left() -> bool:
            nonlocal calls
            calls += 1
            backend.resize("cloud", 1)
            return len(backend.list_nodes("cloud")) == 1

        wait_until("one cloud node", one_node_left, timeout_s=30, every_s=0.3)
        survivors = alive_replicas("cloud")
        record("scale_down_one", resize_calls=calls, nodes=node_ids("cloud"), alive_before=replicas,
               alive_after=survivors, ready=scaler.get_replicas("cloud"))

        # 4. To zero: replicas, then nodes — the first resize usually finds the replica still stopping.
        scaler.set_replicas("cloud", 0)
        timeline = []

        def no_nodes_left() -> bool:
            live = alive_replicas("cloud")
            backend.resize("cloud", 0)
            nodes = node_ids("cloud")
            timeline.append({"alive_before": len(live), "nodes_after": len(nodes),
                             "alive_on_kept_nodes": sum(1 for n in live.values() if n in nodes)})
            return not nodes

        wait_until("no cloud nodes", no_nodes_left, timeout_s=30, every_s=0.3)
        deaths = {a.actor_id: (a.death_cause or {}).get("actor_died_error_context", {})
                  for a in replica_actors("cloud", detail=True) if a.state == "DEAD"}
        removed = [n for n in ray.nodes() if not n["Alive"] and n["NodeID"] in cloud_ids]
        record("scale_to_zero", timeline=timeline, replicas=scaler.get_replicas("cloud"), fencing=backend.fencing,
               replica_deaths={k: {"reason": v.get("reason"), "message": v.get("error_message")}
                               for k, v in deaths.items()},
               removed_nodes={n["NodeID"]: {k: v for k, v in n.items() if "Death" in k or k == "State"}
                              for n in removed})

        # 5. An unknown pool: a clear error, no retries.
        requests.clear()
        try:
            scaler.set_replicas("gpu", 1)
            record("not_found", error=None)
        except ControlError as e:
            record("not_found", error=type(e).__name__, message=str(e), requests=list(requests))

        # 6. A pool node's pod is deleted (by KubeRay, or a preemption): its preStop hook, `elo drain-node`, drains
        #    it. Serve starts a replacement on the pool's other node, the request in flight on the old replica
        #    finishes there, and the drain returns once the node hosts no replica.
        backend.resize("cloud", 2)
        scaler.set_replicas("cloud", 1)
        wait_until("1 ready cloud replica", lambda: scaler.get_replicas("cloud") == (1, 0))
        (old_replica, doomed), = alive_replicas("cloud").items()
        inflight = serve.get_deployment_handle("pool-cloud", app_name=APP).slow.remote(6.0)
        time.sleep(1.0)  # the request is on the replica (it sleeps 6 s there)
        hook = subprocess.run([str(Path(sys.executable).with_name("elo")), "drain-node", "--address", cluster.address,
                               "--node-id", doomed, "--deadline-s", "90"], capture_output=True, text=True, timeout=180)
        served_by = inflight.result(timeout_s=60)
        after = alive_replicas("cloud")
        record("pod_deleted", old_replica=old_replica, doomed_node=doomed, served_by=served_by,
               hook={"returncode": hook.returncode, "stdout": hook.stdout, "stderr": hook.stderr[-2000:]},
               alive_after=after, cloud_nodes=node_ids("cloud"),
               ready_after=scaler.get_replicas("cloud"))

        record("startup", startup_s={p: backend.measured_startup_s(p) for p in ("cloud", "edge")})
        client.close()
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        Path(out_path).write_text(json.dumps(out, indent=1))
    finally:
        started = time.monotonic()
        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            record("teardown", took_s=round(time.monotonic() - started, 2), total_s=round(time.monotonic() - t0, 2))
        except BaseException as e:
            out["teardown_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            Path(out_path).write_text(json.dumps(out, indent=1))
    return 0 if "error" not in out and "teardown_error" not in out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
