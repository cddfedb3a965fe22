"""The `elo` command line: run the embedded default, build the demo model, benchmark an endpoint."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from deployments.config import AppConfig, ConfigError, load_app_config
from orchestrator.bench.cli import bench_app
from orchestrator.control.cli import policy_app
from orchestrator.kube import controller_command
from orchestrator.sim.cli import register as register_sim_commands

app = typer.Typer(help="Elastic LLM orchestrator: cloud (vLLM) and edge (CPU) pools behind one OpenAI endpoint.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
model_app = typer.Typer(help="The embedded demo model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
console = Console()


app.add_typer(bench_app, name="bench", help="Load generator and benchmarks against any OpenAI-compatible URL.")
app.add_typer(policy_app, name="policy", help="Scaling policy files: validate them, export their JSON schema.")
register_sim_commands(app)  # elo simulate / tune / sim2real (orchestrator/sim/cli.py)
app.command("controller")(controller_command)  # elo controller: the autoscaler on KubeRay (orchestrator/kube.py)


def _load_config(path: Path | None) -> AppConfig:
    if path is None:
        return AppConfig()
    try:
        return load_app_config(path)
    except ConfigError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from e


@app.command()
def run(
    config: Path | None = typer.Option(None, "--config", "-f", help="App config YAML (model, pools, router)."),
    host: str = typer.Option("127.0.0.1", help="Address the endpoint listens on."),
    port: int = typer.Option(8000, help="Port of the endpoint."),
    cache_dir: Path | None = typer.Option(None, help="Where the demo model is built (default ~/.cache/elo)."),
    ready_timeout_s: float = typer.Option(600, help="Give up if replicas are not ready by then."),
    policy: Path | None = typer.Option(None, "--policy", "-p", help="Scaling policy YAML (default: the shipped one)."),
    controller: bool = typer.Option(True, help="Run the autoscaling controller on elastic local pools."),
    state_dir: Path | None = typer.Option(None, help="Controller state and decision log (default ~/.cache/elo/controller)."),
    dashboard_port: int = typer.Option(8265, help="Port of the Ray dashboard (Serve's scaling API) on 127.0.0.1."),
    cores: float | None = typer.Option(None, min=0.1, envvar="ELO_CORES",
                                       help="Cores the local pools share (default: the CPUs this process may use); "
                                       "the controller adds no local replica that would add no capacity on them."),
    api_key: list[str] = typer.Option([], "--api-key", help="A client API key (repeatable; also ELO_API_KEYS, "
                                      "comma-separated). With any key, /v1/* needs 'Authorization: Bearer KEY'."),
    metrics_port: int = typer.Option(8001, "--metrics-port", min=0, metavar="PORT",
                                     help="Port of the controller's metrics (elo_controller_*) on the endpoint's "
                                     "address; 0: off. The router's own are on the endpoint's /metrics."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="ELO_ADMIN_KEY",
                                         help="Key for /elo/* (controller, elo status); generated when API keys are "
                                         "on and none is given, and written to STATE_DIR/admin-key."),
) -> None:
    """Start the embedded default: local Ray, the demo model, one cloud (vLLM) and one edge (CPU) replica,
    and the autoscaling controller resizing both pools (extra local Ray nodes)."""
    from orchestrator.control.config import PolicyFile
    from orchestrator.control.policy_loader import load_policy_file
    from orchestrator.run import Endpoint, run_forever

    app_config = _load_config(config)
    at_zero = [p for p, c in app_config.pools.items() if c.replicas == 0]
    if at_zero and not controller:
        console.print(f"[red]pools {at_zero} start at 0 replicas: only the controller can scale them up; "
                      "drop --no-controller or give them replicas >= 1[/]")
        raise typer.Exit(2)
    policy_file = None
    if controller:
        try:
            policy_file = load_policy_file(policy) if policy else PolicyFile.default()
        except ConfigError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2) from e
    state = state_dir or default_state_dir()
    app_config, admin = _with_api_keys(app_config, api_key, admin_key, state)
    run_forever(app_config, Endpoint(host, port, admin), cache_dir, ready_timeout_s, policy_file, policy,
                state, dashboard_port, cores, metrics_port)


def _with_api_keys(config: AppConfig, keys: list[str], admin_key: str | None,
                   state_dir: Path) -> tuple[AppConfig, str | None]:
    """The app config with the CLI's and ELO_API_KEYS' keys added, and the admin key (None: auth is off)."""
    import os
    import secrets

    from deployments.auth import keys_from_env
    from deployments.config import ApiKey

    added = [ApiKey(key=k, name=f"cli[{i}]") for i, k in enumerate(keys)] + keys_from_env()
    auth = config.router.auth
    if not (auth.keys or added):
        return config, None
    admin = admin_key or next((k.key for k in [*auth.keys, *added] if k.admin), None) or secrets.token_urlsafe(24)
    all_keys = [*auth.keys, *added]
    if not any(k.key == admin for k in all_keys):
        all_keys.append(ApiKey(key=admin, name="admin", admin=True))
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "admin-key"
    path.write_text(admin + "\n")
    os.chmod(path, 0o600)
    router = config.router.model_copy(update={"auth": auth.model_copy(update={"keys": all_keys})})
    return config.model_copy(update={"router": router}), admin


@app.command()
def status(
    url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of the endpoint (without /v1)."),
    decisions: Path | None = typer.Option(None, help="Controller decision log (default: the run's state folder)."),
    watch_s: float | None = typer.Option(None, "--watch", help="Refresh every this many seconds until Ctrl-C."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="ELO_ADMIN_KEY",
                                         help="The router's admin key (default: STATE_DIR/admin-key when present)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON (schema: `elo status --schema`)."),
    schema: bool = typer.Option(False, "--schema", help="Print the JSON schema of `--json` and exit."),
) -> None:
    """Pools, replicas, queues, capacity at the SLO, $/hour and the controller's last decisions."""
    import json
    import time

    import httpx
    from rich.live import Live

    from orchestrator.status import Status, collect, render_status

    if schema:
        print(json.dumps(Status.model_json_schema(), indent=2))
        return
    path = decisions or default_state_dir() / "decisions.jsonl"
    key_file = path.parent / "admin-key"  # written by `elo run` next to its decision log
    key = admin_key or (key_file.read_text().strip() if key_file.exists() else None)
    try:
        if as_json:
            print(collect(url, path, admin_key=key).model_dump_json(indent=2))
            return
        if watch_s is None:
            console.print(render_status(url, path, admin_key=key))
            return
        with Live(render_status(url, path, admin_key=key), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(watch_s)
                live.update(render_status(url, path, admin_key=key))
    except httpx.HTTPError as e:
        console.print(f"[red]cannot reach {url}: {e}[/] (is `elo run` running?)")
        raise typer.Exit(1) from e
    except KeyboardInterrupt:
        pass


def default_state_dir() -> Path:
    from orchestrator.demo_model import DEFAULT_CACHE_DIR

    return DEFAULT_CACHE_DIR / "controller"


@app.command("config")
def show_config(config: Path | None = typer.Option(None, "--config", "-f")) -> None:
    """Validate an app config and print it with every default filled in."""
    import yaml

    console.print(yaml.safe_dump(_load_config(config).model_dump(mode="json"), sort_keys=False))


@app.command("drain-node")
def drain_node_cmd(
    deadline_s: float = typer.Option(..., "--deadline-s", min=1,
                                     help="Wait at most this long (the pool's graceful_shutdown_timeout_s)."),
    address: str = typer.Option("auto", help="Ray cluster to connect to (auto: the one this node belongs to)."),
    node_id: str | None = typer.Option(None, help="Node to drain (default: the node this runs on)."),
) -> None:
    """Drain a Ray node before its pod goes (the chart's worker preStop hook): Serve moves the node's replicas to
    other nodes and stops these after their in-flight requests; returns when none is left or at the deadline."""
    import ray
    from ray._private import services
    from ray._raylet import GcsClient

    from orchestrator.control.adapters.ray_nodes import drain_node

    gcs_address = services.canonicalize_bootstrap_address_or_die(address)
    ray.init(address=gcs_address, logging_level="WARNING", log_to_driver=False)
    try:
        node = node_id or ray.get_runtime_context().get_node_id()
        outcome = drain_node(GcsClient(address=gcs_address), gcs_address, node, deadline_s)
    finally:
        ray.shutdown()
    def n(count: int) -> str:
        return "an unknown number of" if count < 0 else str(count)

    console.print(f"node {outcome.node_id}: {n(outcome.replicas_at_start)} Serve replica(s) at the start, "
                  f"{n(outcome.replicas_left)} left after {outcome.waited_s:.1f}s", markup=False, highlight=False,
                  soft_wrap=True)
    if outcome.replicas_left:
        raise typer.Exit(1)


@model_app.command("build")
def model_build(
    cache_dir: Path | None = typer.Option(None, help="Cache folder (default ~/.cache/elo)."),
) -> None:
    """Build (or reuse) the demo model and print its path."""
    from orchestrator.run import build_model_with_progress

    console.print(str(build_model_with_progress(cache_dir)))


if __name__ == "__main__":
    app()
