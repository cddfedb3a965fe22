"""The `elo policy` typer commands: validate a scaling policy file, print its JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from orchestrator.control.config import ConfigError, PolicyFile, policy_json_schema
from orchestrator.control.policy_loader import load_policy_file

policy_app = typer.Typer(help="Scaling policy files: validate them, export their JSON schema.", no_args_is_help=True)
console = Console()


@policy_app.command("validate")
def validate(file: Path = typer.Argument(..., help="Policy YAML to check.")) -> None:
    """Check a policy file (fields, bounds, prices, policy name and knobs) and summarise it; exit 2 on error."""
    try:
        cfg = load_policy_file(file)
    except ConfigError as e:
        console.print(str(e), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from e
    _print_summary(file, cfg)


@policy_app.command("schema")
def schema(out: Path | None = typer.Option(None, "--out", "-o", help="Write the schema here instead of stdout.")) -> None:
    """Print the JSON schema of policy files (generated from the same models the controller validates with)."""
    text = json.dumps(policy_json_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        console.print(f"wrote {out}", markup=False)


def _knobs_with_defaults(cfg: PolicyFile) -> dict:
    from orchestrator.control.policies.registry import resolve_policy

    model = getattr(resolve_policy(cfg.policy.name), "Knobs", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_validate(cfg.policy.knobs).model_dump()
    return dict(cfg.policy.knobs)


def _print_summary(file: Path, cfg: PolicyFile) -> None:
    table = Table(title=f"{file}: valid policy", title_justify="left")
    for col in ("pool", "engine", "$/h per replica", "replicas", "per node", "startup s", "target ongoing",
                "max prompt/output tokens"):
        table.add_column(col, justify="left" if col in ("pool", "engine") else "right")
    for name, p in cfg.pools.items():
        elig = f"{p.max_prompt_tokens or '-'}/{p.max_output_tokens or '-'}"
        table.add_row(name, p.engine, f"{p.cost_per_hour_usd:g}", f"{p.min_replicas}-{p.max_replicas}",
                      str(p.replicas_per_node), f"{p.startup_s:g}", f"{p.target_ongoing_requests_per_replica:g}", elig)
    console.print(table)
    g = cfg.guardrails
    knobs = ", ".join(f"{k}={v}" for k, v in _knobs_with_defaults(cfg).items()) or "none"
    budget = "no cap" if g.budget_usd_per_hour is None else f"cap {g.budget_usd_per_hour:g} $/h"
    steps = ", ".join(f"{p}: {s}" for p, s in g.max_step_per_tick_by_pool.items())
    lines = [
        f"SLO: ttft p95 <= {cfg.slo.ttft_p95_s:g} s, e2e p95 <= {cfg.slo.e2e_p95_s:g} s",
        f"policy: {cfg.policy.name} ({knobs})",
        f"guardrails: max step {g.max_step_per_tick}/tick" + (f" ({steps})" if steps else "")
        + f", upscale delay {g.upscale_delay_s:g} s, downscale delay {g.downscale_delay_s:g} s, "
        f"cooldown {g.cooldown_s:g} s, stale after {g.stale_after_s:g} s",
        f"fleet cost: {cfg.min_fleet_cost_usd_per_hour:.2f}-{cfg.max_fleet_cost_usd_per_hour:.2f} $/h, budget: {budget}",
        f"tick every {cfg.tick_interval_s:g} s",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)
