"""Per-replica service model (TTFT and time per output token vs concurrency and prompt length), loaded from YAML
or fitted from ``elo bench`` request records.

The model, per replica (continuous batching, requests admitted up to a concurrency limit):

* **prefill** is a FIFO server at the engine's prefill throughput (its fastest rate): a request admitted at ``t``
  starts its prefill at ``max(t, end of the replica's previous prefill)`` and holds it for ``prompt_tokens`` at
  that rate — so a burst of long prompts queues, as it does on a real engine;
* **TTFT** = prefill wait + ``prompt_tokens`` at the rate of concurrency ``n`` (a point's own
  ``prefill_tokens_per_s``, else the profile's: a prompt joining a busy batch takes longer, without holding the
  server longer) + ``ttft_overhead_s(n)``, where ``n`` is the replica's concurrency at admission (the request
  included) — scheduling, the first decode step, streaming;
* **decode**: every further output token takes ``tpot_s(n)`` plus ``tpot_s_per_context_token(n)`` per token of
  context (the prompt and the output so far; on average the prompt plus half the output), ``n`` again frozen at
  admission.

``ttft_overhead_s``, ``tpot_s`` and its context slope are tables over concurrency (the measured points),
interpolated linearly
between points, flat below the first, and extrapolated along the last segment (never downward) above the last.
Freezing ``n`` at admission keeps one request O(1) (a replay of 10^6 requests stays in seconds); it
under-states the slow-down of requests already running when a burst lands on them.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.control.capacity import ProfilePoint, ReplicaProfile, mean_context
from orchestrator.control.config import load_profile as _load_profile
from orchestrator.sim._yaml import SimConfigError


@dataclass(frozen=True)
class ServiceCurve:
    """A profile resolved for one pool: index ``n`` (1..limit) of the tables is the value at concurrency n."""

    limit: int
    prefill_s_per_token: tuple[float, ...]  # latency per prompt token at concurrency n
    prefill_busy_s_per_token: float  # what a prompt occupies the replica's prefill for (its throughput)
    overhead_s: tuple[float, ...]
    tpot_s: tuple[float, ...]  # at an empty context
    tpot_per_context_s: tuple[float, ...]  # what each token of context adds to an output token's time

    @classmethod
    def of(cls, profile: ReplicaProfile, limit: int) -> ServiceCurve:
        """Lookup tables for concurrencies 1..limit (limit: the replica's slot count, capped by the profile's)."""
        limit = max(1, min(limit, profile.max_concurrency))
        return cls(
            limit=limit,
            prefill_s_per_token=(0.0,) + tuple(profile.prefill_s_per_token(n) for n in range(1, limit + 1)),
            prefill_busy_s_per_token=profile.prefill_throughput_s_per_token,
            overhead_s=(0.0,) + tuple(profile.ttft_overhead_s(n) for n in range(1, limit + 1)),
            tpot_s=(0.0,) + tuple(profile.tpot_s(n) for n in range(1, limit + 1)),
            tpot_per_context_s=(0.0,) + tuple(profile.tpot_s_per_context_token(n) for n in range(1, limit + 1)),
        )

    def decode_s(self, steps: float, context_tokens: float, n: int) -> float:
        """Seconds for ``steps`` output tokens at concurrency ``n`` whose mean context is ``context_tokens``."""
        return steps * (self.tpot_s[n] + self.tpot_per_context_s[n] * context_tokens)

    def isolated_latency(self, prompt_tokens: np.ndarray, output_tokens: np.ndarray,
                         n: int) -> tuple[np.ndarray, np.ndarray]:
        """(TTFT, E2E) of requests at concurrency ``n`` with no prefill queue (the capacity model of the bound)."""
        ttft = self.overhead_s[n] + prompt_tokens * self.prefill_s_per_token[n]
        return ttft, ttft + self.decode_s(np.maximum(output_tokens - 1, 0), mean_context(prompt_tokens, output_tokens),
                                          n)


def load_profile(path: str | Path) -> ReplicaProfile:
    """Read a profile YAML; SimConfigError names the file, line and field."""
    return _load_profile(path, SimConfigError)


def dump_profile(profile: ReplicaProfile, header: str = "") -> str:
    """The profile as YAML (what ``elo bench profile`` writes)."""
    import yaml

    body = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False, width=120)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


# --- calibration from bench records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One successful request of a closed-loop bench run: its concurrency, prompt length, TTFT and TPOT (and, from
    bench records, its end-to-end latency and output tokens, for the fit's quality check)."""

    concurrency: int
    prompt_tokens: int
    ttft_s: float
    tpot_s: float | None
    e2e_s: float | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class FitCell:
    """Measured medians of one (concurrency, prompt length) group against what the fitted profile predicts for it
    (prompt / prefill rate + overhead; E2E adds (median output tokens - 1) x TPOT; no prefill queue)."""

    concurrency: int
    prompt_tokens: int
    requests: int
    ttft_measured_s: float
    ttft_predicted_s: float
    e2e_measured_s: float | None
    e2e_predicted_s: float | None
    one_chunk_share: float  # requests (2+ output tokens) whose whole output arrived with the first chunk

    @property
    def ttft_error(self) -> float:
        """Relative error of the predicted median TTFT (predicted / measured - 1)."""
        return self.ttft_predicted_s / self.ttft_measured_s - 1 if self.ttft_measured_s > 0 else 0.0

    @property
    def e2e_error(self) -> float | None:
        if self.e2e_measured_s is None or self.e2e_predicted_s is None or self.e2e_measured_s <= 0:
            return None
        return self.e2e_predicted_s / self.e2e_measured_s - 1


