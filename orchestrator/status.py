"""`elo status`: pools, replicas, queues, cost and the controller's last decisions, as rich tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from rich.console import Console, Group
from rich.table import Table

from orchestrator.control.journal import DecisionLog


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def pools_table(pools: dict[str, dict[str, Any]], targets: dict[str, dict[str, int]] | None,
                observed: dict[str, dict[str, Any]] | None = None) -> Table:
    t = Table(title="pools (router view; nodes and target from the controller's last decision)")
    for col in ("pool", "ready", "starting", "target", "nodes", "busy", "queue", "slots", "req/s", "429/s", "tok/s",
                "TTFT95", "E2E95"):
        t.add_column(col, justify="left" if col == "pool" else "right")
    for name, p in pools.items():
        target = (targets or {}).get(name, {}).get("replicas")
        seen = (observed or {}).get(name)
        nodes = f"{seen['ready_nodes']}+{seen['starting_nodes']}" if seen else None
        t.add_row(name, _fmt(p.get("ready_replicas")), _fmt(p.get("starting_replicas")), _fmt(target), _fmt(nodes),
                  _fmt(p.get("in_flight")), _fmt(p.get("queued")),
                  _fmt(p.get("slots")), _fmt(p.get("arrival_rate_rps")), _fmt(p.get("rejected_rate_rps")),
                  _fmt(p.get("output_tokens_per_s")), _fmt(p.get("ttft_p95_s"), "s"), _fmt(p.get("e2e_p95_s"), "s"))
    return t


def decisions_table(records: list[dict[str, Any]]) -> Table:
    t = Table(title="last controller decisions")
    for col in ("t (s)", "changes", "$/h", "reason"):
        t.add_column(col)
    for r in records:
        changes = ", ".join(f"{c['pool']} {c['from']['replicas'] if c['from'] else '?'}→{c['to']['replicas']}"
                            for c in r.get("changes", [])) or "hold"
        if r.get("errors"):
            changes += f" [red]({len(r['errors'])} errors)[/]"
        t.add_row(_fmt(r.get("at_s")), changes, _fmt(r.get("cost_usd_per_hour")), r.get("reason", ""))
    return t


def render_status(base_url: str, decisions_path: Path | None, last: int = 8) -> Group:
    """Everything `elo status` prints; raises httpx.HTTPError when the endpoint is not reachable."""
    pools = httpx.get(f"{base_url}/elo/pools", timeout=5).json()
    routing = httpx.get(f"{base_url}/elo/routing", timeout=5).json().get("preferred_pool_by_class", {})
    records = DecisionLog(decisions_path).tail(last) if decisions_path else []
    targets = records[-1]["targets"] if records else None
    cost = records[-1]["cost_usd_per_hour"] if records else None
    summary = (f"endpoint {base_url}   routing preference: {routing or 'configured default'}   "
               f"planned cost: {_fmt(cost)} $/h")
    observed = records[-1].get("observed") if records else None
    parts: list[Any] = [summary, pools_table(pools, targets, observed)]
    if records:
        parts.append(decisions_table(records))
    elif decisions_path:
        parts.append(f"no controller decisions yet in {decisions_path}")
    return Group(*parts)


def print_status(base_url: str, decisions_path: Path | None, console: Console | None = None) -> None:
    (console or Console()).print(render_status(base_url, decisions_path))
