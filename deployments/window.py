"""Sliding-window load statistics per pool (arrival rate, token rate, latency percentiles); time is passed in."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class PoolWindow:
    """Events of one pool over the last `window_s` seconds."""

    window_s: float = 30.0
    arrivals: deque[float] = field(default_factory=deque)
    ttfts: deque[tuple[float, float]] = field(default_factory=deque)
    latencies: deque[tuple[float, float]] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    rejections: deque[float] = field(default_factory=deque)

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

    def _trim(self, now: float) -> None:
        start = now - self.window_s
        for times in (self.arrivals, self.rejections):
            while times and times[0] < start:
                times.popleft()
        for q in (self.ttfts, self.latencies, self.tokens):
            while q and q[0][0] < start:
                q.popleft()

    def summary(self, now: float, percentile_q: float = 95.0) -> dict[str, float | int | None]:
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
