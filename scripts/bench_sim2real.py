"""Sim-to-real benchmark: two short slices of the public trace, live against `elo run` and in the simulator.

Starts `elo run` per slice (the embedded default: shipped app config and policy, fresh controller state) and
replays the slice with `elo sim2real` (live, then the simulator from the same starting pools). Each slice's live half is
then simulated once more with the shared-core model switched off (`machines: {}`: every replica independent
capacity, as before the model existed), so one live run gives the table before and after. Prints, per slice and
model, live vs simulated TTFT/E2E p50/p95 (relative error), ready replica-seconds per pool (relative error) and
the pool split (percentage points), checks them against the goals (25%, 15%, 10 pp), and lists the
controller's decisions on the live run's shared cores (replicas, cores, what it refused to add and why). Writes
everything as JSON.

Profiles are machine-specific: simulate with the profile of the machine the live half ran on
(`scripts/bench_profile.py`, then `--profile edge=PATH`). `--live-from DIR` re-simulates the live halves of an
earlier run (its DIR/SLICE-shared.json) without starting `elo run`.

Usage: .venv/bin/python scripts/bench_sim2real.py [--out bench-results/sim2real] [--slices burst,steady]
       [--profile POOL=PATH ...] [--live-from DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from local_run import BIN, ROOT, default_app_config, demo_tokenizer, elo_run

TRACE = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"
SIM_CONFIG = ROOT / "orchestrator" / "sim" / "default_sim.yaml"
# (first trace row, rate scale): rows 63.. are the trace's first burst (741 requests in 120 s, 10 s peaks of
# 14 rps); rows 5740.. a calmer stretch (287 requests in 120 s). Scaled to rates the 2-core machine carries;
# "burst-heavy" and "burst-peak" are the burst at half and full rate (peaks of 7 and 14 rps).
SLICES = {"burst": (63, 0.2), "steady": (5740, 0.5), "burst-heavy": (63, 0.5), "burst-peak": (63, 1.0)}
GOALS = {"latency_rel": 0.25, "replica_seconds_rel": 0.15, "split_pp": 10.0}


def sim_configs(out_dir: Path, profiles: dict[str, str], busy_cores: dict[str, str]) -> tuple[Path, Path]:
    """The default sim config (shared cores) and the same without its shared machine (independent replicas),
    profile paths made absolute and replaced by ``profiles`` (pool -> path) where given, the shared machine's
    ``busy_cores`` by ``busy_cores`` (pool -> cores, e.g. fitted by scripts/bench_shared_cores.py)."""
    paths = []
    for tag in ("shared", "independent"):
        doc = yaml.safe_load(SIM_CONFIG.read_text(encoding="utf-8"))
        if tag == "independent":
            doc["machines"] = {}
        for machine in doc.get("machines", {}).values():
            for name, cores in busy_cores.items():
                machine["pools"][name]["busy_cores"] = float(cores)
        for name, pool in doc["pools"].items():
            if name in profiles:
                pool["profile"] = str(Path(profiles[name]).resolve())
            elif isinstance(pool.get("profile"), str):
                pool["profile"] = str((SIM_CONFIG.parent / pool["profile"]).resolve())
        path = out_dir / f"sim-{tag}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


def rel(live: float | None, sim: float | None) -> float | None:
    return None if not live or sim is None else (sim - live) / live


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """Live vs simulated figures of one `elo sim2real --out` file, with the errors the goals are on."""
    a, b = doc["live"], doc["simulated"]
    out: dict[str, Any] = {"requests": a["requests"], "ok": {"live": a["ok"], "sim": b["ok"]}}
    for m in ("ttft", "e2e"):
        for q in ("p50", "p95"):
            la, sb = a[m][f"{q}_s"], b[m][f"{q}_s"]
            out[f"{m}_{q}_s"] = {"live": la, "sim": sb, "rel": rel(la, sb)}
    pools = sorted(set(a["ready_replica_seconds"]) | set(b["ready_replica_seconds"]))
    for p in pools:
        la, sb = a["ready_replica_seconds"].get(p, 0.0), b["ready_replica_seconds"].get(p, 0.0)
        out[f"{p}_replica_seconds"] = {"live": la, "sim": sb, "rel": rel(la, sb)}
        share_a = 100.0 * a["served_by_pool"].get(p, 0) / max(1, a["ok"])
        share_b = 100.0 * b["served_by_pool"].get(p, 0) / max(1, b["ok"])
        out[f"{p}_share_pct"] = {"live": round(share_a, 1), "sim": round(share_b, 1), "pp": round(share_b - share_a, 1)}
    lat = [abs(v["rel"]) for k, v in out.items() if k.endswith("_s") and isinstance(v, dict) and v.get("rel") is not None]
    rs = [abs(v["rel"]) for k, v in out.items() if k.endswith("_replica_seconds") and v["rel"] is not None]
    split = [abs(v["pp"]) for k, v in out.items() if k.endswith("_share_pct")]
    out["goals_met"] = {"latency": bool(lat) and max(lat) <= GOALS["latency_rel"],
                        "replica_seconds": bool(rs) and max(rs) <= GOALS["replica_seconds_rel"],
                        "split": bool(split) and max(split) <= GOALS["split_pp"]}
    return out


def shared_core_decisions(path: Path, since_unix_s: float) -> list[dict[str, Any]]:
    """The controller's decisions of the run that resized a pool or refused a replica on the shared cores."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("wall_time_s", 0) < since_unix_s or not (r.get("changes") or r.get("refused")):
            continue
        machine = {p: d.get("machine") for p, d in ((r.get("details") or {}).get("pools") or {}).items()}
        out.append({"wall_time_s": r["wall_time_s"], "changes": r["changes"], "refused": r.get("refused") or {},
                    "replicas": {p: o["ready_replicas"] + o["starting_replicas"] for p, o in r["observed"].items()},
                    "machine": machine})
    return out


