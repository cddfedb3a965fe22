"""Present benchmark results: rich tables, the JSON result file, and a side-by-side comparison of two result files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from orchestrator.bench.stats import BenchSummary, Percentiles, RequestRecord

SCHEMA_VERSION = 1


class BenchReport(BaseModel):
    """Contents of a result JSON file: run parameters, summary and (optionally) per-request records."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    label: str
    created_at: str = Field(description="ISO-8601 UTC time the report was written")
    params: dict[str, Any] = Field(description="run parameters: url, model, mode, sizes, seed, ...")
    summary: BenchSummary
    records: list[RequestRecord] | None = None


def build_report(
    *,
    label: str,
    params: dict[str, Any],
    summary: BenchSummary,
    records: list[RequestRecord] | None = None,
    now: dt.datetime | None = None,
) -> BenchReport:
    """Assemble a report; pass ``records`` only when they should be written out."""
    created = (now or dt.datetime.now(dt.UTC)).isoformat()
    return BenchReport(label=label, created_at=created, params=params, summary=summary, records=records)


def write_report(report: BenchReport, path: str | Path) -> Path:
    """Write the report as indented JSON (parent directories are created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return p


def load_report(path: str | Path) -> BenchReport:
    """Read a result JSON file written by :func:`write_report`; raises ValueError on a bad file."""
    p = Path(path)
    try:
        return BenchReport.model_validate_json(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{p}: cannot read result file: {e.strerror or e}") from e
    except ValueError as e:  # pydantic.ValidationError is a ValueError
        raise ValueError(f"{p}: not a bench result file: {e}") from e


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def summary_table(summary: BenchSummary, title: str = "Benchmark") -> Table:
    """Two tables in one: throughput/errors, then latency percentiles (ms)."""
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    for name in ("p50", "p95", "p99", "mean", "max"):
        t.add_column(f"{name} (ms)", justify="right")
    for name, pct in (("TTFT", summary.ttft), ("TPOT", summary.tpot), ("E2E latency", summary.e2e)):
        if pct is None:
            t.add_row(name, "-", "-", "-", "-", "-")
        else:
            t.add_row(name, _ms(pct.p50_ms), _ms(pct.p95_ms), _ms(pct.p99_ms), _ms(pct.mean_ms), _ms(pct.max_ms))
    return t


def totals_table(summary: BenchSummary) -> Table:
    """Counts, throughput, errors by status and pool shares."""
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column("key", style="bold")
    t.add_column("value", justify="right")
    t.add_row("requests ok / sent / planned", f"{summary.num_ok} / {summary.num_sent} / {summary.num_planned}")
    t.add_row("wall time (s)", f"{summary.wall_s:,.2f}")
    t.add_row("requests/s", f"{summary.requests_per_s:,.2f}")
    t.add_row("output tokens/s", f"{summary.output_tokens_per_s:,.1f}")
    t.add_row("output / prompt tokens", f"{summary.total_output_tokens:,} / {summary.total_prompt_tokens:,}")
    if summary.errors_by_status:
        errs = ", ".join(f"{k}: {v}" for k, v in summary.errors_by_status.items())
        t.add_row("errors by status", f"[red]{errs}[/red]")
    if summary.pool_counts:
        share = ", ".join(
            f"{k}: {summary.pool_counts[k]} ({summary.pool_share[k]:.0%})" for k in summary.pool_counts
        )
        t.add_row("served by pool", share)
    return t


def print_summary(summary: BenchSummary, console: Console | None = None, title: str = "Benchmark") -> None:
    """Print the totals and the latency table."""
    c = console or Console()
    c.print(totals_table(summary))
    c.print(summary_table(summary, title=title))


def _pct(p: Percentiles | None, key: str) -> float | None:
    return None if p is None else float(getattr(p, key))


def comparison_rows(a: BenchReport, b: BenchReport) -> list[tuple[str, float | None, float | None, str]]:
    """Rows (metric, A, B, B vs A) for the side-by-side view; ratios for throughput, differences for latency."""
    sa, sb = a.summary, b.summary
    rows: list[tuple[str, float | None, float | None, str]] = []

    def ratio(name: str, x: float, y: float) -> None:
        rows.append((name, x, y, f"x{y / x:.2f}" if x > 0 else "-"))

    def diff(name: str, x: float | None, y: float | None) -> None:
        rows.append((name, x, y, "-" if x is None or y is None else f"{y - x:+,.1f}"))

    ratio("output tokens/s", sa.output_tokens_per_s, sb.output_tokens_per_s)
    ratio("requests/s", sa.requests_per_s, sb.requests_per_s)
    for metric, pa, pb in (("TTFT", sa.ttft, sb.ttft), ("TPOT", sa.tpot, sb.tpot), ("E2E", sa.e2e, sb.e2e)):
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            diff(f"{metric} {key.removesuffix('_ms')} (ms)", _pct(pa, key), _pct(pb, key))
    diff("errors", float(sa.num_errors), float(sb.num_errors))
    return rows


def comparison_table(a: BenchReport, b: BenchReport) -> Table:
    """Rich table comparing two runs: B relative to A."""
    t = Table(title=f"{a.label} (A) vs {b.label} (B)", header_style="bold")
    t.add_column("metric")
    t.add_column(f"A: {a.label}", justify="right")
    t.add_column(f"B: {b.label}", justify="right")
    t.add_column("B vs A", justify="right")
    for name, x, y, delta in comparison_rows(a, b):
        t.add_row(name, _ms(x), _ms(y), delta)
    return t


def print_comparison(a: BenchReport, b: BenchReport, console: Console | None = None) -> None:
    """Print the side-by-side comparison of two result files."""
    (console or Console()).print(comparison_table(a, b))
