"""`elo status`: pools, replicas, queues, capacity at the SLO, cost and the controller's last decisions."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console, Group
from rich.table import Table

from deployments.contract import RouterStats
from orchestrator.control.journal import DecisionLog


class Decision(BaseModel):
    """One controller decision as `elo status --json` reports it (a decision-log record, wall-clock time)."""

    model_config = ConfigDict(extra="ignore")

    at: str = Field(description="Wall-clock time of the decision (ISO 8601, UTC).")
    changes: list[dict[str, Any]] = Field(default_factory=list)
    cost_usd_per_hour: float | None = None
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict, description="The policy's figures: demand, capacity, "
                                    "per-pool need (cost_aware: demand_rps, pools.<name>.capacity, ...).")
    errors: list[Any] = Field(default_factory=list)


class Status(BaseModel):
    """What `elo status --json` prints: the router's figures and the controller's last decisions."""

    endpoint: str
    router: RouterStats
    targets: dict[str, dict[str, int]] | None = Field(None, description="The last decision's targets per pool.")
    decisions: list[Decision] = Field(default_factory=list)


def wall_clock(unix_s: float | None) -> str:
    if unix_s is None:
        return "-"
    return dt.datetime.fromtimestamp(unix_s, dt.UTC).isoformat(timespec="seconds")


def collect(base_url: str, decisions_path: Path | None, last: int = 8, admin_key: str | None = None) -> Status:
    """Read the router and the decision log; raises httpx.HTTPError when the endpoint is not reachable."""
    headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    r = httpx.get(f"{base_url}/elo/pools", timeout=5, headers=headers)
    r.raise_for_status()
    router = RouterStats.model_validate(r.json())
    records = DecisionLog(decisions_path).tail(last) if decisions_path else []
    decisions = [Decision.model_validate({**rec, "at": wall_clock(rec.get("wall_time_s"))}) for rec in records]
    return Status(endpoint=base_url, router=router, targets=records[-1]["targets"] if records else None,
                  decisions=decisions)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}{unit}"
    return f"{v}{unit}"


def pools_table(status: Status) -> Table:
    t = Table(title="pools (router view; target from the controller's last decision)")
    for col in ("pool", "ready", "starting", "target", "busy", "queue", "slots", "SLO conc", "SLO rps/rep", "basis",
                "req/s", "429/s", "tok/s", "TTFT95", "E2E95"):
        t.add_column(col, justify="left" if col in ("pool", "basis") else "right")
    for name, p in status.router.pools.items():
        target = (status.targets or {}).get(name, {}).get("replicas")
        a = p.admission
        basis = a.basis + ("; yields its cores" if a.yields else "")
        t.add_row(name, _fmt(p.ready_replicas), _fmt(p.starting_replicas), _fmt(target), _fmt(p.in_flight),
                  _fmt(p.queued), _fmt(p.slots), _fmt(a.max_concurrency_per_replica if a.accepting else 0),
                  _fmt(a.capacity_rps_per_replica), basis, _fmt(p.arrival_rate_rps), _fmt(p.rejected_rate_rps),
                  _fmt(p.output_tokens_per_s), _fmt(p.ttft_p95_s, "s"), _fmt(p.e2e_p95_s, "s"))
    return t


def _need(d: Decision) -> str:
    """The structured figures of a decision, one line: demand, then per pool what it takes and needs."""
    det = d.details
    if not det:
        return d.reason
    parts = [f"demand {det['demand_rps']} rps"] if "demand_rps" in det else []
    for name, p in (det.get("pools") or {}).items():
        cap = p.get("capacity", {})
        parts.append(f"{name}: {p.get('offered_rps')} rps offered, {cap.get('concurrency_per_replica')}/rep at SLO "
                     f"= {cap.get('rps_per_replica')} rps/rep -> {p.get('replicas')}")
    return "; ".join(parts) or d.reason


def decisions_table(decisions: list[Decision]) -> Table:
    t = Table(title="last controller decisions")
    for col in ("time (UTC)", "changes", "$/h", "figures"):
        t.add_column(col)
    for d in decisions:
        changes = ", ".join(f"{c['pool']} {c['from']['replicas'] if c.get('from') else '?'}→{c['to']['replicas']}"
                            for c in d.changes) or "hold"
        if d.errors:
            changes += f" [red]({len(d.errors)} errors)[/]"
        t.add_row(d.at, changes, _fmt(d.cost_usd_per_hour), _need(d))
    return t


def render_status(base_url: str, decisions_path: Path | None, last: int = 8, admin_key: str | None = None) -> Group:
    """Everything `elo status` prints; raises httpx.HTTPError when the endpoint is not reachable."""
    s = collect(base_url, decisions_path, last, admin_key)
    plan = s.router.plan
    order = ", ".join(plan.fill_order) if plan and plan.fill_order else "configured order"
    cost = s.decisions[-1].cost_usd_per_hour if s.decisions else None
    summary = (f"endpoint {base_url} at {wall_clock(s.router.generated_at_unix_s)}   fill order: {order}   "
               f"planned cost: {_fmt(cost)} $/h")
    parts: list[Any] = [summary, pools_table(s)]
    if s.decisions:
        parts.append(decisions_table(s.decisions))
    elif decisions_path:
        parts.append(f"no controller decisions yet in {decisions_path}")
    return Group(*parts)


def print_status(base_url: str, decisions_path: Path | None, console: Console | None = None) -> None:
    (console or Console()).print(render_status(base_url, decisions_path))
