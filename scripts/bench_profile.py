"""Measure a pool's replica profile on this machine: `elo run --no-controller`, a grid of closed-loop `elo bench
serve` runs against one pool, then `elo bench profile` to fit them (the commands in the shipped profiles' headers).

Profiles are machine-specific (a 2-vCPU AMD EPYC VM and a 2-vCPU Xeon VM differ 2x on the demo model), so a
sim-to-real comparison should simulate with the profile of the machine it ran on:
`scripts/bench_sim2real.py --profile edge=OUT.yaml`.

Usage: .venv/bin/python scripts/bench_profile.py --pool edge|cloud [--out bench-results/profile-POOL]
       [--concurrency 1,2,4,8] [--prompts 32,256,896] [--output-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from pathlib import Path

from local_run import BIN, ROOT, demo_tokenizer, elo_run

NAMES = {"edge": "transformers CPU replica (CPUReplica), elo demo model, float32",
         "cloud": "vLLM CPU build (VLLMReplica, enforce_eager), elo demo model, float32"}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", choices=sorted(NAMES), required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--concurrency", default=None, help="default: 1,2,4,8 (edge), 1,4,8,16 (cloud)")
    ap.add_argument("--prompts", default="32,256,896")
    ap.add_argument("--output-tokens", type=int, default=64)
    args = ap.parse_args()
    out = Path(args.out or ROOT / "bench-results" / f"profile-{args.pool}")
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(c) for c in (args.concurrency or ("1,2,4,8" if args.pool == "edge" else "1,4,8,16")).split(",")]
    prompts = [int(p) for p in args.prompts.split(",")]
    tokenizer = demo_tokenizer()
    config = out / "app.yaml"
    config.write_text(f"router:\n  slo_class_preferences: {{profile: {args.pool}}}\n", encoding="utf-8")
    runs, started = [], time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    run_args = ["--no-controller", "--config", str(config), "--state-dir", str(out / "state")]
    with elo_run(run_args, out / "elo-run.log") as (url, _):
        time.sleep(10)  # let the replicas settle (vLLM warms up after it reports ready)
        for c in levels:
            for p in prompts:
                time.sleep(6)
                run = out / f"{args.pool}-c{c}-p{p}.json"
                subprocess.run([str(BIN / "elo"), "bench", "serve", "--url", f"{url}/v1",
                                "-n", str(max(24, 6 * c)), "-c", str(c), "--prompt-tokens", str(p),
                                "--output-tokens", str(args.output_tokens), "--endpoint", "completions",
                                "--tokenizer", tokenizer, "--deadline-s", "300", "--records", "--out", str(run),
                                "-H", "x-slo-class:profile"], check=True, capture_output=True, text=True)
                runs.append(run)
                print(f"{args.pool}: concurrency {c}, prompt {p}: {run}", flush=True)
    name = f"{NAMES[args.pool]}, {os.cpu_count()}-vCPU {cpu_model()}"
    profile = out / f"{args.pool}.yaml"
    fit = subprocess.run([str(BIN / "elo"), "bench", "profile", *map(str, runs), "--pool", args.pool,
                          "--max-concurrency", str(levels[-1]), "--name", name, "-o", str(profile)],
                         capture_output=True, text=True, check=True)
    print(fit.stdout)
    header = (f"# MEASURED {started} UTC by scripts/bench_profile.py --pool {args.pool} on this machine "
              f"({name}): elo run --no-controller,\n# closed-loop elo bench serve runs at concurrency {levels} x "
              f"prompt {prompts} tokens, {args.output_tokens} output tokens, fitted by elo bench profile.\n")
    profile.write_text(header + profile.read_text(encoding="utf-8"), encoding="utf-8")
    print(f"wrote {profile}")


if __name__ == "__main__":
    main()
