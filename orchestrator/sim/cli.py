"""The `elo simulate`, `elo tune`, `elo sim2real` and `elo bench profile` typer commands (heavy imports inside)."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()

TraceOpt = Annotated[Path, typer.Option(help="Trace: Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens), generic "
                                        "CSV (arrival_s,prompt_tokens,output_tokens) or JSONL with those keys.")]
PolicyOpt = Annotated[Path | None, typer.Option("--policy", "-p",
                                                help="Policy YAML (default: the shipped default_policy.yaml).")]
SimOpt = Annotated[Path | None, typer.Option(help="Sim config YAML (default: orchestrator/sim/default_sim.yaml).")]


def register(app: typer.Typer) -> None:
    """Add the simulator's top-level commands to the `elo` app."""
    app.command("simulate")(simulate)
    app.command("tune")(tune)
    app.command("sim2real")(sim2real)


def _fail(message: str, code: int = 2) -> typer.Exit:
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _quiet() -> None:
    # The controller logs every failed action as a warning; in a replay that is noise (the report counts them).
    logging.getLogger("orchestrator.control").setLevel(logging.ERROR)


def _check_positive(*options: tuple[str, float]) -> None:
    """Scale factors must be finite and > 0 (inf or nan would replay nothing, or forever)."""
    for hint, v in options:
        if not (math.isfinite(v) and v > 0):
            raise typer.BadParameter(f"must be a finite number > 0, got {v}", param_hint=hint)


def _load(trace: Path, policy: Path | None, sim_config: Path | None, *, trace_sort: bool, trace_start: int,
          trace_limit: int | None, max_duration_s: float | None, time_scale: float = 1.0) -> tuple[Any, Any, Any]:
    """(trace rows, policy file, sim config), or exit 2 naming the file, line and field at fault."""
    from orchestrator.bench.trace import TraceError, load_trace
    from orchestrator.control.config import ConfigError, PolicyFile
    from orchestrator.control.policy_loader import load_policy_file
    from orchestrator.sim.model import load_sim_config

    try:
        pf = load_policy_file(policy) if policy else PolicyFile.default()
        sim = load_sim_config(sim_config)
        sim.check_matches(pf, str(sim_config or "default sim config"))
    except ConfigError as e:
        raise _fail(str(e)) from e
    try:
        rows = load_trace(trace, sort=trace_sort, start=trace_start, limit=trace_limit,
                          max_duration_s=max_duration_s, time_scale=time_scale)
    except TraceError as e:
        raise _fail(str(e)) from e
    if not rows:
        raise _fail(f"{trace}: no rows left after --trace-start/--trace-limit/--max-duration-s")
    return rows, pf, sim


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "run"


