"""The main job on one machine: a local Ray cluster, the demo model, and the Serve app on it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from deployments.config import AppConfig

if TYPE_CHECKING:
    from orchestrator.control.config import PolicyFile
    from orchestrator.elastic import ElasticRuntime

console = Console()


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    admin_key: str | None = None  # the router's admin key, when API keys are on (the controller and readiness use it)

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def build_model_with_progress(cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the demo model, drawing a progress bar while it trains."""
    from orchestrator.demo_model import build_demo_model, demo_model_path, is_complete_build

    target = demo_model_path(cache_dir)
    if is_complete_build(target):
        return target
    console.print(f"[bold]Building the demo model[/] into {target} (once; about a minute on 2 cores)")
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=max(total, 1))
            bar.update(tasks[stage], completed=done, total=max(total, 1))

        return build_demo_model(cache_dir, progress=progress)


def wait_until_ready(
    endpoint: Endpoint, pools: list[str], timeout_s: float, stopped: threading.Event | None = None
) -> dict[str, dict[str, int]]:
    """Poll the router until every pool has a ready replica (or `stopped` is set)."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, dict[str, int]] = {}
    with console.status("Waiting for replicas to load the model (vLLM takes ~30 s on CPU)...") as status:
        while time.monotonic() < deadline and not (stopped and stopped.is_set()):
            try:
                state = httpx.get(f"{endpoint.base_url}/elo/pools", timeout=5, headers=endpoint.admin_headers).json()["pools"]
                ready = {p: state.get(p, {}).get("ready_replicas", 0) for p in pools}
                status.update("Waiting for replicas: " + ", ".join(f"{p} {n} ready" for p, n in ready.items()))
                if all(n > 0 for n in ready.values()):
                    return state
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
    if stopped and stopped.is_set():
        return state
    raise TimeoutError(f"replicas not ready after {timeout_s:.0f} s: {state}")


def start(
    config: AppConfig, endpoint: Endpoint, cache_dir: Path | None = None, policy: PolicyFile | None = None,
    state_dir: Path | None = None, dashboard_port: int = 8265, cores: float | None = None,
) -> ElasticRuntime | None:
    """Start Ray and Serve and deploy the app; returns once it is deployed (not necessarily ready).

    With a policy, the cluster is elastic: each pool is a set of extra local Ray nodes and a controller
    (started later, see `run_forever`) resizes them; without one, a plain local Ray instance."""
    import ray
    from ray import serve

    from deployments.app import APP_NAME, build_app, resolve_model

    if config.model.source == "demo":
        build_model_with_progress(cache_dir)  # resolve_model below then finds the finished build
    model = resolve_model(config.model, cache_dir)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with console.status("Starting a local Ray cluster and Ray Serve..."):
        if policy is None:
            ray.init(include_dashboard=True, logging_level="WARNING", log_to_driver=False)
            serve.start(proxy_location="Disabled")  # the router serves the endpoint itself
            serve.run(build_app(config, model, endpoint.host, endpoint.port), name=APP_NAME, route_prefix=None,
                      blocking=False)
            return None
        from orchestrator.control.adapters.serve_scaler import ServeScaler
        from orchestrator.elastic import (
            ElasticRuntime,
            apply_initial_replicas,
            build_controller,
            check_pools_match,
            pin_pools_to_nodes,
            start_cluster,
        )

        check_pools_match(config, policy)
        cluster, backend, dashboard = start_cluster(config, policy, dashboard_port, cores)
        try:
            config = pin_pools_to_nodes(config)
            scaler = ServeScaler(dashboard)
            serve.start(proxy_location="Disabled")  # the router serves the endpoint itself
            # serve.run returns once every deployment runs, and Serve cannot deploy zero replicas: a pool that
            # starts at zero is deployed with one (unschedulable: its pool has no node) and scaled to zero
            # from another thread meanwhile.
            with ThreadPoolExecutor(1) as executor:
                zeroed = executor.submit(apply_initial_replicas, config, scaler)
                serve.run(build_app(config, model, endpoint.host, endpoint.port), name=APP_NAME, route_prefix=None,
                          blocking=False, external_scaler_enabled=True)
                zeroed.result()
            controller = build_controller(policy, endpoint.base_url, scaler, backend, state_dir or Path("."),
                                          admin_key=endpoint.admin_key)
            return ElasticRuntime(cluster, backend, scaler, controller)
        except BaseException:  # the caller only stops what start() returned: do not leak the nodes
            ray.shutdown()
            cluster.shutdown()
            raise


def stop(runtime: ElasticRuntime | None = None) -> None:
    import ray
    from ray import serve

    with console.status("Shutting down the controller, Serve and Ray..."):
        try:
            if runtime is not None:
                runtime.stop()
            serve.shutdown()
        finally:
            ray.shutdown()
            if runtime is not None:
                runtime.cluster.shutdown()


def print_welcome(config: AppConfig, endpoint: Endpoint, controller: bool = False, metrics_port: int = 0) -> None:
    url = endpoint.base_url
    name = config.model.served_name
    pools = ", ".join(f"{p} ({c.engine}, {c.replicas} replica{'s' if c.replicas != 1 else ''})" for p, c in config.pools.items())
    console.print(Panel.fit(f"[bold green]Serving[/] [bold]{name}[/] at [bold]{url}/v1[/]\npools: {pools}",
                            title="elastic LLM orchestrator"))
    body = json.dumps({"model": name, "messages": [{"role": "user", "content": "What are you?"}],
                       "max_tokens": 48, "temperature": 0})
    # Plain prints: rich would wrap long lines and break copy-paste.
    print(f"\ncurl:\ncurl -s {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'\n")
    print("openai (Python):")
    key = "<your API key>" if config.router.auth.keys else "unused"
    print(f"from openai import OpenAI\nclient = OpenAI(base_url=\"{url}/v1\", api_key=\"{key}\")")
    print(f"r = client.chat.completions.create(model=\"{name}\", messages=[{{\"role\": \"user\", "
          f"\"content\": \"What are you?\"}}], max_tokens=48, temperature=0)")
    print("print(r.choices[0].message.content)\n")
    print("The 'x-elo-pool' response header names the pool that served; header 'x-slo-class: <class>' picks a class "
          "(router.slo_class_preferences maps classes to pools).")
    if controller:
        print("The autoscaling controller is running: watch it with `elo status --watch 2` while you send load, "
              "e.g. `elo bench serve -n 200 -c 24`.")
    controller_metrics = f"   Controller metrics: http://{endpoint.host}:{metrics_port}/metrics" if metrics_port else ""
    print(f"Metrics: {url}/metrics{controller_metrics}   Pool state: {url}/elo/pools   Stop: Ctrl-C", flush=True)


def run_forever(
    config: AppConfig, endpoint: Endpoint, cache_dir: Path | None = None, ready_timeout_s: float = 600,
    policy: PolicyFile | None = None, policy_path: Path | None = None, state_dir: Path | None = None,
    dashboard_port: int = 8265, cores: float | None = None, metrics_port: int = 0,
) -> None:
    """The `elo run` job: start, wait for readiness, start the controller, print how to call the endpoint,
    stop cleanly on Ctrl-C/SIGTERM."""
    stopped = threading.Event()
    runtime = None
    try:
        runtime = start(config, endpoint, cache_dir, policy, state_dir, dashboard_port, cores)
        # After ray.init, which installs its own SIGTERM handler: both signals end the job cleanly.
        # SIGINT is set explicitly because a shell starting us in the background may have ignored it.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _: stopped.set())
        wait_until_ready(endpoint, [p for p, c in config.pools.items() if c.replicas > 0], ready_timeout_s, stopped)
        if runtime is not None and not stopped.is_set():
            runtime.start_controller(policy_path)
            if metrics_port:
                try:
                    runtime.serve_metrics(endpoint.host, metrics_port)
                except OSError as e:  # the endpoint serves without them; say so
                    console.print(f"[yellow]controller metrics off: cannot listen on {endpoint.host}:{metrics_port} "
                                  f"({e}); pick another with --metrics-port[/]")
                    metrics_port = 0
        if not stopped.is_set():
            print_welcome(config, endpoint, controller=runtime is not None,
                          metrics_port=metrics_port if runtime is not None else 0)
        while not stopped.wait(1.0):
            pass
        console.print("\nStopping.")
    except KeyboardInterrupt:
        console.print("\nCtrl-C received.")
    finally:
        stop(runtime)
        console.print("Stopped cleanly.")
