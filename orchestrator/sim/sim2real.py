"""Sim-to-real check: replay a short trace slice live (``elo bench``'s load generator against a running
``elo run``, polling ``/elo/pools`` for ready replicas) and in the simulator from the same starting pools, and
set predicted and measured replica-seconds and latency percentiles side by side.

The comparison itself is pure (:func:`live_side`, :func:`sim_side`, :func:`comparison_rows`); only
:func:`run_live` does I/O, and it imports the HTTP clients when called.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from deployments.contract import RouterStats
from orchestrator.bench.stats import RequestRecord
from orchestrator.bench.trace import TraceRequest
from orchestrator.sim.engine import STATUS_LABELS, SimResult, Workload
from orchestrator.sim.report import Latency


class Side(BaseModel):
    """One side of the comparison, over the window [0, window_s] from the first request."""

    model_config = ConfigDict(frozen=True)

    label: str
    window_s: float
    requests: int
    ok: int
    by_status: dict[str, int]
    ready_replica_seconds: dict[str, float]
    served_by_pool: dict[str, int]
    ttft: Latency
    e2e: Latency


class LiveRun(BaseModel):
    """What the live half recorded: every request, and the pools' ready replicas over time."""

    endpoint: str
    records: list[RequestRecord]
    pool_samples: list[tuple[float, dict[str, int]]] = Field(
        description="(seconds since the load started, ready replicas per pool) from GET /elo/pools")
    window_s: float
    initial_ready: dict[str, int]
    params: dict[str, Any] = Field(default_factory=dict)



def integrate_ready(samples: Sequence[tuple[float, Mapping[str, int]]], window_s: float) -> dict[str, float]:
    """Replica-seconds per pool from piecewise-constant samples (each holds until the next), over [0, window_s]."""
    pts = sorted(samples, key=lambda s: s[0])
    pools = sorted({p for _, d in pts for p in d})
    out = dict.fromkeys(pools, 0.0)
    for k, (t, ready) in enumerate(pts):
        start = max(0.0, t)
        stop = min(window_s, pts[k + 1][0] if k + 1 < len(pts) else window_s)
        if stop > start:
            for p in pools:
                out[p] += ready.get(p, 0) * (stop - start)
    return out


def live_side(run: LiveRun) -> Side:
    ok = [r for r in run.records if r.ok]
    by_status: dict[str, int] = {}
    for r in run.records:
        key = "ok" if r.ok else str(r.status)
        by_status[key] = by_status.get(key, 0) + 1
    served: dict[str, int] = {}
    for r in ok:
        if r.pool:
            served[r.pool] = served.get(r.pool, 0) + 1
    return Side(label="live", window_s=run.window_s, requests=len(run.records), ok=len(ok), by_status=by_status,
                ready_replica_seconds=integrate_ready(run.pool_samples, run.window_s), served_by_pool=served,
                ttft=Latency.of([r.ttft_s for r in ok if r.ttft_s is not None]), e2e=Latency.of([r.e2e_s for r in ok]))


def sim_side(result: SimResult, window_s: float) -> Side:
    ok = result.status == 200
    by_status: dict[str, int] = {}
    for code, c in zip(*np.unique(result.status, return_counts=True), strict=True):
        key = "ok" if code == 200 else STATUS_LABELS.get(int(code), str(int(code))).split(" ")[0]
        by_status[key] = int(c)
    return Side(
        label="simulated", window_s=window_s, requests=len(result.status), ok=int(ok.sum()), by_status=by_status,
        ready_replica_seconds={p: result.ready_replica_seconds(p, window_s) for p in result.pool_names},
        served_by_pool={p: int((ok & (result.pool == i)).sum()) for i, p in enumerate(result.pool_names)},
        ttft=Latency.of(result.ttft_s[ok]), e2e=Latency.of(result.e2e_s[ok]))


def comparison_rows(live: Side, sim: Side) -> list[tuple[str, str, str, str]]:
    """(metric, live, simulated, simulated vs live): ratios for amounts, differences for latencies."""
    rows: list[tuple[str, str, str, str]] = []

    def ratio(name: str, a: float, b: float, fmt: str = "{:,.1f}") -> None:
        rows.append((name, fmt.format(a), fmt.format(b), f"x{b / a:.2f}" if a > 0 else "-"))

    def diff_ms(name: str, a: float | None, b: float | None) -> None:
        show = (lambda x: "-" if x is None else f"{x * 1000:,.0f} ms")  # noqa: E731
        delta = "-" if a is None or b is None else f"{(b - a) * 1000:+,.0f} ms"
        rows.append((name, show(a), show(b), delta))

    rows.append(("window (s)", f"{live.window_s:,.0f}", f"{sim.window_s:,.0f}", ""))
    ratio("requests served", live.ok, sim.ok, "{:,.0f}")
    ratio("requests not served", live.requests - live.ok, sim.requests - sim.ok, "{:,.0f}")
    for pool in sorted(set(live.ready_replica_seconds) | set(sim.ready_replica_seconds)):
        ratio(f"{pool} ready replica-seconds", live.ready_replica_seconds.get(pool, 0.0),
              sim.ready_replica_seconds.get(pool, 0.0))
        ratio(f"{pool} requests served", live.served_by_pool.get(pool, 0), sim.served_by_pool.get(pool, 0),
              "{:,.0f}")
    for name, a, b in (("TTFT", live.ttft, sim.ttft), ("E2E", live.e2e, sim.e2e)):
        for q in ("p50", "p95", "p99"):
            diff_ms(f"{name} {q}", getattr(a, f"{q}_s"), getattr(b, f"{q}_s"))
    return rows


