#!/usr/bin/env python
"""Benchmark (not a test): how long the simulator takes to replay the Azure code trace under the default policy,
and how that grows for traces 10x and 100x longer (the trace tiled end to end, so the load keeps its shape).

Usage: .venv/bin/python scripts/bench_sim_speed.py [--trace FILE] [--factors 1 10 100] [--out FILE]
Prints a table and writes JSON (default bench-results/sim_speed.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator.bench.trace import TraceRequest, load_trace  # noqa: E402
from orchestrator.control.config import PolicyFile  # noqa: E402
from orchestrator.sim.engine import prepare_workload, simulate, synthetic_trace  # noqa: E402
from orchestrator.sim.model import load_sim_config  # noqa: E402

DEFAULT_TRACE = ROOT / ".." / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"


def tile(trace: list[TraceRequest], times: int) -> list[TraceRequest]:
    """The trace repeated ``times`` times end to end (each copy starts one mean gap after the previous ends)."""
    span = trace[-1].arrival_s + trace[-1].arrival_s / max(1, len(trace) - 1)
    return [TraceRequest(r.arrival_s + k * span, r.prompt_tokens, r.output_tokens)
            for k in range(times) for r in trace]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "sim_speed.json")
    args = ap.parse_args()
    logging.getLogger("orchestrator.control").setLevel(logging.ERROR)

    if args.trace.exists():
        base, source = load_trace(args.trace), str(args.trace)
    else:  # same average rate and sizes as the Azure code trace, Poisson arrivals
        base, source = synthetic_trace(2.57, 3436, prompt_tokens=2048, output_tokens=28, seed=0), "synthetic"
    sim, policy = load_sim_config(), PolicyFile.default()
    rows = []
    print(f"trace: {source} ({len(base):,} requests, {base[-1].arrival_s:,.0f} s); policy: default "
          f"({policy.policy.name}); python {platform.python_version()}")
    print(f"{'factor':>6} {'requests':>10} {'simulated h':>11} {'wall s':>8} {'requests/s':>11} {'x sim time':>10} "
          f"{'ticks':>7} {'max RSS MB':>10}")
    for factor in args.factors:
        trace = tile(base, factor) if factor > 1 else base
        workload = prepare_workload(trace, max_prompt_tokens=sim.workload.max_prompt_tokens,
                                    max_output_tokens=sim.workload.max_output_tokens)
        t0 = time.perf_counter()
        result = simulate(workload, policy, sim)
        wall = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row = {"factor": factor, "requests": len(workload), "simulated_s": result.end_s, "wall_s": round(wall, 3),
               "requests_per_wall_s": round(len(workload) / wall), "speedup_vs_real_time": round(result.end_s / wall),
               "ticks": len(result.timeline["t_s"]), "max_rss_mb": round(rss_mb), "served": int(
                   (result.status == 200).sum())}
        rows.append(row)
        print(f"{factor:>6} {row['requests']:>10,} {result.end_s / 3600:>11.1f} {wall:>8.2f} "
              f"{row['requests_per_wall_s']:>11,} {row['speedup_vs_real_time']:>10,} {row['ticks']:>7,} "
              f"{row['max_rss_mb']:>10,}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"trace": source, "policy": "default_policy.yaml",
                                    "sim_config": "default_sim.yaml", "machine": platform.platform(),
                                    "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