def simulate(
    trace: TraceOpt,
    policy: PolicyOpt = None,
    sim_config: SimOpt = None,
    speedup: Annotated[float, typer.Option(help="Replay this many times faster (arrival times divided).")] = 1.0,
    rate_scale: Annotated[float, typer.Option(help="Scale the number of requests over the same time (seeded).")]
    = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed of startup delays and rate scaling (default: the sim "
                                             "config's).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for simulation.json and the PNGs.")] = Path("sim-results"),
    compare: Annotated[bool, typer.Option(help="Also run the baselines and the clairvoyant bound; costs as "
                                          "ratios to the bound.")] = False,
    max_prompt_tokens: Annotated[int | None, typer.Option(min=1, help="Clamp prompts (default: the sim "
                                                          "config's workload clamp).")] = None,
    max_output_tokens: Annotated[int | None, typer.Option(min=1, help="Clamp outputs (default: the sim "
                                                          "config's).")] = None,
    trace_sort: Annotated[bool, typer.Option(help="Sort an unsorted trace instead of failing.")] = False,
    trace_start: Annotated[int, typer.Option(min=0, help="Skip this many trace rows.")] = 0,
    trace_limit: Annotated[int | None, typer.Option(min=1, help="Keep at most this many rows.")] = None,
    max_duration_s: Annotated[float | None, typer.Option(min=0.0, help="Keep rows arriving within this many "
                                                         "seconds.")] = None,
    oracle_bucket_s: Annotated[float, typer.Option(min=1.0, help="Time resolution of the clairvoyant plan.")] = 10.0,
    target_attainment: Annotated[float, typer.Option(min=0.01, max=1.0, help="SLO attainment the clairvoyant bound "
                                                     "and the best static mix must reach in replay; a run "
                                                     "below it is marked 'misses SLO'.")] = 0.99,
    plots: Annotated[bool, typer.Option(help="Draw the PNGs.")] = True,
) -> None:
    """Replay a trace through the production router choice and controller on simulated pools; report cost, SLO
    attainment, latency, drops and scaling (table, JSON, PNG)."""
    from orchestrator.sim.baselines import comparison, policy_under_test
    from orchestrator.sim.engine import prepare_workload
    from orchestrator.sim.report import (
        compare_tables,
        plot_compare,
        plot_run,
        run_table,
        summarize,
        with_oracle_ratios,
        write_json,
    )

    _quiet()
    _check_positive(("--speedup", speedup), ("--rate-scale", rate_scale))
    rows, pf, sim = _load(trace, policy, sim_config, trace_sort=trace_sort, trace_start=trace_start,
                          trace_limit=trace_limit, max_duration_s=max_duration_s)
    seed_ = sim.seed if seed is None else seed
    workload = prepare_workload(
        rows, speedup=speedup, rate_scale=rate_scale, seed=seed_,
        max_prompt_tokens=max_prompt_tokens or sim.workload.max_prompt_tokens,
        max_output_tokens=max_output_tokens or sim.workload.max_output_tokens)
    placeholders = [n for n, p in sim.pools.items() if p.profile.placeholder]
    console.print(f"[bold]simulate[/bold] {trace}: {len(workload):,} requests over {workload.duration_s:,.0f} s"
                  f" (speedup {speedup:g}, rate x{rate_scale:g}; clamped {workload.clamped_prompts:,} prompts, "
                  f"{workload.clamped_outputs:,} outputs), policy {pf.policy.name} "
                  f"({policy or 'default_policy.yaml'}), seed {seed_}")
    if placeholders:
        console.print(f"[yellow]profiles of {', '.join(placeholders)} are PLACEHOLDERS, not measurements: "
                      "fit real ones with `elo bench profile`[/yellow]")
    specs = comparison(workload, pf, sim, bucket_s=oracle_bucket_s, attainment=target_attainment,
                       seed=seed_) if compare else [policy_under_test(pf, sim)]
    results, summaries = [], []
    for spec in specs:
        r = spec.run(workload, seed=seed_)
        results.append(r)
        summaries.append(summarize(r))
    if compare:
        summaries = with_oracle_ratios(summaries, specs[-1].label, target_attainment)
        for table in compare_tables(summaries, title=f"{trace.name}: policy vs baselines (cost as a ratio to "
                                    f"the clairvoyant bound meeting {target_attainment:.0%} SLO attainment)"):
            console.print(table)
        for s in summaries:
            for note in s.notes:
                console.print(f"  [dim]{s.label}: {note}[/dim]")
    else:
        console.print(run_table(summaries[0]))
    params = {"trace": str(trace), "requests": len(workload), "duration_s": workload.duration_s,
              "policy": str(policy or "default_policy.yaml"), "sim_config": str(sim_config or "default_sim.yaml"),
              "speedup": speedup, "rate_scale": rate_scale, "seed": seed_, "compare": compare,
              "clamped_prompts": workload.clamped_prompts, "clamped_outputs": workload.clamped_outputs,
              "placeholder_profiles": placeholders}
    written = [write_json(out / "simulation.json", summaries, params)]
    if plots:
        for r, s in zip(results, summaries, strict=True):
            written.append(plot_run(r, s, out / f"{_slug(s.label)}.png"))
        if compare:
            written.append(plot_compare(summaries, out / "compare.png", title=f"{trace.name}: {len(workload):,} "
                                        f"requests, policy {pf.policy.name} (darker) vs baselines"))
    console.print("wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False)


def tune(
    trace: TraceOpt,
    space: Annotated[Path, typer.Option(help="Search space YAML (see orchestrator/sim/tune.py).")],
    policy: PolicyOpt = None,
    sim_config: SimOpt = None,
    target_attainment: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="SLO attainment the best "
                                                            "policy must reach (default: the space's, else 0.95).")]
    = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulation (default: the sim config's).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for tune.json and pareto.png.")] = Path("tune-results"),
    best_out: Annotated[Path | None, typer.Option(help="Where to write the best policy (default OUT/"
                                                  "best_policy.yaml).")] = None,
    speedup: float = 1.0,
    rate_scale: float = 1.0,
    trace_sort: bool = False,
    trace_start: Annotated[int, typer.Option(min=0)] = 0,
    trace_limit: Annotated[int | None, typer.Option(min=1)] = None,
    max_duration_s: Annotated[float | None, typer.Option(min=0.0)] = None,
) -> None:
    """Search policy knobs (grid or seeded random) on a trace; print and draw the cost vs SLO-attainment Pareto
    front; write the cheapest policy meeting the target attainment as a policy file."""
    import json

    from rich.table import Table

    from orchestrator.sim._yaml import SimConfigError
    from orchestrator.sim.engine import prepare_workload
    from orchestrator.sim.tune import load_space, plot_front, write_policy
    from orchestrator.sim.tune import tune as run_tune

    _quiet()
    _check_positive(("--speedup", speedup), ("--rate-scale", rate_scale))
    rows, pf, sim = _load(trace, policy, sim_config, trace_sort=trace_sort, trace_start=trace_start,
                          trace_limit=trace_limit, max_duration_s=max_duration_s)
    try:
        sp = load_space(space, pf)
        sp.candidates()
    except (SimConfigError, ValueError) as e:
        raise _fail(str(e)) from e
    target = target_attainment if target_attainment is not None else (sp.target_attainment or 0.95)
    seed_ = sim.seed if seed is None else seed
    workload = prepare_workload(rows, speedup=speedup, rate_scale=rate_scale, seed=seed_,
                                max_prompt_tokens=sim.workload.max_prompt_tokens,
                                max_output_tokens=sim.workload.max_output_tokens)
    n = len(sp.candidates()) + 1
    console.print(f"[bold]tune[/bold] {trace}: {len(workload):,} requests, {n} candidates ({sp.method}, seed "
                  f"{sp.seed}), target SLO attainment {target:.0%}")

    def progress(c: Any) -> None:
        what = ", ".join(f"{k}={v}" for k, v in c.values.items()) or "policy as given"
        if c.summary is None:
            console.print(f"  #{c.index}: invalid ({c.error}) — {what}", markup=False, highlight=False)
        else:
            console.print(f"  #{c.index}: ${c.summary.cost_usd:,.3f}, SLO {c.summary.slo_attainment:.1%} — {what}",
                          markup=False, highlight=False)

    result = run_tune(workload, pf, sim, sp, target_attainment=target, seed=seed_, progress=progress)
    t = Table(title="Pareto front (cost vs SLO attainment)", header_style="bold", title_justify="left")
    for col in ("#", "cost $", "SLO att.", "TTFT p95", "E2E p95", "dropped", *sp.knobs):
        t.add_column(col, justify="right")
    for c in result.front:
        s = c.summary
        mark = "*" if result.best is not None and c.index == result.best.index else ""
        t.add_row(f"{c.index}{mark}", f"{s.cost_usd:,.3f}", f"{s.slo_attainment:.1%}",
                  f"{s.ttft.p95_s or 0:.2f} s", f"{s.e2e.p95_s or 0:.2f} s", str(s.dropped),
                  *(str(c.values.get(k, "(as given)")) for k in sp.knobs))
    console.print(t)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"trace": str(trace), "target_attainment": target, "space": sp.model_dump(mode="json"),
           "best": None if result.best is None else result.best.index,
           "candidates": [{"index": c.index, "values": c.values, "on_front": c.on_front, "error": c.error,
                           "summary": c.summary.model_dump(mode="json") if c.summary else None}
                          for c in result.candidates]}
    (out / "tune.json").write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    written = [out / "tune.json", plot_front(result, out / "pareto.png")]
    if result.best is None:
        console.print(f"wrote {', '.join(map(str, written))}", markup=False, highlight=False)
        raise _fail(f"no candidate reaches {target:.0%} SLO attainment; the best is "
                    f"{max((c.summary.slo_attainment for c in result.candidates if c.summary), default=0):.1%}", 1)
    b = result.best
    header = (f"Tuned by `elo tune` on {trace} ({len(workload):,} requests): candidate #{b.index}, "
              f"cost ${b.summary.cost_usd:,.3f}, SLO attainment {b.summary.slo_attainment:.1%} "
              f"(target {target:.0%}).\nChanged: " + (", ".join(f"{k}={v}" for k, v in b.values.items())
                                                     or "nothing (the policy as given is the best)"))
    written.append(write_policy(best_out or out / "best_policy.yaml", b.policy_file, header))
    console.print(f"best: #{b.index} — wrote {', '.join(map(str, written))}", markup=False, highlight=False)