def comparison_table(live: Side, sim: Side, title: str = "sim-to-real") -> Table:
    t = Table(title=title, header_style="bold", title_justify="left")
    for col in ("metric", "live (measured)", "simulated (predicted)", "sim vs live"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for row in comparison_rows(live, sim):
        t.add_row(*row)
    return t


def write_comparison(path: str | Path, live: Side, sim: Side, live_run: LiveRun | None,
                     params: Mapping[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"params": dict(params), "live": live.model_dump(mode="json"), "simulated": sim.model_dump(mode="json"),
           "live_run": live_run.model_dump(mode="json") if live_run else None}
    p.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return p


def load_live_run(path: str | Path) -> LiveRun:
    """A live half recorded by an earlier ``elo sim2real --out`` (its ``live_run``) or saved on its own."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return LiveRun.model_validate(doc.get("live_run", doc) if isinstance(doc, dict) else doc)


@dataclass(frozen=True)
class LiveConfig:
    endpoint: str  # base URL of `elo run`, without /v1
    model: str | None = None
    api_key: str = "EMPTY"
    admin_key: str | None = None  # for /elo/pools when `elo run` has API keys on
    poll_s: float = 1.0
    tail_s: float = 30.0  # keep polling after the last response (the controller scales down)
    timeout_s: float = 120.0
    endpoint_kind: str = "completions"  # exact prompt token counts (no chat template)


def workload_rows(workload: Workload) -> list[TraceRequest]:
    """The simulated requests as trace rows (after rate scaling and clamps): what the live half sends."""
    return [TraceRequest(float(a), int(p), int(o))
            for a, p, o in zip(workload.arrival_s, workload.prompt_tokens, workload.output_tokens, strict=True)]


async def run_live(plan_requests: Sequence[Any], cfg: LiveConfig,
                   params: Mapping[str, Any] | None = None) -> LiveRun:  # pragma: no cover - needs a cluster
    """Send the planned requests at their trace times and poll ``/elo/pools`` meanwhile."""
    import asyncio
    import time

    import httpx

    from orchestrator.bench.loadgen import LoadgenConfig, fetch_first_model, run_load

    base = cfg.endpoint.rstrip("/")
    admin = {"Authorization": f"Bearer {cfg.admin_key}"} if cfg.admin_key else {}
    async with httpx.AsyncClient(timeout=10.0) as client:
        async def ready_now() -> dict[str, int]:
            r = await client.get(f"{base}/elo/pools", headers=admin)
            r.raise_for_status()
            return {p: v.ready_replicas for p, v in RouterStats.model_validate_json(r.content).pools.items()}

        initial = await ready_now()
        model = cfg.model or await fetch_first_model(f"{base}/v1", cfg.api_key)
        samples: list[tuple[float, dict[str, int]]] = []
        t0 = time.perf_counter()
        started_at = time.time()  # wall clock of t0: aligns the run with the controller's decision log
        stop = asyncio.Event()

        async def poll() -> None:
            while not stop.is_set():
                try:
                    samples.append((time.perf_counter() - t0, await ready_now()))
                except httpx.HTTPError:
                    pass
                try:
                    await asyncio.wait_for(stop.wait(), cfg.poll_s)
                except TimeoutError:
                    pass

        poller = asyncio.create_task(poll())
        lg = LoadgenConfig(base_url=f"{base}/v1", model=model, api_key=cfg.api_key, endpoint=cfg.endpoint_kind,
                           timeout_s=cfg.timeout_s, ignore_eos=True)
        result = await run_load(list(plan_requests), lg)
        load_end = time.perf_counter() - t0
        await asyncio.sleep(cfg.tail_s)
        stop.set()
        await poller
    return LiveRun(endpoint=cfg.endpoint, records=list(result.records), pool_samples=samples,
                   window_s=load_end + cfg.tail_s, initial_ready=initial,
                   params={**(params or {}), "model": model, "poll_s": cfg.poll_s, "tail_s": cfg.tail_s,
                           "started_at_unix": started_at})


__all__ = ["LiveConfig", "LiveRun", "Side", "comparison_rows", "comparison_table", "integrate_ready",
           "live_side", "load_live_run", "run_live", "sim_side", "workload_rows", "write_comparison"]
