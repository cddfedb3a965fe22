"""Unit tests for the `elo bench` typer app: conflicting flags and bad inputs fail fast with clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orchestrator.bench.cli import bench_app, parse_headers

runner = CliRunner()
ENV = {"COLUMNS": "200"}


def _serve(*args: str) -> tuple[int, str]:
    # An unroutable URL: none of these invocations may get as far as sending a request.
    result = runner.invoke(bench_app, ["serve", "--url", "http://127.0.0.1:9/v1", "--model", "m", *args], env=ENV)
    return result.exit_code, " ".join(result.output.split())


def test_serve_rejects_concurrency_together_with_rate() -> None:
    code, out = _serve("-c", "4", "--rate", "2")
    assert code == 2 and "--concurrency 4 and --rate 2.0 conflict" in out


def test_serve_rejects_trace_together_with_prompt_or_output_tokens(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n")
    code, out = _serve("--trace", str(trace), "--prompt-tokens", "64")
    assert code == 2 and "sets prompt sizes; drop --prompt-tokens 64" in out
    code, out = _serve("--trace", str(trace), "--output-tokens", "8")
    assert code == 2 and "sets output sizes; drop --output-tokens 8" in out


def test_serve_reports_a_bad_trace_row_with_file_and_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,1,1\n1,-5,1\n")
    code, out = _serve("--trace", str(trace))
    assert code == 2 and "line 3" in out and "negative token count -5" in out


def test_serve_rejects_an_unknown_endpoint_and_a_zero_rate() -> None:
    code, out = _serve("--endpoint", "embeddings")
    assert code == 2 and "expected chat or completions" in out
    code, out = _serve("--rate", "0")
    assert code == 2 and "must be > 0" in out


def test_headers_parse_as_name_colon_value_and_reject_anything_else() -> None:
    assert parse_headers(["x-slo-class: batch", "Authorization:Bearer a:b"]) == {
        "x-slo-class": "batch",
        "Authorization": "Bearer a:b",
    }
    with pytest.raises(typer.BadParameter, match="expected NAME:VALUE"):
        parse_headers(["no-colon"])


def test_compare_names_a_file_that_is_not_a_result(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("[]")
    result = runner.invoke(bench_app, ["compare", str(bad), str(bad)], env=ENV)
    assert result.exit_code == 2 and "x.json" in result.output
