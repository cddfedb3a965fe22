"""Unit tests for orchestrator.bench.stats and .report: percentiles, TPOT, rates, JSON round trip, comparison."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.bench.report import (
    build_report,
    comparison_rows,
    load_report,
    print_comparison,
    print_summary,
    write_report,
)
from orchestrator.bench.stats import RequestRecord, percentiles, summarize


def _ok(i: int, *, start: float, ttft: float, end: float, tokens: int, pool: str | None = "cloud") -> RequestRecord:
    return RequestRecord(
        index=i, status=200, start_s=start, ttft_s=ttft, end_s=end, output_tokens=tokens, prompt_tokens=10, pool=pool
    )


def _records() -> list[RequestRecord]:
    return [
        _ok(0, start=0.0, ttft=0.1, end=1.1, tokens=11),  # tpot = 1.0/10 = 0.1
        _ok(1, start=0.5, ttft=0.3, end=2.5, tokens=5),  # tpot = 1.7/4 = 0.425
        _ok(2, start=1.0, ttft=0.2, end=1.5, tokens=1, pool="edge"),  # single token: no tpot
        RequestRecord(index=3, status=429, error="busy", start_s=1.0, end_s=1.01, retry_after="2", pool="cloud"),
        RequestRecord(index=4, status=500, error="boom", start_s=1.0, end_s=1.02),
        RequestRecord(index=5, status="timeout", error="slow", start_s=1.0, end_s=3.0, output_tokens=3),
    ]


def test_percentiles_match_numpy_linear_interpolation_in_milliseconds() -> None:
    p = percentiles([0.1 * i for i in range(1, 11)])
    assert p is not None
    assert (p.count, p.p50_ms, p.max_ms) == (10, pytest.approx(550.0), pytest.approx(1000.0))
    assert p.p95_ms == pytest.approx(955.0) and p.p99_ms == pytest.approx(991.0)
    assert percentiles([]) is None


def test_summary_counts_errors_by_status_and_uses_only_successes_for_latency() -> None:
    s = summarize(_records(), wall_s=4.0, num_planned=8)
    assert (s.num_planned, s.num_sent, s.num_ok, s.num_errors) == (8, 6, 3, 3)
    assert s.errors_by_status == {"429": 1, "500": 1, "timeout": 1}
    assert s.ttft is not None and s.ttft.p50_ms == pytest.approx(200.0)
    assert s.e2e is not None and s.e2e.max_ms == pytest.approx(2000.0)


def test_tpot_excludes_the_first_token_and_single_token_requests() -> None:
    s = summarize(_records(), wall_s=4.0)
    assert s.tpot is not None and s.tpot.count == 2
    assert s.tpot.mean_ms == pytest.approx((100.0 + 425.0) / 2)


def test_throughput_is_measured_over_the_wall_time_of_successful_requests() -> None:
    s = summarize(_records(), wall_s=4.0)
    assert s.total_output_tokens == 17  # the timed-out request's 3 partial tokens do not count
    assert s.output_tokens_per_s == pytest.approx(17 / 4.0)
    assert s.requests_per_s == pytest.approx(3 / 4.0)


def test_pool_share_counts_every_request_with_a_pool_header() -> None:
    s = summarize(_records(), wall_s=4.0)
    assert s.pool_counts == {"cloud": 3, "edge": 1}
    assert s.pool_share == {"cloud": pytest.approx(0.5), "edge": pytest.approx(1 / 6)}
    raw_vllm = summarize([_ok(0, start=0, ttft=0.1, end=0.2, tokens=2, pool=None)], wall_s=1.0)
    assert raw_vllm.pool_counts == {} and raw_vllm.pool_share == {}


def test_summary_of_no_records_is_empty_not_an_error() -> None:
    s = summarize([], wall_s=0.0)
    assert (s.num_sent, s.requests_per_s, s.ttft) == (0, 0.0, None)


def test_report_round_trips_through_json_with_records_and_mixed_statuses(tmp_path: Path) -> None:
    records = _records()
    report = build_report(
        label="ours",
        params={"url": "http://x/v1", "concurrency": 4},
        summary=summarize(records, wall_s=4.0),
        records=records,
        now=dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    )
    path = write_report(report, tmp_path / "sub" / "a.json")
    loaded = load_report(path)
    assert loaded == report
    assert loaded.created_at == "2025-01-02T03:04:05+00:00"
    assert loaded.records is not None and [r.status for r in loaded.records] == [200, 200, 200, 429, 500, "timeout"]


def test_load_report_names_the_file_when_it_is_not_a_result(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match=r"bad\.json: not a bench result file"):
        load_report(bad)


def test_comparison_gives_throughput_ratio_and_ttft_differences() -> None:
    fast = summarize([_ok(0, start=0, ttft=0.1, end=1.0, tokens=10)], wall_s=1.0)
    slow = summarize([_ok(0, start=0, ttft=0.3, end=2.0, tokens=10)], wall_s=2.0)
    a = build_report(label="vllm", params={}, summary=fast)
    b = build_report(label="ours", params={}, summary=slow)
    rows = {name: (x, y, delta) for name, x, y, delta in comparison_rows(a, b)}
    assert rows["output tokens/s"] == (10.0, 5.0, "x0.50")
    assert rows["TTFT p50 (ms)"][2] == "+200.0"
    assert rows["TTFT p95 (ms)"][2] == "+200.0"
    console = Console(record=True, width=120)
    print_comparison(a, b, console)
    text = console.export_text()
    assert "vllm (A) vs ours (B)" in text and "x0.50" in text


def test_summary_table_shows_latencies_errors_and_pools() -> None:
    console = Console(record=True, width=140)
    print_summary(summarize(_records(), wall_s=4.0), console, title="run")
    text = console.export_text()
    for needle in ("TTFT", "TPOT", "E2E latency", "429: 1", "timeout: 1", "cloud: 3 (50%)"):
        assert needle in text
