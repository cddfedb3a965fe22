"""`elo bench serve` against the real Serve app: fixed concurrency and a slice of the Azure trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.bench.report import load_report
from orchestrator.cli import app
from tests.integration.conftest import ServedApp

pytestmark = pytest.mark.integration

AZURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"


def test_bench_serve_measures_the_endpoint_and_writes_json(served_app: ServedApp, tmp_path: Path):
    out = tmp_path / "ours.json"
    result = CliRunner().invoke(app, [
        "bench", "serve", "--url", served_app.v1, "-n", "16", "-c", "4", "--prompt-tokens", "32",
        "--output-tokens", "16", "--tokenizer", str(served_app.model_path), "--out", str(out), "--label", "ours",
    ])
    assert result.exit_code == 0, result.output
    report = load_report(out)
    s = report.summary
    assert s.num_ok == 16 and s.errors_by_status == {}
    assert s.total_output_tokens == 16 * 16
    assert s.ttft is not None and 0 < s.ttft.p50_ms <= s.ttft.p99_ms
    assert sum(s.pool_counts.values()) == 16 and set(s.pool_counts) <= {"cloud", "edge"}
    assert "TTFT" in result.output


@pytest.mark.skipif(not AZURE.exists(), reason="../shared/data/traces/azure_llm_2023_code.csv is absent")
def test_bench_serve_replays_a_slice_of_the_azure_trace(served_app: ServedApp, tmp_path: Path):
    out = tmp_path / "trace.json"
    result = CliRunner().invoke(app, [
        "bench", "serve", "--url", served_app.v1, "--trace", str(AZURE), "--trace-limit", "12",
        "--trace-time-scale", "20", "--max-prompt-tokens", "600", "--max-output-tokens", "24",
        "--tokenizer", str(served_app.model_path),
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    s = load_report(out).summary
    assert s.num_ok + sum(s.errors_by_status.values()) == 12
    assert set(s.errors_by_status) <= {"429"}
