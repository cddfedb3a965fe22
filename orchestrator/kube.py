"""The controller on Kubernetes: KubeRay worker groups as pools, wired into the control loop (`elo controller`).

Observe: the router's ``/elo/pools``, Serve's replica states on the Ray dashboard, the worker groups' pods.
Act: Serve's external-scaler REST API (replica counts) and the RayCluster's worker groups (nodes).
Kubernetes credentials come from the pod's ServiceAccount in a cluster, else from the kubeconfig.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from orchestrator.control.config import ConfigError, PolicyFile
from orchestrator.control.policy_loader import load_policy_file

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from orchestrator.control.adapters.kuberay import RetryPolicy
    from orchestrator.control.loop import Controller

log = logging.getLogger(__name__)

BACKENDS = ("kuberay",)
DEFAULT_GROUPS = {"cloud": "cloud-gpu", "edge": "edge-cpu"}  # the Helm chart's worker groups
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parse_groups(values: Sequence[str]) -> dict[str, str]:
    """``["cloud=cloud-gpu", ...]`` -> ``{"cloud": "cloud-gpu", ...}``; no value: :data:`DEFAULT_GROUPS`."""
    if not values:
        return dict(DEFAULT_GROUPS)
    groups: dict[str, str] = {}
    for value in values:
        pool, sep, group = value.partition("=")
        pool, group = pool.strip(), group.strip()
        if not sep or not pool or not group:
            raise ValueError(f"--group {value!r}: expected POOL=GROUP, e.g. cloud=cloud-gpu")
        if pool in groups:
            raise ValueError(f"--group {value!r}: pool {pool!r} is already mapped to group {groups[pool]!r}")
        groups[pool] = group
    return groups


def check_groups(policy: PolicyFile, groups: Mapping[str, str]) -> None:
    """Every pool of the policy needs a worker group."""
    missing = [pool for pool in policy.pools if pool not in groups]
    if missing:
        raise ConfigError(f"the policy's pools {', '.join(missing)} have no worker group; add --group POOL=GROUP for "
                          f"each (mapped now: {', '.join(f'{p}={g}' for p, g in groups.items()) or 'none'})")


def load_api_client() -> ApiClient:
    """A Kubernetes API client: in-cluster (ServiceAccount) config, else the kubeconfig; ConfigError if neither.
    urllib3's own retries are off: the backend's RetryPolicy owns retries (urllib3 would silently repeat reads)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(client_configuration=configuration)
        except config.ConfigException as e:
            raise ConfigError("no Kubernetes credentials: not running in a cluster (no ServiceAccount token) and no "
                              f"usable kubeconfig ({e})") from e
    configuration.retries = 0
    return client.ApiClient(configuration)


