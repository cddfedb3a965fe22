#!/usr/bin/env bash
# End-to-end check of the Helm chart and the KubeRay backend on a real cluster (kind by default), which the test
# suite cannot do (no Kubernetes API server, no container runtime on the CI machines). It:
#   1. creates a kind cluster with one worker node labelled as an edge node (skip with CLUSTER=existing),
#   2. installs the KubeRay operator (the chart's prerequisite),
#   3. builds the image for CPU (no GPU in kind) and loads it into kind,
#   4. installs the chart with the edge-only values (the cloud pool needs GPUs),
#   5. waits for the RayService, calls the endpoint with curl (expects HTTP 200 and an x-elo-pool header),
#   6. sends a burst with `elo bench serve` and checks that the controller raised the edge-cpu worker group's
#      replicas, then that it brought them back to the minimum after the idle period,
#   7. prints the controller's log tail, and deletes the kind cluster unless KEEP=1.
# Needs: docker, kind, kubectl, helm (scripts/install_helm.sh puts helm and kubectl in .tools/bin), and this
# project's venv (`make venv`) for `elo bench`. Takes 15-30 minutes, mostly image build and pulls.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
CLUSTER="${CLUSTER:-elo-smoke}"
NS="${NS:-llm}"
RELEASE="${RELEASE:-elo}"
IMAGE="${IMAGE:-elo-local:smoke}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.3.2}"
VALUES=k8s/helm/elo/ci/edge-only-values.yaml
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "missing $tool (helm/kubectl: scripts/install_helm.sh)" >&2; exit 2; }
done

step() { printf '\n==> %s\n' "$*"; }
active_cluster() {  # the RayCluster the RayService serves from (the one the controller resizes)
  kubectl -n "$NS" get rayservice "$RELEASE" -o jsonpath='{.status.activeServiceStatus.rayClusterName}'
}
edge_group() {  # edge_group FIELD: a field of the edge-cpu worker group of the active RayCluster
  kubectl -n "$NS" get raycluster "$(active_cluster)" \
    -o jsonpath="{.spec.workerGroupSpecs[?(@.groupName==\"edge-cpu\")].$1}"
}
edge_replicas() { edge_group replicas; }
edge_ready_pods() {  # Running and Ready pods of the edge-cpu group (a Pending pod does not count)
  kubectl -n "$NS" get pods -l "ray.io/cluster=$(active_cluster),ray.io/group=edge-cpu" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true
}

if [ "$CLUSTER" != existing ]; then
  step "kind cluster $CLUSTER (a control plane and one edge worker)"
  kind create cluster --name "$CLUSTER" --wait 120s --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
    labels:
      node-role.kubernetes.io/edge: ""
      topology.kubernetes.io/zone: store-17
KIND
  trap '[ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"' EXIT
fi

step "KubeRay operator $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  --namespace kuberay-system --create-namespace --wait

step "image $IMAGE (CPU build)"
docker build -f k8s/Dockerfile -t "$IMAGE" --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu \
  --build-arg EXTRA=cpu --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
[ "$CLUSTER" = existing ] || kind load docker-image "$IMAGE" --name "$CLUSTER"

step "helm install $RELEASE ($VALUES)"
helm upgrade --install "$RELEASE" k8s/helm/elo -n "$NS" --create-namespace -f "$VALUES" \
  --set image.repository="${IMAGE%%:*}" --set image.tag="${IMAGE##*:}" --set image.pullPolicy=IfNotPresent \
  --set ray.head.resources.requests.cpu=500m --set ray.head.resources.requests.memory=2Gi \
  --set pools.edge.workerGroup.resources.requests.cpu=500m --set pools.edge.workerGroup.resources.requests.memory=1Gi

step "waiting for the RayService to serve (model build and load on first start)"
for _ in $(seq 1 120); do
  status="$(kubectl -n "$NS" get rayservice "$RELEASE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)"
  [ "$status" = True ] && break
  sleep 10
done
[ "$status" = True ] || { kubectl -n "$NS" describe rayservice "$RELEASE"; exit 1; }

step "calling the endpoint"
kubectl -n "$NS" port-forward "svc/$RELEASE-serve-svc" 8000:8000 >/dev/null 2>&1 &
pf=$!
trap 'kill $pf 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] || [ "$CLUSTER" = existing ] || kind delete cluster --name "$CLUSTER"' EXIT
sleep 3
curl -sS -D /tmp/elo-smoke-headers -o /tmp/elo-smoke-body http://127.0.0.1:8000/v1/chat/completions \
  -H 'Content-Type: application/json' \
  -d '{"model": "elo-demo", "messages": [{"role": "user", "content": "What are you?"}], "max_tokens": 32}'
grep -q "^HTTP/1.1 200" /tmp/elo-smoke-headers && grep -qi "^x-elo-pool: edge" /tmp/elo-smoke-headers \
  || { cat /tmp/elo-smoke-headers /tmp/elo-smoke-body; exit 1; }
echo "200 from the edge pool: $(cat /tmp/elo-smoke-body)"

before="$(edge_replicas)"
step "burst (edge-cpu worker group at $before pods)"
.venv/bin/elo bench serve --url http://127.0.0.1:8000/v1 -n 300 -c 24 --output-tokens 64 --out /tmp/elo-smoke-burst.json
peak="$before"
for _ in $(seq 1 30); do
  now="$(edge_replicas)"; [ "$now" -gt "$peak" ] && peak="$now"
  [ "$peak" -gt "$before" ] && break
  sleep 5
done
[ "$peak" -gt "$before" ] || { echo "the controller did not grow edge-cpu ($before pods)" >&2; exit 1; }
for _ in $(seq 1 60); do
  [ "$(edge_ready_pods)" -ge "$peak" ] && break
  sleep 5
done
[ "$(edge_ready_pods)" -ge "$peak" ] || { kubectl -n "$NS" get pods -o wide; echo "edge-cpu pods not Ready" >&2; exit 1; }
echo "edge-cpu grew to $peak pods, all Ready"

step "idle: waiting for edge-cpu to come back to its minimum"
min="$(edge_group minReplicas)"
for _ in $(seq 1 90); do
  [ "$(edge_replicas)" -le "$min" ] && break
  sleep 10
done
[ "$(edge_replicas)" -le "$min" ] || { echo "edge-cpu still at $(edge_replicas) pods after 15 min" >&2; exit 1; }
echo "edge-cpu back to $(edge_replicas) pods"

step "controller log (last lines)"
kubectl -n "$NS" logs "deploy/$RELEASE-controller" --tail 30
echo "OK: chart, KubeRay backend and controller work on this cluster"