@dataclass(frozen=True)
class FitQuality:
    """How well the fitted profile reproduces its own bench runs."""

    cells: tuple[FitCell, ...]
    ttft_r2: float | None  # per request: 1 - SS(residual of TTFT vs the fitted formula) / SS(TTFT around its mean)

    @property
    def worst_ttft_error(self) -> float:
        return max((abs(c.ttft_error) for c in self.cells), default=0.0)

    @property
    def worst_e2e_error(self) -> float | None:
        errs = [abs(e) for c in self.cells if (e := c.e2e_error) is not None]
        return max(errs) if errs else None

    def summary(self) -> str:
        r2 = "n/a" if self.ttft_r2 is None else f"{self.ttft_r2:.2f}"
        e2e = self.worst_e2e_error
        return (f"fit quality over {len(self.cells)} (concurrency, prompt) groups: median TTFT within "
                f"{self.worst_ttft_error:.0%}, median E2E within " + ("n/a" if e2e is None else f"{e2e:.0%}")
                + f" (worst group); per-request TTFT R^2 {r2}")

    def lines(self) -> list[str]:
        """One line per group (for a profile file's header)."""
        out = [self.summary()]
        for c in self.cells:
            e2e = ("" if c.e2e_measured_s is None or c.e2e_predicted_s is None else
                   f", E2E {c.e2e_measured_s * 1000:,.0f} -> {c.e2e_predicted_s * 1000:,.0f} ms ({c.e2e_error:+.0%})")
            chunk = f", {c.one_chunk_share:.0%} in one chunk" if c.one_chunk_share > 0 else ""
            out.append(f"  c={c.concurrency} prompt={c.prompt_tokens} ({c.requests} req): median TTFT "
                       f"{c.ttft_measured_s * 1000:,.0f} -> {c.ttft_predicted_s * 1000:,.0f} ms ({c.ttft_error:+.0%})"
                       f"{e2e}{chunk}")
        return out


@dataclass(frozen=True)
class Fit:
    profile: ReplicaProfile
    notes: tuple[str, ...]
    quality: FitQuality | None = None