def default_namespace() -> str:
    """The controller pod's own namespace in a cluster, else ``default``."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def build_kuberay_controller(
    policy: PolicyFile,
    *,
    api_client: ApiClient,
    namespace: str,
    groups: Mapping[str, str],
    router_url: str,
    dashboard_url: str,
    state_dir: Path,
    raycluster: str | None = None,
    rayservice: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    retry: RetryPolicy | None = None,
    admin_key: str | None = None,
) -> Controller:
    """The control loop over KubeRay: :class:`KubeRayPoolBackend` (nodes), :class:`ServeScaler` (replicas) and
    :class:`ObservedMetrics` (router + Serve + pods), its state and decision log under ``state_dir``."""
    from orchestrator.control.adapters.kuberay import KubeRayPoolBackend
    from orchestrator.control.adapters.router import ObservedMetrics, RouterClient
    from orchestrator.control.adapters.serve_placement import ServeReplicaPlacement
    from orchestrator.control.adapters.serve_scaler import ServeScaler
    from orchestrator.control.journal import DecisionLog, StateStore
    from orchestrator.control.loop import Controller

    check_groups(policy, groups)
    backend = KubeRayPoolBackend(api_client, namespace, groups, replicas_on=ServeReplicaPlacement(dashboard_url),
                                 raycluster=raycluster, rayservice=rayservice, clock=clock, wall_clock=wall_clock,
                                 retry=retry)
    scaler = ServeScaler(dashboard_url, clock=clock)
    router = RouterClient(router_url, admin_key=admin_key)
    return Controller(
        policy,
        ObservedMetrics(router, scaler, backend, list(policy.pools), clock=clock),
        scaler, backend, router,
        clock=clock,
        state_store=StateStore(state_dir / "policy-state.json"),
        decisions=DecisionLog(state_dir / "decisions.jsonl"),
        wall_clock=wall_clock,
    )


def reloader(controller: Controller, groups: Mapping[str, str]) -> Callable[[PolicyFile], None]:
    """``Controller.reload`` that refuses a policy whose pools changed (the observers are built per pool)."""

    def reload(policy: PolicyFile) -> None:
        running = controller.policy_file.pools
        if set(policy.pools) != set(running):
            raise ConfigError(f"the policy's pools changed ({', '.join(running)} -> {', '.join(policy.pools)}); "
                              "restart the controller to change pools")
        check_groups(policy, groups)
        controller.reload(policy)

    return reload


def controller_command(
    backend: str = typer.Option("kuberay", "--backend", metavar="NAME",
                                help="Pool backend; kuberay: worker groups of a RayCluster."),
    policy: Path | None = typer.Option(None, "--policy", metavar="FILE",
                                       help="Scaling policy YAML (default: the shipped one); hot-reloaded on change."),
    namespace: str | None = typer.Option(None, "--namespace", metavar="NS",
                                         help="Namespace of the RayService or RayCluster (default: the controller "
                                         "pod's own, else 'default')."),
    rayservice: str | None = typer.Option(None, "--rayservice", metavar="NAME",
                                          help="RayService whose active RayCluster holds the pools (followed across "
                                          "upgrades)."),
    raycluster: str | None = typer.Option(None, "--raycluster", metavar="NAME",
                                          help="RayCluster holding the pools (instead of --rayservice)."),
    router_url: str = typer.Option(..., "--router-url", metavar="URL",
                                   help="Base URL of the router (its /elo/pools and /elo/routing), e.g. "
                                   "http://elo-serve-svc:8000."),
    dashboard_url: str = typer.Option(..., "--dashboard-url", metavar="URL",
                                      help="Base URL of the Ray dashboard on the head, e.g. http://elo-head-svc:8265."),
    group: list[str] = typer.Option([], "--group", metavar="POOL=GROUP",
                                    help="The worker group of a pool; repeatable (default: cloud=cloud-gpu, "
                                    "edge=edge-cpu)."),
    state_dir: Path | None = typer.Option(None, "--state-dir", metavar="DIR",
                                          help="Where the policy state and the decision log live (default: "
                                          "~/.cache/elo/controller)."),
    metrics_port: int = typer.Option(9090, "--metrics-port", metavar="PORT",
                                     help="Port of the controller's Prometheus metrics; 0: off."),
    admin_key: str | None = typer.Option(None, "--admin-key", envvar="ELO_ADMIN_KEY", metavar="KEY",
                                         help="The router's admin key, when API keys are on (/elo/* needs it)."),
) -> None:
    """Run the autoscaling controller against KubeRay worker groups until SIGTERM (in a cluster, or from a
    kubeconfig)."""
    if backend not in BACKENDS:
        raise typer.BadParameter(f"{backend!r} is not a pool backend here; only {', '.join(BACKENDS)} is supported "
                                 "(the local backend runs inside `elo run`)", param_hint="--backend")
    if (rayservice is None) == (raycluster is None):
        raise typer.BadParameter("name exactly one of --rayservice NAME or --raycluster NAME",
                                 param_hint="--rayservice / --raycluster")
    try:
        groups = parse_groups(group)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--group") from e
    try:
        policy_file = load_policy_file(policy) if policy else PolicyFile.default()
        check_groups(policy_file, groups)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e
    if state_dir is None:
        from orchestrator.demo_model import DEFAULT_CACHE_DIR

        state_dir = DEFAULT_CACHE_DIR / "controller"

    try:
        api_client = load_api_client()
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from e

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    controller = build_kuberay_controller(
        policy_file, api_client=api_client, namespace=namespace or default_namespace(), groups=groups,
        router_url=router_url, dashboard_url=dashboard_url, state_dir=state_dir, raycluster=raycluster,
        admin_key=admin_key,
        rayservice=rayservice)
    run_until_signalled(controller, policy, groups, metrics_port)
    log.info("controller stopped")


def run_until_signalled(controller: Controller, policy_path: Path | None, groups: Mapping[str, str],
                        metrics_port: int) -> None:
    """Serve the gauges, watch the policy file, tick until SIGTERM or SIGINT (then finish the tick and return)."""
    from orchestrator.control.policy_reload import watch_policy_file

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop_metrics = controller.gauges.serve(metrics_port) if metrics_port else None
    if policy_path is not None:
        threading.Thread(target=watch_policy_file, args=(policy_path, reloader(controller, groups), stop),
                         name="elo-policy-reload", daemon=True).start()
    log.info("controller running: pools %s, tick every %gs, metrics on :%s", ", ".join(controller.policy_file.pools),
             controller.policy_file.tick_interval_s, metrics_port or "off")
    release = getattr(controller.scaler, "release_pools_deployed_at_zero", None)
    if release is not None:  # alongside the loop (the Serve app may take minutes to appear), once
        threading.Thread(target=_until_done, args=(lambda: release(releasable_at_zero(controller)), stop),
                         name="elo-release-zero", daemon=True).start()
    try:
        controller.run(stop)
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_metrics is not None:
            stop_metrics()
        close = getattr(controller.scaler, "close", None)
        if close is not None:
            close()


def releasable_at_zero(controller: Controller) -> list[str]:
    """The pools whose one replica Serve deployed for ``replicas: 0`` may be set to zero at start: those this
    controller's restored state never resized. A controller restarted while it cold-starts a pool (its replica not
    ready yet) must not take that replica back."""
    return [p for p in controller.policy_file.pools if not controller.sized_before(p)]


def _until_done(step: Callable[[], list[str]], stop: threading.Event, every_s: float = 5.0,
                give_up_s: float = 600.0) -> None:
    """Retry ``step`` while the Serve app is not deployed yet (the head starts after the controller)."""
    from orchestrator.control.errors import ControlError

    deadline = time.monotonic() + give_up_s
    while not stop.is_set():
        try:
            released = step()
            if released:
                log.warning("pools %s are configured at 0 replicas: set to 0 (Serve deployed one)", released)
            return
        except ControlError as e:
            if time.monotonic() >= deadline:
                log.error("could not check pools configured at 0 replicas, going on: %s", e)
                return
            log.info("waiting for the Serve application: %s", e)
            stop.wait(every_s)
        except RuntimeError:
            if not stop.is_set():
                raise
            return  # stopping: run_until_signalled closed the scaler's HTTP client under this call


__all__ = [
    "DEFAULT_GROUPS",
    "build_kuberay_controller",
    "check_groups",
    "controller_command",
    "default_namespace",
    "load_api_client",
    "parse_groups",
    "reloader",
    "run_until_signalled",
]
