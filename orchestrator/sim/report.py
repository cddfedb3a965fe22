"""Present simulation results: the summary of a run (cost, SLO attainment, latency, drops, scaling), a rich table
of one or several runs (with cost ratios to the clairvoyant bound), the JSON file, and a PNG a person can read at
a glance (arrival rate, replicas per pool, latency over time)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from orchestrator.sim.engine import STATUS_LABELS, SimResult

SCHEMA_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class Latency(_Frozen):
    """Percentiles of served requests, seconds (None: nothing served)."""

    p50_s: float | None
    p95_s: float | None
    p99_s: float | None

    @classmethod
    def of(cls, values_s: Sequence[float] | np.ndarray) -> Latency:
        """p50/p95/p99 of ``values_s`` (linear interpolation); all None when empty."""
        if len(values_s) == 0:
            return cls(p50_s=None, p95_s=None, p99_s=None)
        p50, p95, p99 = (float(x) for x in np.percentile(np.asarray(values_s, float), (50, 95, 99)))
        return cls(p50_s=p50, p95_s=p95, p99_s=p99)


class PoolSummary(_Frozen):
    replica_hours: float = Field(description="Replica lifetimes (asked -> gone), hours.")
    ready_replica_hours: float = Field(description="Time replicas served (ready -> stopped), hours.")
    node_hours: float
    cost_usd: float = Field(description="Node-hours x replicas_per_node x cost_per_hour_usd.")
    served: int = Field(description="Requests that completed on this pool.")
    scale_ups: int
    scale_downs: int
    max_replicas: int


MISS_WINDOW_S = 30.0  # the width of the window a run's SLO misses are located in


class MissWindow(_Frozen):
    """Where a run's SLO misses cluster: the window of arrivals with the most of them."""

    start_s: float = Field(description="Start of the window (arrival time, seconds into the trace).")
    width_s: float
    misses: int = Field(description="Requests arriving in the window that missed the SLO.")
    arrivals: int = Field(description="Requests arriving in the window.")
    share_of_misses: float = Field(description="The window's misses over all of the run's misses.")

    def describe(self) -> str:
        return (f"{self.share_of_misses:.0%} of misses at {self.start_s:,.0f}-{self.start_s + self.width_s:,.0f} s "
                f"({self.misses} of {self.arrivals} arrivals)")


class RunSummary(_Frozen):
    """The report of one run; ``*_ratio_to_oracle`` are filled in a comparison."""

    label: str
    policy: str
    requests: int
    served: int
    status_counts: dict[str, int] = Field(description="Requests by outcome (ok, 429 busy, 503, 400, timeout).")
    rejected_429: int
    dropped: int = Field(description="Requests never served (429, 503, 400 and timeouts).")
    duration_s: float = Field(description="Simulated time: 0 to the last completion (or the end of ticking).")
    cost_usd: float
    cost_per_hour_usd: float
    cost_per_1m_output_tokens_usd: float | None = Field(description="Cost / output tokens served x 1e6.")
    output_tokens_served: int
    slo_ttft_s: float
    slo_e2e_s: float
    slo_attainment: float = Field(description="Share of all requests with TTFT and E2E within the SLO targets "
                                  "(a dropped request misses).")
    ttft_attainment: float
    e2e_attainment: float
    ttft: Latency
    e2e: Latency
    pools: dict[str, PoolSummary]
    scaling_actions: int = Field(description="Replica-count changes the controller applied (all pools).")
    wall_s: float = Field(description="Seconds the simulation took.")
    placeholder_profiles: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    cost_ratio_to_oracle: float | None = None
    target_attainment: float | None = Field(None, description="The SLO attainment a comparison asks of every run "
                                            "(the bound's); null outside a comparison.")
    worst_miss_window: MissWindow | None = Field(
        None, description="The 30 s of arrivals with the most SLO misses (a burst no replica could start for "
        "shows here); null when no request missed.")

    @property
    def misses_target(self) -> bool:
        return self.target_attainment is not None and self.slo_attainment < self.target_attainment - 1e-12