def fit_profile(samples: Sequence[Sample], *, name: str, source: str,
                max_concurrency: int | None = None) -> Fit:
    """Fit the service model to bench samples taken at one or more concurrencies.

    The prefill rate is the slope of TTFT over prompt tokens, shared by all concurrencies (least squares with one
    intercept per concurrency); it is identifiable only if prompt lengths vary within some concurrency. If they
    do not, the whole TTFT at the lowest concurrency is attributed to prefill (a conservative rate) and the notes
    say so. A concurrency whose own slope is more than 1.5x off the shared one (a batching engine prefills a lone
    prompt faster than one joining a busy batch) keeps its own rate (``ProfilePoint.prefill_tokens_per_s``), and the
    shared rate is refitted without it. Per concurrency, ``ttft_overhead_s`` is the median of TTFT minus prefill
    time (>= 0) and ``tpot_s`` the median TPOT; when a concurrency's prompt lengths vary and its median TPOT grows
    with the context, ``tpot_s`` and ``tpot_s_per_context_token`` are the line through the medians of its prompt
    lengths (see ``_tpot_line``). Raises ValueError when there is nothing to fit.
    """
    ok = [s for s in samples if s.ttft_s is not None and s.ttft_s >= 0 and s.prompt_tokens > 0]
    if not ok:
        raise ValueError("no successful request with a TTFT and a prompt length to fit")
    levels = sorted({s.concurrency for s in ok})
    notes: list[str] = []
    slope, why = _prefill_slope(ok, levels)
    if why:
        notes.append(why)
    if slope is None:
        low = [s for s in ok if s.concurrency == levels[0]]
        slope = statistics.median(s.ttft_s / s.prompt_tokens for s in low)
        notes.append(f"the whole TTFT at concurrency {levels[0]} is counted as prefill (conservative)")
    own_rates = {c: _own_rate([s for s in ok if s.concurrency == c], slope) for c in levels}
    rest = [c for c in levels if own_rates[c] is None]
    if len(rest) < len(levels) and rest:  # the shared rate, now from the concurrencies without their own
        refit = _lstsq_slope([s for s in ok if s.concurrency in rest], rest)
        if refit > 0 and any(len({s.prompt_tokens for s in ok if s.concurrency == c}) > 1 for c in rest):
            slope = refit
    points = []
    for c in levels:
        group = [s for s in ok if s.concurrency == c]
        tpots = [s.tpot_s for s in group if s.tpot_s is not None and s.tpot_s > 0]
        if not tpots:
            notes.append(f"concurrency {c}: no request with 2+ output tokens, skipped")
            continue
        own = own_rates[c]
        per_token = 1.0 / own if own else slope
        overhead = max(0.0, statistics.median(s.ttft_s - s.prompt_tokens * per_token for s in group))
        line = _tpot_line(group)
        if line is not None:
            notes.append(f"concurrency {c}: TPOT {line[0] * 1000:.2f} ms + {line[1] * 1e6:.2f} us per token of "
                         "context")
        points.append(ProfilePoint(concurrency=c, ttft_overhead_s=round(overhead, 6),
                                   tpot_s=round(line[0] if line else statistics.median(tpots), 6),
                                   tpot_s_per_context_token=round(line[1], 10) if line else None,
                                   prefill_tokens_per_s=round(own, 3) if own else None))
        if own:
            notes.append(f"concurrency {c}: its own prefill rate, {own:,.0f} tokens/s (shared {1 / slope:,.0f})")
        notes.append(f"concurrency {c}: {len(group)} requests")
    if not points:
        raise ValueError("no concurrency level has requests with more than one output token (TPOT)")
    profile = ReplicaProfile(
        name=name, source=source, max_concurrency=max(max_concurrency or points[-1].concurrency,
                                                        points[0].concurrency),
        prefill_tokens_per_s=round(1.0 / slope, 3), points=points,
    )
    return Fit(profile, tuple(notes), fit_quality(profile, ok))