def live_config(out_dir: Path, busy_cores: dict[str, str]) -> list[str]:
    """`elo run` arguments: the embedded default, with ``busy_cores`` (pool -> cores) in its app config when given,
    so that the live controller assumes what the simulated one does."""
    if not busy_cores:
        return []
    path = out_dir / "app.yaml"
    path.write_text(default_app_config({p: {"busy_cores": float(c)} for p, c in busy_cores.items()}), encoding="utf-8")
    return ["--config", str(path)]


def sim2real(url: str, slice_name: str, out_dir: Path, tokenizer: Path, sim_config: Path, tag: str,
             live_json: Path | None) -> dict[str, Any]:
    start, rate = SLICES[slice_name]
    out = out_dir / f"{slice_name}-{tag}.json"
    cmd = [str(BIN / "elo"), "sim2real", "--trace", str(TRACE), "--trace-start", str(start), "--slice-s", "120",
           "--rate-scale", str(rate), "--endpoint", url, "--tokenizer", str(tokenizer), "--out", str(out),
           "--sim-config", str(sim_config)]
    if live_json:
        cmd += ["--live-json", str(live_json)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    print(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"elo sim2real failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(out.read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "sim2real"))
    ap.add_argument("--slices", default="burst,steady", help="Comma-separated: " + ", ".join(SLICES))
    ap.add_argument("--profile", action="append", default=[], metavar="POOL=PATH",
                    help="Simulate POOL with this profile (one measured on this machine)")
    ap.add_argument("--busy-cores", action="append", default=[], metavar="POOL=CORES",
                    help="This busy_cores for POOL (scripts/bench_shared_cores.py), in the simulated machine and "
                    "in the live run's app config (pools.POOL.busy_cores)")
    ap.add_argument("--live-from", default=None, metavar="DIR", help="Reuse the live halves of an earlier run")
    args = ap.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    busy = dict(b.split("=", 1) for b in args.busy_cores)
    shared_cfg, independent = sim_configs(out_dir, dict(p.split("=", 1) for p in args.profile), busy)
    tokenizer = Path(demo_tokenizer())
    result: dict[str, Any] = {"trace": str(TRACE), "goals": GOALS, "profiles": args.profile,
                              "busy_cores": args.busy_cores, "slices": {}}
    if args.live_from:
        for name in args.slices.split(","):
            live = Path(args.live_from) / f"{name}-shared.json"
            shared = sim2real("http://127.0.0.1:1", name, out_dir, tokenizer, shared_cfg, "shared", live)
            before = sim2real("http://127.0.0.1:1", name, out_dir, tokenizer, independent, "independent", live)
            result["slices"][name] = {"params": shared["params"], "before_independent_model": figures(before),
                                      "after_shared_cores_model": figures(shared), "controller_on_shared_cores": []}
        report(result, out_dir)
        return
    state_dir = out_dir / "controller"
    for name in args.slices.split(","):  # each slice on a fresh `elo run`: the simulation starts fresh too
        for f in state_dir.glob("*"):  # fresh controller state: the shipped policy from its start
            f.unlink()
        with elo_run([*live_config(out_dir, busy), "--state-dir", str(state_dir)],
                     out_dir / f"elo-run-{name}.log") as (url, _):
            t0 = time.time()
            shared = sim2real(url, name, out_dir, tokenizer, shared_cfg, "shared", None)
            before = sim2real(url, name, out_dir, tokenizer, independent, "independent",
                              out_dir / f"{name}-shared.json")
            result["slices"][name] = {
                "params": shared["params"], "before_independent_model": figures(before),
                "after_shared_cores_model": figures(shared),
                "controller_on_shared_cores": shared_core_decisions(state_dir / "decisions.jsonl", t0)}
    report(result, out_dir)


def report(result: dict[str, Any], out_dir: Path) -> None:
    for name, s in result["slices"].items():
        for model in ("before_independent_model", "after_shared_cores_model"):
            f = s[model]
            print(f"{name} / {model}: goals {f['goals_met']}")
            for k, v in f.items():
                if isinstance(v, dict) and "live" in v:
                    err = v.get("rel", v.get("pp"))
                    print(f"  {k:26s} live {v['live']!s:>10.10s}  sim {v['sim']!s:>10.10s}  "
                          + ("" if err is None else (f"{err:+.0%}" if "rel" in v else f"{err:+.1f} pp")))
        for d in s["controller_on_shared_cores"]:
            print(f"  decision {time.strftime('%H:%M:%S', time.localtime(d['wall_time_s']))}: replicas "
                  f"{d['replicas']}, changes {[(c['pool'], c['to']['replicas']) for c in d['changes']]}, "
                  f"refused {d['refused']}")
    (out_dir / "summary.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {out_dir / 'summary.json'}")


if __name__ == "__main__":
    main()