def summarize(result: SimResult) -> RunSummary:
    """The report fields of one run."""
    st = result.status
    ok = st == 200
    n = len(st)
    ttft_ok = ok & (result.ttft_s <= result.slo.ttft_p95_s)
    e2e_ok = ok & (result.e2e_s <= result.slo.e2e_p95_s)
    out_tokens = int(result.workload.output_tokens[ok].sum()) if n else 0
    cost = sum(a.cost_usd for a in result.accounts.values())
    counts: dict[str, int] = {}
    for code, c in zip(*np.unique(st, return_counts=True), strict=True):
        counts[STATUS_LABELS.get(int(code), str(int(code)))] = int(c)
    pools = {}
    for i, (name, a) in enumerate(result.accounts.items()):
        pools[name] = PoolSummary(
            replica_hours=a.replica_seconds / 3600, ready_replica_hours=a.ready_replica_seconds / 3600,
            node_hours=a.node_seconds / 3600, cost_usd=a.cost_usd, served=int((ok & (result.pool == i)).sum()),
            scale_ups=a.scale_ups, scale_downs=a.scale_downs, max_replicas=a.max_replicas)
    return RunSummary(
        label=result.label, policy=result.policy_name, requests=n, served=int(ok.sum()), status_counts=counts,
        rejected_429=int((st == 429).sum()), dropped=int(n - ok.sum()), duration_s=result.end_s,
        cost_usd=cost, cost_per_hour_usd=cost / (result.end_s / 3600) if result.end_s > 0 else 0.0,
        cost_per_1m_output_tokens_usd=cost / out_tokens * 1e6 if out_tokens else None,
        output_tokens_served=out_tokens, slo_ttft_s=result.slo.ttft_p95_s, slo_e2e_s=result.slo.e2e_p95_s,
        slo_attainment=float((ttft_ok & e2e_ok).sum() / n) if n else 1.0,
        ttft_attainment=float(ttft_ok.sum() / n) if n else 1.0,
        e2e_attainment=float(e2e_ok.sum() / n) if n else 1.0,
        ttft=Latency.of(result.ttft_s[ok]), e2e=Latency.of(result.e2e_s[ok]), pools=pools,
        scaling_actions=sum(a.scale_ups + a.scale_downs for a in result.accounts.values()),
        wall_s=result.wall_s, placeholder_profiles=list(result.placeholder_profiles), notes=list(result.notes),
        worst_miss_window=_worst_miss_window(result.workload.arrival_s, ~(ttft_ok & e2e_ok)),
    )


