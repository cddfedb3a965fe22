"""Sliding-window pool statistics with an injected clock."""

from __future__ import annotations

from deployments.window import PoolWindow, percentile


def test_percentile_is_nearest_rank_and_none_without_samples():
    assert percentile([], 95) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_rates_and_percentiles_cover_only_the_window():
    w = PoolWindow(window_s=10)
    for t in range(20):  # one request a second for 20 s, each 2 s long with 0.1 s TTFT
        w.arrived(float(t))
        w.first_token(t + 0.1, 0.1 if t < 15 else 0.5)
        w.finished(t + 2.0, 2.0, 8)
    s = w.summary(now=21.0)
    # The window is [11, 21]: arrivals at 11..19 s, completions at 11..21 s (requests started at 9..19 s).
    assert s["arrival_rate_rps"] == 0.9
    assert s["completed"] == 11 and s["output_tokens_per_s"] == 8.8
    assert s["ttft_p95_s"] == 0.5 and s["e2e_p95_s"] == 2.0
    assert w.summary(now=100.0)["arrival_rate_rps"] == 0.0 and w.summary(now=100.0)["ttft_p95_s"] is None


def test_rejections_are_counted_apart_from_arrivals():
    w = PoolWindow(window_s=5)
    w.rejected(1.0)
    w.rejected(2.0)
    s = w.summary(now=3.0)
    assert s["rejected_rate_rps"] == 0.4 and s["arrival_rate_rps"] == 0.0


def test_window_stays_bounded_when_nobody_reads_it():
    w = PoolWindow(window_s=10)
    for t in range(10_000):
        w.arrived(float(t))
        w.finished(float(t), 1.0, 4)
    assert len(w.arrivals) <= 11 and len(w.latencies) <= 11 and len(w.tokens) <= 11
