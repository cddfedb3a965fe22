"""The embedded elastic runtime: a local Ray cluster whose pools are extra nodes, and the controller driving them."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.app import pool_deployment_name
from deployments.config import AppConfig
from orchestrator.control.adapters.local_backend import HEAD_RESOURCE, LocalPoolBackend, LocalPoolSpec, pool_resource
from orchestrator.control.adapters.router import ObservedMetrics, RouterClient
from orchestrator.control.adapters.serve_scaler import ServeScaler
from orchestrator.control.config import ConfigError, PolicyFile
from orchestrator.control.errors import NotFoundError, TransientError
from orchestrator.control.journal import DecisionLog, StateStore
from orchestrator.control.loop import Controller
from orchestrator.control.machine import SharedCores
from orchestrator.control.policy_reload import watch_policy_file

log = logging.getLogger(__name__)


def pin_pools_to_nodes(config: AppConfig) -> AppConfig:
    """Each replica asks for one unit of its pool's node resource, so it lands only on that pool's nodes; the
    router asks for a sliver of the head's resource, so no pool node hosts it (it could never be drained)."""
    pools = {}
    for name, pool in config.pools.items():
        options: dict[str, Any] = dict(pool.ray_actor_options)
        options["resources"] = {**options.get("resources", {}), pool_resource(name): 1}
        pools[name] = pool.model_copy(update={"ray_actor_options": options})
    router_options = dict(config.router.ray_actor_options)
    router_options["resources"] = {**router_options.get("resources", {}), HEAD_RESOURCE: 0.001}
    router = config.router.model_copy(update={"ray_actor_options": router_options})
    return config.model_copy(update={"pools": pools, "router": router})


def check_pools_match(config: AppConfig, policy: PolicyFile) -> None:
    if set(config.pools) != set(policy.pools):
        raise ConfigError(f"the policy's pools {sorted(policy.pools)} differ from the app's pools {sorted(config.pools)}")


@dataclass
class ElasticRuntime:
    """What `elo run` starts in elastic mode, so it can stop it again."""

    cluster: Any
    backend: LocalPoolBackend
    scaler: ServeScaler
    controller: Controller
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    stop_metrics: Callable[[], None] | None = None

    def start_controller(self, policy_path: Path | None, reload_every_s: float = 2.0) -> None:
        self.threads.append(threading.Thread(target=self.controller.run, args=(self.stop_event,),
                                             name="elo-controller", daemon=True))
        if policy_path is not None:
            self.threads.append(threading.Thread(target=self._watch_policy, args=(policy_path, reload_every_s),
                                                 name="elo-policy-reload", daemon=True))
        for t in self.threads:
            t.start()

    def serve_metrics(self, host: str, port: int) -> None:
        """The controller's gauges (elo_controller_*) on http://host:port/metrics."""
        self.stop_metrics = self.controller.gauges.serve(port, host)

    def _watch_policy(self, path: Path, every_s: float) -> None:
        """Hot reload: a changed file that validates replaces the policy; a bad one is rejected, the last good
        one keeps running."""
        watch_policy_file(path, self.controller.reload, self.stop_event, every_s)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=10)
        if self.stop_metrics is not None:
            self.stop_metrics()
        self.scaler.close()


