"""Data-plane benchmark: raw `vllm serve`, Ray Serve LLM (`build_openai_app`), this project's cloud pool alone and
this project with both pools and the controller, one after the other, on the demo model with the same engine
settings (enforce_eager, float32, max_model_len 1024, 1 GiB KV cache), streaming chat of exactly N output tokens
(ignore_eos), at each concurrency. Prints a table and writes bench-results/data_plane.json.

Each system gets a short warm-up first. For elo-both it is 8 requests per slot at c=32, so the controller has seen
load beyond light before the levels: they measure the fleet it settles on, not its first reaction.

Usage: .venv/bin/python scripts/bench_data_plane.py [--systems vllm,rayllm,elo-cloud,elo-both] [--concurrency 1,8,32,64]
Ray Serve LLM needs pyarrow, which the script installs into the venv on first use (`pip install pyarrow`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OUT = ROOT / "bench-results"
ENGINE = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024}
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}

RAY_LLM = """
import sys, time
if __name__ == "__main__":
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app
    ray.init(address="local", include_dashboard=False, num_cpus=8)  # logical CPUs: ingress + LLM server
    serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[2])})
    cfg = LLMConfig(model_loading_config={"model_id": "elo-demo", "model_source": sys.argv[1]},
                    accelerator_config={"kind": "cpu"},
                    deployment_config={"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}},
                    runtime_env={"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}},
                    engine_kwargs={"enforce_eager": True, "dtype": "float32", "max_model_len": 1024})
    serve.run(build_openai_app({"llm_configs": [cfg]}), blocking=False)
    print("Serving", flush=True)
    while True:
        time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, check=lambda r: r.status_code == 200) -> None:
    """Until ``url`` answers as ``check`` wants, or the server exits."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log tail:\n{log.read_text()[-3000:]}")
        try:
            if check(httpx.get(url, timeout=5)):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(system: str, model: str, port: int, work: Path) -> tuple[subprocess.Popen, str]:
    log = work / f"{system}.log"
    out = log.open("w")
    popen = dict(stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    if system == "vllm":
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                                 "--served-model-name", "elo-demo", "--host", "127.0.0.1", "--port", str(port),
                                 "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"], **popen)
        wait_ready(f"{base}/v1/models", proc, log)
    elif system == "rayllm":
        script = work / "rayllm.py"
        script.write_text(RAY_LLM)
        proc = subprocess.Popen([sys.executable, str(script), model, str(port)], **popen)
        wait_ready(f"{base}/v1/models", proc, log, lambda r: r.status_code == 200 and r.json().get("data"))
    else:
        args = [str(BIN / "elo"), "run", "--port", str(port), "--dashboard-port", str(free_port()), "--metrics-port", "0",
                "--state-dir", str(work / f"{system}-state")]
        if system == "elo-cloud":
            # The same engine settings as raw vLLM's (eager; dtype and max_model_len come from the model config).
            cfg = {"model": {"source": "demo"}, "pools": {"cloud": {"engine": "vllm", "max_ongoing_requests": 64,
                                                                    "max_queued_requests": 256,
                                                                    "engine_args": {"enforce_eager": True}}}}
            (work / "cloud.yaml").write_text(yaml.safe_dump(cfg))
            args += ["--no-controller", "--config", str(work / "cloud.yaml")]
        proc = subprocess.Popen(args, **popen)
        pools = {"elo-cloud": ["cloud"], "elo-both": ["cloud", "edge"]}[system]
        wait_ready(f"{base}/elo/pools", proc, log, lambda r: r.status_code == 200 and all(
            r.json()["pools"].get(p, {}).get("ready_replicas", 0) > 0 for p in pools))
    return proc, base


def bench(base: str, model: str, c: int, output_tokens: int, prompt_tokens: int, label: str, work: Path,
          per_slot: int) -> dict:
    n = max(16, per_slot * c)
    out = work / f"{label}-c{c}.json"
    subprocess.run([str(BIN / "elo"), "bench", "serve", "--url", f"{base}/v1", "--model", "elo-demo", "-n", str(n),
                    "-c", str(c), "--prompt-tokens", str(prompt_tokens), "--output-tokens", str(output_tokens),
                    "--tokenizer", model, "--seed", "0", "--label", f"{label} c={c}", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    s = json.loads(out.read_text())["summary"]
    return {"system": label, "concurrency": c, "requests": n, "ok": s["num_ok"], "errors": s["num_errors"],
            "errors_by_status": s["errors_by_status"],
            "output_tokens_per_s": round(s["output_tokens_per_s"], 1),
            "ttft_p50_ms": round(s["ttft"]["p50_ms"], 1) if s["ttft"] else None,
            "ttft_p95_ms": round(s["ttft"]["p95_ms"], 1) if s["ttft"] else None,
            "tpot_p50_ms": round(s["tpot"]["p50_ms"], 2) if s["tpot"] else None, "pool_counts": s["pool_counts"]}


def ensure_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pyarrow"], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", default="vllm,rayllm,elo-cloud,elo-both")
    ap.add_argument("--concurrency", default="1,8,32,64")
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--per-slot", type=int, default=16, help="requests per concurrency slot at each level (at least "
                    "16 requests): a longer run, less noise on a shared machine")
    args = ap.parse_args()
    model = subprocess.run([str(BIN / "elo"), "model", "build"], check=True, capture_output=True, text=True,
                           cwd=ROOT).stdout.strip().splitlines()[-1]
    levels = [int(c) for c in args.concurrency.split(",")]
    OUT.mkdir(exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="elo-bench-") as tmp:
        work = Path(tmp)
        for system in args.systems.split(","):
            if system == "rayllm":
                ensure_pyarrow()
            print(f"==> {system}", flush=True)
            proc, base = start(system, model, free_port(), work)
            try:
                if system == "elo-both":
                    warm = bench(base, model, 32, args.output_tokens, args.prompt_tokens, f"{system}-warmup", work,
                                 per_slot=8)
                    print(f"warm-up: {warm['pool_counts']}", flush=True)
                else:
                    bench(base, model, 4, 8, args.prompt_tokens, f"{system}-warmup", work, per_slot=1)
                for c in levels:
                    row = bench(base, model, c, args.output_tokens, args.prompt_tokens, system, work, args.per_slot)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop(proc)
    raw = {r["concurrency"]: r for r in rows if r["system"] == "vllm"}
    for r in rows:
        ref = raw.get(r["concurrency"])
        r["tokens_per_s_vs_vllm"] = round(r["output_tokens_per_s"] / ref["output_tokens_per_s"], 3) if ref else None
        r["ttft_p50_added_ms"] = (round(r["ttft_p50_ms"] - ref["ttft_p50_ms"], 1)
                                  if ref and r["ttft_p50_ms"] is not None else None)
    print(f"\n{'system':<10} {'c':>3} {'tok/s':>8} {'x vllm':>7} {'TTFT p50':>9} {'+ms':>7} {'TTFT p95':>9} pools")
    for r in rows:
        print(f"{r['system']:<10} {r['concurrency']:>3} {r['output_tokens_per_s']:>8} "
              f"{r['tokens_per_s_vs_vllm'] or '-':>7} {r['ttft_p50_ms']:>9} {r['ttft_p50_added_ms'] or '-':>7} "
              f"{r['ttft_p95_ms']:>9} {r['pool_counts']}")
    (OUT / "data_plane.json").write_text(json.dumps({"engine": ENGINE, "output_tokens": args.output_tokens,
                                                     "prompt_tokens": args.prompt_tokens, "rows": rows}, indent=2))
    print(f"\nwrote {OUT / 'data_plane.json'}")


if __name__ == "__main__":
    main()
