"""Fit the shared-cores model (``machines:`` in the sim config, orchestrator/control/machine.py) on this machine.

The model: while the cores the busy replicas ask for (``busy_cores`` each) exceed the machine's, every replica
runs at ``cores / demand`` of its profile's speed. Measured here, with `elo run --no-controller` and closed-loop
`elo bench serve` runs of --seconds each (same concurrency per replica, prompt 256, 64 tokens out):

1. one edge and one cloud replica: the edge pool loaded alone, the cloud pool alone, then both at once;
2. two edge replicas (the app config's ``pools.edge.replicas: 2``), both loaded.

Speeds are output tokens/s per replica against the pool alone on one replica. Two edge replicas at speed s2:
``busy_cores[edge] = cores / (2 s2)``; both pools at speed sb: ``busy_cores[cloud] = cores / sb - busy_cores[edge]``
(a speed of 1 gives only a bound: the demand fits the cores). Prints the speeds and the fitted values, writes JSON.

Usage: .venv/bin/python scripts/bench_shared_cores.py [--out bench-results/shared-cores] [--seconds 25]
       [--concurrency 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_run import BIN, ROOT, default_app_config, demo_tokenizer, elo_run


@dataclass
class Run:
    """One `elo run --no-controller` and the bench runs against it."""

    out: Path
    name: str
    url: str

    @classmethod
    @contextlib.contextmanager
    def of(cls, out: Path, name: str, config: str) -> Iterator[Run]:
        cfg = out / f"{name}.app.yaml"
        cfg.write_text(config, encoding="utf-8")
        args = ["--no-controller", "--config", str(cfg), "--state-dir", str(out / f"{name}.state")]
        with elo_run(args, out / f"{name}.elo-run.log") as (url, _):
            time.sleep(10)  # let the replicas settle
            yield cls(out, name, url)

    def bench(self, label: str, slo_class: str, concurrency: int, seconds: float, tokenizer: str) -> subprocess.Popen:
        path = self.out / f"{self.name}-{label}.json"
        return subprocess.Popen(
            # more requests than the deadline lets through (about 4 per second per request in flight here)
            [str(BIN / "elo"), "bench", "serve", "--url", f"{self.url}/v1",
             "-n", str(int(8 * concurrency * seconds)),
             "-c", str(concurrency), "--prompt-tokens", "256", "--output-tokens", "64", "--endpoint", "completions",
             "--tokenizer", tokenizer, "--deadline-s", str(seconds), "--out", str(path), "-H",
             f"x-slo-class:{slo_class}"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def result(self, label: str) -> dict[str, Any]:
        s = json.loads((self.out / f"{self.name}-{label}.json").read_text(encoding="utf-8"))["summary"]
        return {"output_tokens_per_s": s["output_tokens_per_s"], "requests": s["num_ok"],
                "pool_counts": s["pool_counts"]}


def measure(run: Run, loads: dict[str, tuple[str, int]], seconds: float, tokenizer: str) -> dict[str, Any]:
    """Run the given loads (label -> (SLO class, concurrency)) at once; their results."""
    time.sleep(6)
    procs = [run.bench(label, cls, c, seconds, tokenizer) for label, (cls, c) in loads.items()]
    for p in procs:
        p.wait()
    return {label: run.result(label) for label in loads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "shared-cores"))
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--concurrency", type=int, default=4, help="Requests in flight per replica")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = demo_tokenizer()
    c, s = args.concurrency, args.seconds
    prefs = "router:\n  slo_class_preferences: {e: edge, c: cloud}\n"
    two_edge = default_app_config({"edge": {"replicas": 2}}, {"slo_class_preferences": {"e": "edge", "c": "cloud"}})
    with Run.of(out, "one-each", prefs) as run:
        alone = {**measure(run, {"edge": ("e", c)}, s, tokenizer), **measure(run, {"cloud": ("c", c)}, s, tokenizer)}
        both = measure(run, {"edge": ("e", c), "cloud": ("c", c)}, s, tokenizer)
    with Run.of(out, "two-edge", two_edge) as run:
        two = measure(run, {"edge": ("e", 2 * c)}, s, tokenizer)
    cores = float(len(os.sched_getaffinity(0)))
    tps = {k: v["output_tokens_per_s"] for k, v in alone.items()}
    speed_two_edge = two["edge"]["output_tokens_per_s"] / 2 / tps["edge"]
    speed_both = {p: both[p]["output_tokens_per_s"] / tps[p] for p in ("edge", "cloud")}
    sb = sum(speed_both.values()) / 2
    edge_busy = cores / (2 * speed_two_edge) if speed_two_edge < 1 else cores / 2
    cloud_busy = max(0.0, cores / sb - edge_busy) if sb < 1 else max(0.0, cores - edge_busy)
    result = {"cores": cores, "concurrency_per_replica": c, "seconds": s, "alone": alone, "both": both,
              "two_edge": two, "speed_two_edge": round(speed_two_edge, 3),
              "speed_both": {k: round(v, 3) for k, v in speed_both.items()},
              "fitted_busy_cores": {"edge": round(edge_busy, 2), "cloud": round(cloud_busy, 2)},
              "bounds": {"edge": "upper" if speed_two_edge >= 1 else "fit", "cloud": "upper" if sb >= 1 else "fit"}}
    print(json.dumps(result, indent=2))
    (out / "shared_cores.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"sim config: machines: {{local: {{cores: {cores:g}, pools: {{cloud: {{busy_cores: {cloud_busy:.2f}}}, "
          f"edge: {{busy_cores: {edge_busy:.2f}}}}}}}}}")


if __name__ == "__main__":
    main()