def start_cluster(config: AppConfig, policy: PolicyFile, dashboard_port: int = 8265,
                  cores: float | None = None) -> tuple[Any, LocalPoolBackend, str]:
    """Start a head node (dashboard on) and the pools' initial nodes; connect this process as the driver. The pools
    share ``cores`` (default: the CPUs this process may use), which the backend reports to the controller."""
    import ray
    from ray.cluster_utils import Cluster

    # shutdown_at_exit=False: nodes are added from the controller thread, and Ray would otherwise install a
    # signal handler per node, which only the main thread may do. `elo run` shuts the cluster down itself.
    cluster = Cluster(initialize_head=True, shutdown_at_exit=False, head_node_args={
        "num_cpus": 2, "resources": {HEAD_RESOURCE: 1}, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    specs = {name: LocalPoolSpec(replicas_per_node=p.replicas_per_node, num_cpus=1, max_nodes=math.ceil(
        p.max_replicas / p.replicas_per_node)) for name, p in policy.pools.items()}
    backend = LocalPoolBackend(cluster, specs, clock=time.monotonic, machine=local_machine(config, cores))
    for name, pool in config.pools.items():
        backend.resize(name, math.ceil(pool.replicas / specs[name].replicas_per_node))
    return cluster, backend, dashboard


def local_machine(config: AppConfig, cores: float | None = None) -> SharedCores:
    """The cores every local pool's replicas share: a serving replica keeps its engine's threads busy (vLLM's
    OpenMP threads and torch's intra-op threads default to every CPU this process may use; a transformers pool's
    ``num_threads`` caps it), a starting one about one core (loading weights, warming up). ``cores`` (default: those
    CPUs) is the budget they share; the threads a replica runs are still the CPUs it sees, whatever the budget. A
    pool's ``busy_cores`` (measured: scripts/bench_shared_cores.py) replaces the thread count: a replica's threads
    are not all busy all the time."""
    cpus = float(len(os.sched_getaffinity(0)))
    total = float(cores) if cores is not None else cpus
    threads = min(total, cpus)
    busy = {name: p.busy_cores if p.busy_cores is not None else
            min(threads, float(p.num_threads)) if p.engine == "transformers" and p.num_threads else threads
            for name, p in config.pools.items()}
    return SharedCores(total, busy, {name: min(total, 1.0) for name in config.pools}, name="local")


def apply_initial_replicas(config: AppConfig, scaler: ServeScaler, timeout_s: float = 120.0,
                           clock=time.monotonic, sleep=time.sleep) -> None:
    """Scale the pools configured with ``replicas: 0`` to zero (Serve deploys at least one), retrying while the
    just-submitted app is not visible in the dashboard yet."""
    configured = {p: c.replicas for p, c in config.pools.items()}
    if 0 not in configured.values():
        return
    deadline = clock() + timeout_s
    while True:
        try:
            scaler.release_pools_deployed_at_zero(list(configured), configured)
            break
        except (NotFoundError, TransientError) as e:
            if clock() >= deadline:
                raise TimeoutError(f"could not scale the pools configured at 0 replicas to zero: {e}") from e
            sleep(1.0)
    _kill_unplaced_replicas([pool_deployment_name(p) for p, n in configured.items() if n == 0], clock, sleep)


def _kill_unplaced_replicas(deployments: list[str], clock=time.monotonic, sleep=time.sleep,
                            settle_s: float = 10.0) -> None:
    """The replica Serve had to create for a pool deployed at zero never gets a node (its pool has none): Serve
    would wait its whole graceful-shutdown timeout (minutes, for draining) on an actor that never ran, and the
    app would stay DEPLOYING. Kill those actors; nothing runs on them."""
    import ray

    quiet_since = clock()
    while clock() - quiet_since < settle_s:
        found = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if any(f"#{d}#" in a["name"] for d in deployments)]
        for a in found:
            try:
                ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
            except ValueError:  # already gone
                pass
        if found:
            quiet_since = clock()
        sleep(0.5)


def build_controller(policy: PolicyFile, router_url: str, scaler: ServeScaler, backend: LocalPoolBackend,
                     state_dir: Path, admin_key: str | None = None) -> Controller:
    router = RouterClient(router_url, admin_key=admin_key)
    return Controller(
        policy,
        ObservedMetrics(router, scaler, backend, list(policy.pools), clock=time.monotonic),
        scaler, backend, router,
        clock=time.monotonic,
        state_store=StateStore(state_dir / "policy-state.json"),
        decisions=DecisionLog(state_dir / "decisions.jsonl"),
        wall_clock=time.time,
    )