def sim2real(
    trace: TraceOpt,
    slice_s: Annotated[float, typer.Option(min=1.0, help="Seconds of trace to replay (after --time-scale).")]
    = 120.0,
    trace_start: Annotated[int, typer.Option(min=0, help="First trace row of the slice.")] = 0,
    time_scale: Annotated[float, typer.Option(help="Trace speed-up factor (as elo bench --trace-time-scale).")]
    = 1.0,
    endpoint: Annotated[str, typer.Option(help="Base URL of a running `elo run` (without /v1).")]
    = "http://127.0.0.1:8000",
    policy: PolicyOpt = None,
    sim_config: SimOpt = None,
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer path for exact prompt lengths (the demo "
                                                  "model's folder, `elo model build` prints it).")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (default: the first of /v1/models).")] = None,
    poll_s: Annotated[float, typer.Option(min=0.1, help="How often /elo/pools is read.")] = 1.0,
    tail_s: Annotated[float, typer.Option(min=0.0, help="Keep measuring this long after the last response.")]
    = 30.0,
    live_json: Annotated[Path | None, typer.Option(help="Reuse the live half of an earlier --out file instead "
                                                   "of sending requests.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write both sides (and the live records) as JSON here.")]
    = None,
    rate_scale: Annotated[float, typer.Option(help="Scale the number of requests of the slice (each row kept "
                                              "floor(k) times plus once more with probability frac(k), seeded, as "
                                              "elo simulate); both halves replay the same requests.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the prompts, the rate scaling and the simulation.")] = 0,
    api_key: Annotated[str, typer.Option(envvar="ELO_API_KEY", help="Client key, when `elo run` has API keys on.")]
    = "EMPTY",
    admin_key: Annotated[str | None, typer.Option(envvar="ELO_ADMIN_KEY", help="Admin key for /elo/pools, when "
                                                  "`elo run` has API keys on (STATE_DIR/admin-key).")] = None,
) -> None:
    """Replay a trace slice live (through `elo bench`'s load generator, against `elo run`) and in the simulator;
    print predicted vs measured replica-seconds and latency percentiles side by side."""
    import asyncio

    from orchestrator.bench.workload import build_plan, load_prompt_factory
    from orchestrator.sim.engine import prepare_workload, simulate
    from orchestrator.sim.sim2real import (
        LiveConfig,
        comparison_table,
        live_side,
        load_live_run,
        run_live,
        sim_side,
        workload_rows,
        write_comparison,
    )

    _quiet()
    _check_positive(("--rate-scale", rate_scale), ("--time-scale", time_scale))
    rows, pf, sim = _load(trace, policy, sim_config, trace_sort=False, trace_start=trace_start, trace_limit=None,
                          max_duration_s=slice_s, time_scale=time_scale)
    clamp_p, clamp_o = sim.workload.max_prompt_tokens, sim.workload.max_output_tokens
    workload = prepare_workload(rows, rate_scale=rate_scale, seed=seed, max_prompt_tokens=clamp_p,
                                max_output_tokens=clamp_o)
    slice_params = {"trace": str(trace), "slice_s": slice_s, "trace_start": trace_start, "time_scale": time_scale,
                    "rate_scale": rate_scale, "seed": seed, "requests": len(workload)}
    if live_json is not None:
        try:
            live = load_live_run(live_json)
        except (OSError, ValueError) as e:
            raise _fail(f"{live_json}: not a recorded live run: {e}") from e
        differ = [f"{k} {live.params[k]!r} (now {v!r})" for k, v in slice_params.items()
                  if k in live.params and k != "trace" and live.params[k] != v]
        if differ or len(live.records) != len(workload):
            console.print(f"[yellow]{live_json} was recorded with another slice: " + (", ".join(differ) or
                          f"{len(live.records)} live requests, {len(workload)} simulated") + "[/yellow]")
    else:  # pragma: no cover - needs a running cluster
        try:
            factory = load_prompt_factory(tokenizer)
        except (OSError, ValueError) as e:
            raise typer.BadParameter(f"cannot load tokenizer {tokenizer!r}: {e}", param_hint="--tokenizer") from e
        plan = build_plan(trace=workload_rows(workload), prompt_factory=factory, seed=seed)
        console.print(f"[bold]live[/bold] {endpoint}: {len(plan.requests)} requests over {slice_s:g} s of "
                      f"{trace.name} (rate x{rate_scale:g}; then {tail_s:g} s more of pool readings)")
        try:
            live = asyncio.run(run_live(plan.requests, LiveConfig(endpoint, model=model, poll_s=poll_s,
                                                                  tail_s=tail_s, api_key=api_key,
                                                                  admin_key=admin_key), slice_params))
        except Exception as e:  # connection refused, no /elo/pools, ...
            raise _fail(f"live replay against {endpoint} failed: {e} (is `elo run` running?)", 1) from e
    initial = {p: live.initial_ready.get(p, sim.pools[p].initial_replicas) for p in sim.pools}
    result = simulate(workload, pf, sim, seed=seed, label="simulated", initial_replicas=initial)
    a, b = live_side(live), sim_side(result, live.window_s)
    scaled = f" (rate x{rate_scale:g} of {len(rows)} rows)" if rate_scale != 1.0 else ""
    console.print(comparison_table(a, b, title=f"sim-to-real: {len(workload)} requests{scaled} of {trace.name}, "
                                   f"pools at start {initial}"))
    if any(p.profile.placeholder for p in sim.pools.values()):
        console.print("[yellow]the sim config uses PLACEHOLDER profiles: fit them first (`elo bench profile`)"
                      "[/yellow]")
    if out is not None:
        params = {**slice_params, "endpoint": endpoint, "policy": str(policy or "default_policy.yaml"),
                  "sim_config": str(sim_config or "default_sim.yaml"), "initial_replicas": initial}
        console.print(f"wrote {write_comparison(out, a, b, live, params)}", markup=False, highlight=False)