def _worst_miss_window(arrival_s: np.ndarray, missed: np.ndarray, width_s: float = MISS_WINDOW_S) -> MissWindow | None:
    if not missed.any():
        return None
    bucket = (np.asarray(arrival_s, float) // width_s).astype(int)
    per = np.bincount(bucket[missed], minlength=int(bucket.max()) + 1)
    worst = int(per.argmax())
    return MissWindow(start_s=worst * width_s, width_s=width_s, misses=int(per[worst]),
                      arrivals=int((bucket == worst).sum()), share_of_misses=float(per[worst] / missed.sum()))


def with_oracle_ratios(summaries: Sequence[RunSummary], oracle_label: str,
                       target_attainment: float | None = None) -> list[RunSummary]:
    """Each run's cost as a ratio to the run labelled ``oracle_label``, and the attainment each is held to (a run
    below it is marked: its cost is not comparable with the bound's)."""
    oracle = next((s for s in summaries if s.label == oracle_label), None)
    out = [s.model_copy(update={"target_attainment": target_attainment}) for s in summaries]
    if oracle is None or oracle.cost_usd <= 0:
        return out
    return [s.model_copy(update={"cost_ratio_to_oracle": s.cost_usd / oracle.cost_usd}) for s in out]


# --- presentation ----------------------------------------------------------------------------------------------


def _s(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1000:,.0f} ms" if x < 1 else f"{x:,.2f} s")


def compare_tables(summaries: Sequence[RunSummary], title: str = "Simulation") -> list[Table]:
    """Two narrow tables, one row per run: (1) cost, ratio to the bound, SLO attainment, drops, actions;
    (2) latency percentiles and replica-hours per pool."""
    pools = list(summaries[0].pools) if summaries else []
    cost = Table(title=title, header_style="bold", title_justify="left")
    for col in ("run", "cost $", "x oracle", "$/1M out tok", "SLO att.", "TTFT att.", "E2E att.", "429",
                "not served", "actions"):
        cost.add_column(col, justify="left" if col == "run" else "right")
    lat = Table(header_style="bold", title_justify="left")
    for col in ("run", "TTFT p50/p95/p99", "E2E p50/p95/p99", *(f"{p} replica-h" for p in pools)):
        lat.add_column(col, justify="left" if col == "run" else "right")
    for s in summaries:
        ratio = "-" if s.cost_ratio_to_oracle is None else f"{s.cost_ratio_to_oracle:.2f}"
        per_m = "-" if s.cost_per_1m_output_tokens_usd is None else f"{s.cost_per_1m_output_tokens_usd:,.2f}"
        att = f"{s.slo_attainment:.1%}" + (" misses SLO" if s.misses_target else "")
        cost.add_row(s.label, f"{s.cost_usd:,.3f}", ratio, per_m, att,
                     f"{s.ttft_attainment:.1%}", f"{s.e2e_attainment:.1%}", str(s.rejected_429), str(s.dropped),
                     str(s.scaling_actions))
        lat.add_row(s.label, " / ".join(_s(x) for x in (s.ttft.p50_s, s.ttft.p95_s, s.ttft.p99_s)),
                    " / ".join(_s(x) for x in (s.e2e.p50_s, s.e2e.p95_s, s.e2e.p99_s)),
                    *(f"{s.pools[p].replica_hours:.2f}" for p in pools))
    return [cost, lat]


def run_table(s: RunSummary) -> Table:
    """Details of one run: totals, then per pool."""
    title = s.label if s.policy.rsplit(":", 1)[-1] in s.label else f"{s.label} ({s.policy})"
    t = Table(title=title, show_header=False, title_justify="left")
    t.add_column("key", style="bold")
    t.add_column("value", justify="right")
    rows = [
        ("requests served / total", f"{s.served:,} / {s.requests:,}"),
        ("outcomes", ", ".join(f"{k}: {v:,}" for k, v in s.status_counts.items())),
        ("simulated time", f"{s.duration_s:,.0f} s"),
        ("total cost", f"${s.cost_usd:,.3f} (${s.cost_per_hour_usd:,.2f}/h)"),
        ("cost per 1M output tokens", "-" if s.cost_per_1m_output_tokens_usd is None
         else f"${s.cost_per_1m_output_tokens_usd:,.2f}"),
        (f"SLO attainment (TTFT <= {s.slo_ttft_s:g} s and E2E <= {s.slo_e2e_s:g} s)",
         f"{s.slo_attainment:.2%} (TTFT {s.ttft_attainment:.2%}, E2E {s.e2e_attainment:.2%})"),
        *([("where the misses cluster", s.worst_miss_window.describe())] if s.worst_miss_window else []),
        ("TTFT p50 / p95 / p99", " / ".join(_s(x) for x in (s.ttft.p50_s, s.ttft.p95_s, s.ttft.p99_s))),
        ("E2E p50 / p95 / p99", " / ".join(_s(x) for x in (s.e2e.p50_s, s.e2e.p95_s, s.e2e.p99_s))),
        ("429s / dropped", f"{s.rejected_429:,} / {s.dropped:,}"),
        ("scaling actions", str(s.scaling_actions)),
    ]
    for name, p in s.pools.items():
        rows.append((f"pool {name}", f"{p.replica_hours:.2f} replica-h ({p.ready_replica_hours:.2f} serving), "
                     f"${p.cost_usd:,.3f}, {p.served:,} served, max {p.max_replicas} replicas, "
                     f"{p.scale_ups} up / {p.scale_downs} down"))
    rows.append(("simulation wall time", f"{s.wall_s:.2f} s"))
    for k, v in rows:
        t.add_row(k, v)
    return t


def write_json(path: str | Path, summaries: Sequence[RunSummary], params: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema_version": SCHEMA_VERSION, "params": dict(params),
           "runs": [s.model_dump(mode="json") for s in summaries], **(extra or {})}
    p.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    return p


def plot_run(result: SimResult, summary: RunSummary, path: str | Path, bin_s: float | None = None) -> Path:
    """Three stacked panels over time: arrival rate (and refusals), replicas per pool, TTFT/E2E p95 vs the SLO."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    arr = result.workload.arrival_s
    span = max(result.end_s, float(arr[-1]) if len(arr) else 0.0, 1.0)
    bin_s = bin_s or max(10.0, round(span / 240 / 10) * 10)
    minutes = span > 1200
    scale = 60.0 if minutes else 1.0
    edges = np.arange(0.0, span + bin_s, bin_s)
    mid = (edges[:-1] + edges[1:]) / 2 / scale
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, constrained_layout=True)

    ax = axes[0]
    ax.plot(mid, np.histogram(arr, edges)[0] / bin_s, color="black", lw=1.2, label="arrivals")
    refused = arr[(result.status != 200)]
    if len(refused):
        ax.fill_between(mid, np.histogram(refused, edges)[0] / bin_s, color="tab:red", alpha=0.5,
                        step="mid", label="not served (429/503/timeout)")
    ax.set_ylabel(f"requests/s\n({bin_s:g} s bins)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    tl = result.timeline
    t = tl["t_s"] / scale
    colors = dict(zip(result.pool_names, ("tab:blue", "tab:green", "tab:orange", "tab:purple"), strict=False))
    for name in result.pool_names:
        c = colors.get(name, None)
        ax.step(t, tl[f"{name}.ready"], where="post", color=c, lw=1.6, label=f"{name} ready")
        ax.step(t, tl[f"{name}.ready"] + tl[f"{name}.starting"], where="post", color=c, lw=1, ls="--",
                alpha=0.7, label=f"{name} ready + starting")
    ax.set_ylabel("replicas")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, tl["cost_usd_per_hour"], color="grey", lw=0.8, alpha=0.5)
    ax2.set_ylabel("fleet $/h (grey)", color="grey")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    # above the panel: inside it, the legend hides the first minutes of the replica lines
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, ncol=2 * len(result.pool_names),
              frameon=False, borderaxespad=0.2)

    ax = axes[2]
    ok = result.status == 200
    idx = np.digitize(arr, edges) - 1
    for series, slo, color, name in ((result.ttft_s, result.slo.ttft_p95_s, "tab:purple", "TTFT"),
                                     (result.e2e_s, result.slo.e2e_p95_s, "tab:brown", "E2E")):
        p95 = np.full(len(mid), np.nan)
        for b in np.unique(idx[ok]):
            if 0 <= b < len(mid):
                p95[b] = np.percentile(series[ok & (idx == b)], 95)
        ax.plot(mid, p95, color=color, lw=1.2, label=f"{name} p95 (by arrival bin)")
        ax.axhline(slo, color=color, ls=":", lw=1, label=f"{name} SLO {slo:g} s")
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, max(hi, result.slo.ttft_p95_s, result.slo.e2e_p95_s) * 6)  # room above the SLO lines: legend
    ax.set_ylabel("seconds")
    ax.set_xlabel("minutes" if minutes else "seconds")
    ax.legend(loc="upper right", fontsize=8, ncol=2)
    ax.grid(alpha=0.3, which="both")

    ratio = "" if summary.cost_ratio_to_oracle is None else f" ({summary.cost_ratio_to_oracle:.2f}x oracle)"
    placeholder = " — PLACEHOLDER profiles: " + ", ".join(summary.placeholder_profiles) \
        if summary.placeholder_profiles else ""
    fig.suptitle(f"{summary.label}: ${summary.cost_usd:,.2f}{ratio}, SLO attainment {summary.slo_attainment:.1%}, "
                 f"{summary.dropped:,} of {summary.requests:,} not served{placeholder}", fontsize=10)
    return save_figure(fig, path)


def plot_compare(summaries: Sequence[RunSummary], path: str | Path, title: str | None = None) -> Path:
    """Cost (x oracle) and SLO attainment per run, side by side, each bar labelled with its value; the first run
    (the policy under test) drawn darker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [s.label for s in summaries]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.55 * len(summaries) + 1.8), constrained_layout=True)
    ratios = [s.cost_ratio_to_oracle if s.cost_ratio_to_oracle is not None else math.nan for s in summaries]
    shade = ["tab:blue" if i else "navy" for i in range(len(summaries))]
    bars = a.barh(labels, ratios, color=shade)
    a.bar_label(bars, labels=[f" {r:.2f}x  (${s.cost_usd:,.2f})" if math.isfinite(r) else " -"
                              for r, s in zip(ratios, summaries, strict=True)], fontsize=9)
    finite = [r for r in ratios if math.isfinite(r)]
    a.set_xlim(0, max(finite, default=1.0) * 1.35)
    a.axvline(1.0, color="black", lw=0.8)
    a.set_xlabel("cost / clairvoyant bound (lower is cheaper)")
    a.invert_yaxis()
    att = [s.slo_attainment * 100 for s in summaries]
    bars = b.barh(labels, att, color=["tab:green" if i else "darkgreen" for i in range(len(summaries))])
    b.bar_label(bars, labels=[f" {x:.1f}%" for x in att], fontsize=9)
    b.set_xlabel(f"SLO attainment, % of all requests (TTFT <= {summaries[0].slo_ttft_s:g} s and E2E <= "
                 f"{summaries[0].slo_e2e_s:g} s)" if summaries else "SLO attainment (%)")
    b.set_xlim(0, 112)
    b.set_xticks(range(0, 101, 20))
    b.invert_yaxis()
    b.set_yticklabels([])
    for ax in (a, b):
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG (parent folders created) and free it."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


__all__ = ["Latency", "PoolSummary", "RunSummary", "compare_tables", "plot_compare", "plot_run", "run_table",
           "save_figure", "summarize", "with_oracle_ratios", "write_json"]
