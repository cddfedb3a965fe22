"""Sliding-window load statistics per pool (arrival rate, token rate, latency percentiles, service samples by
concurrency, recent request sizes); time is passed in."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class ServiceSample:
    """One completed request as its replica served it: the concurrency it was admitted at, its sizes, and its TTFT
    (sent -> first token) and TPOT."""

    at_s: float
    concurrency: int
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float | None


@dataclass
class PoolWindow:
    """Events of one pool over the last `window_s` seconds."""

    window_s: float = 30.0
    recent_limit: int = 256
    arrivals: deque[float] = field(default_factory=deque)
    ttfts: deque[tuple[float, float]] = field(default_factory=deque)
    latencies: deque[tuple[float, float]] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    rejections: deque[float] = field(default_factory=deque)
    samples: deque[ServiceSample] = field(default_factory=deque)
    sizes: deque[tuple[float, int, int]] = field(default_factory=deque)  # (at, prompt, output): not trimmed by time

    def __post_init__(self) -> None:
        self.sizes = deque(self.sizes, maxlen=self.recent_limit)

    # Every record trims too, so the window stays bounded even when nobody reads the summary.
    def rejected(self, now: float) -> None:
        self.rejections.append(now)
        self._trim(now)

    def arrived(self, now: float) -> None:
        self.arrivals.append(now)
        self._trim(now)

    def first_token(self, now: float, ttft_s: float) -> None:
        self.ttfts.append((now, ttft_s))
        self._trim(now)

    def finished(self, now: float, latency_s: float, output_tokens: int) -> None:
        self.latencies.append((now, latency_s))
        self.tokens.append((now, output_tokens))
        self._trim(now)

    def served(self, sample: ServiceSample) -> None:
        """A completed request's service figures (what the controller learns the pool's capacity from)."""
        self.samples.append(sample)
        self.sizes.append((sample.at_s, sample.prompt_tokens, sample.output_tokens))
        self._trim(sample.at_s)

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        for times in (self.arrivals, self.rejections):
            while times and times[0] < start:
                times.popleft()
        for q in (self.ttfts, self.latencies, self.tokens):
            while q and q[0][0] < start:
                q.popleft()
        while self.samples and self.samples[0].at_s < start:
            self.samples.popleft()

    def summary(self, now: float, percentile_q: float = 95.0) -> dict[str, Any]:
        self._trim(now)
        return {
            "window_s": self.window_s,
            "arrival_rate_rps": len(self.arrivals) / self.window_s,
            "rejected_rate_rps": len(self.rejections) / self.window_s,
            "output_tokens_per_s": sum(n for _, n in self.tokens) / self.window_s,
            "ttft_p95_s": percentile([v for _, v in self.ttfts], percentile_q),
            "e2e_p95_s": percentile([v for _, v in self.latencies], percentile_q),
            "completed": len(self.latencies),
        }

    def by_concurrency(self, now: float) -> list[dict[str, Any]]:
        """Service samples of the window grouped by admission concurrency: count, mean TTFT, TPOT and prompt."""
        self._trim(now)
        groups: dict[int, list[ServiceSample]] = {}
        for s in self.samples:
            groups.setdefault(s.concurrency, []).append(s)
        out = []
        for n in sorted(groups):
            g = groups[n]
            tpots = [s.tpot_s for s in g if s.tpot_s is not None]
            out.append({"concurrency": n, "requests": len(g), "ttft_mean_s": sum(s.ttft_s for s in g) / len(g),
                        "tpot_mean_s": sum(tpots) / len(tpots) if tpots else None,
                        "prompt_tokens_mean": sum(s.prompt_tokens for s in g) / len(g)})
        return out

    def recent(self) -> list[tuple[float, int, int]]:
        """(completed at, prompt tokens, output tokens) of the latest ``recent_limit`` requests, oldest first."""
        return list(self.sizes)