def bench_profile(
    runs: Annotated[list[Path], typer.Argument(help="`elo bench serve -c N --records --out RUN.json` files, "
                                               "at several concurrencies (and two prompt lengths).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Profile YAML to write.")],
    name: Annotated[str | None, typer.Option(help="What was measured (default: the runs' URL and model).")]
    = None,
    pool: Annotated[str | None, typer.Option(help="Use only requests served by this pool (x-elo-pool).")] = None,
    max_concurrency: Annotated[int | None, typer.Option(min=1, help="Engine batch limit (default: the highest "
                                                        "concurrency measured).")] = None,
) -> None:
    """Fit a simulator replica profile (TTFT and TPOT vs concurrency and prompt length) to bench runs."""
    from rich.table import Table

    from orchestrator.bench.report import load_report
    from orchestrator.sim._yaml import SimConfigError
    from orchestrator.sim.profile import dump_profile, fit_profile, samples_from_bench

    samples = []
    try:
        for run in runs:
            samples += samples_from_bench(run, pool)
        first = load_report(runs[0])
    except (SimConfigError, ValueError) as e:
        raise _fail(str(e)) from e
    label = name or f"{first.params.get('model')} at {first.params.get('url')}" + (f", pool {pool}" if pool else "")
    try:
        fit = fit_profile(samples, name=label, source="fitted by `elo bench profile` from "
                          + ", ".join(str(r) for r in runs), max_concurrency=max_concurrency)
    except ValueError as e:
        raise _fail(f"cannot fit a profile: {e}") from e
    quality = fit.quality.lines() if fit.quality else []
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(dump_profile(fit.profile, "Replica profile for the simulator (orchestrator/sim/profile.py).\n"
                                   + "\n".join([*fit.notes, *quality])), encoding="utf-8")
    t = Table(title=f"{label}: prefill {fit.profile.prefill_tokens_per_s:,.0f} tokens/s", header_style="bold")
    for col in ("concurrency", "TTFT overhead", "TPOT"):
        t.add_column(col, justify="right")
    for p in fit.profile.points:
        t.add_row(str(p.concurrency), f"{p.ttft_overhead_s * 1000:,.1f} ms", f"{p.tpot_s * 1000:,.2f} ms")
    console.print(t)
    for note in fit.notes:
        console.print(f"  {note}", markup=False, highlight=False)
    if fit.quality is not None:
        q = Table(title="fit quality: median measured vs predicted by the profile (ms; no prefill queue)",
                  header_style="bold", title_justify="left")
        for col in ("conc.", "prompt", "reqs", "TTFT", "pred.", "err", "E2E", "pred.", "err", "1 chunk"):
            q.add_column(col, justify="right")
        ms = (lambda x: "-" if x is None else f"{x * 1000:,.0f}")  # noqa: E731
        for c in fit.quality.cells:
            e2e_err = c.e2e_error
            q.add_row(str(c.concurrency), str(c.prompt_tokens), str(c.requests), ms(c.ttft_measured_s),
                      ms(c.ttft_predicted_s), f"{c.ttft_error:+.0%}", ms(c.e2e_measured_s), ms(c.e2e_predicted_s),
                      "-" if e2e_err is None else f"{e2e_err:+.0%}", f"{c.one_chunk_share:.0%}")
        console.print(q)
        console.print(fit.quality.summary(), markup=False, highlight=False)
        if any(c.one_chunk_share >= 0.2 for c in fit.quality.cells):
            console.print("  'one chunk': requests whose whole output arrived with the first chunk (TTFT ~ E2E: the "
                          "stream stalled); their TTFT includes decoding", markup=False, highlight=False)
    console.print(f"wrote {output}", markup=False, highlight=False)
