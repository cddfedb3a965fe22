#!/usr/bin/env bash
# Side-by-side data-plane benchmark (raw vLLM, Ray Serve LLM, this project's cloud pool alone, both pools with the
# controller) at c = 1, 8, 32, 64; see scripts/bench_data_plane.py. Writes bench-results/data_plane.json.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
exec .venv/bin/python scripts/bench_data_plane.py "$@"