def fit_quality(profile: ReplicaProfile, samples: Sequence[Sample]) -> FitQuality:
    """Per (concurrency, prompt length): measured medians vs the profile's prediction; and the TTFT R^2."""
    groups: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.concurrency, s.prompt_tokens), []).append(s)
    cells = []
    residuals, ttfts = [], []
    for (c, prompt), group in sorted(groups.items()):
        ttft_pred = profile.ttft_s(prompt, c)
        e2es = [s.e2e_s for s in group if s.e2e_s is not None]
        outs = [s.output_tokens for s in group if s.output_tokens is not None]
        e2e_pred = (ttft_pred + profile.decode_s(prompt, statistics.median(outs), c)) if outs else None
        multi = [s for s in group if s.e2e_s is not None and (s.output_tokens or 0) > 1]
        one_chunk = sum(1 for s in multi if s.e2e_s - s.ttft_s < 0.05 * s.e2e_s)  # type: ignore[operator]
        cells.append(FitCell(c, prompt, len(group), statistics.median(s.ttft_s for s in group), ttft_pred,
                             statistics.median(e2es) if e2es else None, e2e_pred,
                             one_chunk / len(multi) if multi else 0.0))
        residuals += [s.ttft_s - ttft_pred for s in group]
        ttfts += [s.ttft_s for s in group]
    y = np.asarray(ttfts, float)
    ss_tot = float(((y - y.mean()) ** 2).sum()) if len(y) > 1 else 0.0
    r2 = 1.0 - float((np.asarray(residuals) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    return FitQuality(tuple(cells), r2)


def _tpot_line(group: Sequence[Sample], min_rise: float = 0.1) -> tuple[float, float] | None:
    """(TPOT at an empty context, seconds per token of context) of one concurrency: the least-squares line through
    each prompt length's median TPOT against its median context (prompt + half the output). Medians, because some
    streams deliver their whole output in one chunk (a TPOT near 0). None when the prompts do not vary, or the
    line does not rise by ``min_rise`` of its start over the measured contexts, or its intercept is not positive:
    then the median describes the concurrency."""
    by_prompt: dict[int, list[Sample]] = {}
    for s in group:
        if s.tpot_s is not None and s.tpot_s > 0:
            by_prompt.setdefault(s.prompt_tokens, []).append(s)
    if len(by_prompt) < 2:
        return None
    ctx = np.array([statistics.median(s.prompt_tokens + (s.output_tokens or 1) / 2 for s in g)
                    for g in by_prompt.values()])
    tpot = np.array([statistics.median(s.tpot_s for s in g) for g in by_prompt.values()])  # type: ignore[misc]
    slope, intercept = np.polyfit(ctx, tpot, 1)
    if intercept <= 0 or slope <= 0 or slope * (ctx.max() - ctx.min()) < min_rise * (intercept + slope * ctx.min()):
        return None
    return float(intercept), float(slope)


def _lstsq_slope(samples: Sequence[Sample], levels: Sequence[int]) -> float:
    x = np.zeros((len(samples), len(levels) + 1))
    y = np.array([s.ttft_s for s in samples])
    col = {c: i for i, c in enumerate(levels)}
    for row, s in enumerate(samples):
        x[row, col[s.concurrency]] = 1.0
        x[row, -1] = s.prompt_tokens
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(coef[-1])


def _own_rate(group: Sequence[Sample], shared_s_per_token: float, apart: float = 1.5) -> float | None:
    """One concurrency's own prefill rate (tokens/s) when its prompt lengths vary and its slope differs from the
    shared one by more than ``apart`` times either way (a batching engine prefills a prompt alone several times
    faster than into a busy batch); None: the shared rate describes it."""
    if len({s.prompt_tokens for s in group}) < 2:
        return None
    own = _lstsq_slope(group, [group[0].concurrency])
    if own <= 0 or 1 / apart <= own / shared_s_per_token <= apart:
        return None
    return 1.0 / own


def _prefill_slope(samples: Sequence[Sample], levels: list[int]) -> tuple[float | None, str | None]:
    """Slope of TTFT over prompt tokens (seconds per token) and a note when it is not the shared fit.

    The shared slope: least squares with one intercept per concurrency. When it is not positive (high-concurrency
    runs can be too noisy for it), the slope of the lowest concurrency whose own fit is positive; None when
    prompt lengths do not vary within any concurrency or no concurrency's TTFT grows with the prompt."""
    varied = [c for c in levels if len({s.prompt_tokens for s in samples if s.concurrency == c}) > 1]
    if not varied:
        return None, ("prompt lengths do not vary within a concurrency: prefill cannot be separated from the "
                      "overhead; bench two prompt lengths to separate them")
    shared = _lstsq_slope(samples, levels)
    if shared > 0:
        return shared, None
    for c in varied:
        own = _lstsq_slope([s for s in samples if s.concurrency == c], [c])
        if own > 0:
            return own, (f"TTFT does not grow with the prompt over all concurrencies together (shared slope "
                         f"{shared * 1000:+.4f} ms/token): the prefill rate is taken from concurrency {c} alone")
    return None, (f"TTFT does not grow with the prompt at any concurrency (shared slope {shared * 1000:+.4f} "
                  "ms/token): prefill cannot be separated from the overhead")


def samples_from_bench(path: str | Path, pool: str | None = None) -> list[Sample]:
    """Successful requests of one ``elo bench serve --records`` JSON file taken at a fixed concurrency."""
    from orchestrator.bench.report import load_report

    report = load_report(path)
    params = report.params
    if params.get("mode") != "concurrency" or not params.get("concurrency"):
        raise SimConfigError(f"{path}: a profile needs closed-loop runs (`elo bench serve -c N`); this run's mode is "
                             f"{params.get('mode')!r}")
    if not report.records:
        raise SimConfigError(f"{path}: no per-request records; rerun `elo bench serve` with --records")
    c = int(params["concurrency"])
    out = []
    for r in report.records:
        if not r.ok or r.ttft_s is None or (pool is not None and r.pool != pool):
            continue
        prompt = r.prompt_tokens or r.planned_prompt_tokens
        if prompt:
            out.append(Sample(c, int(prompt), r.ttft_s, r.tpot_s, r.e2e_s, r.output_tokens))
    return out


__all__ = [
    "Fit",
    "FitCell",
    "FitQuality",
    "ProfilePoint",
    "ReplicaProfile",
    "Sample",
    "ServiceCurve",
    "SimConfigError",
    "dump_profile",
    "fit_profile",
    "fit_quality",
    "load_profile",
    "samples_from_bench",
]
