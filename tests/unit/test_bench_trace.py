"""Unit tests for orchestrator.bench.trace: parsing the Azure/generic/JSONL formats, errors, slicing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.bench.trace import TraceError, TraceRequest, load_trace, slice_trace, write_trace_jsonl

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AZURE_CODE_TRACE = PROJECT_ROOT / ".." / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


@pytest.mark.skipif(not AZURE_CODE_TRACE.exists(), reason=f"shared Azure trace not present at {AZURE_CODE_TRACE}")
def test_trace_parses_the_real_azure_code_trace_quickly_and_in_order() -> None:
    data_rows = sum(1 for line in AZURE_CODE_TRACE.read_text().splitlines()[1:] if line.strip())
    t = time.perf_counter()
    reqs = load_trace(AZURE_CODE_TRACE)
    elapsed = time.perf_counter() - t
    assert len(reqs) == data_rows > 8000
    assert elapsed < 1.0
    assert reqs[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in zip(reqs, reqs[1:], strict=False))
    assert all(r.prompt_tokens >= 0 and r.output_tokens >= 0 for r in reqs)
    assert 3000 < reqs[-1].arrival_s < 4000  # the code trace spans about an hour


def test_trace_keeps_seven_fractional_digits_of_azure_timestamps(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "azure.csv",
        AZURE_HEADER
        + "2023-11-16 18:15:46.6805900,4808,10\n"
        + "2023-11-16 18:15:46.7325900,3180,8\n"
        + "2023-11-16 18:15:47.0000001,110,27\n",
    )
    reqs = load_trace(p)
    assert reqs == [
        TraceRequest(0.0, 4808, 10),
        TraceRequest(pytest.approx(0.052, abs=1e-9), 3180, 8),  # type: ignore[arg-type]
        TraceRequest(pytest.approx(0.3194101, abs=1e-9), 110, 27),  # type: ignore[arg-type]
    ]


def test_trace_accepts_iso_t_separator_missing_fraction_offsets_and_midnight_rollover(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "azure.csv",
        AZURE_HEADER
        + "2023-11-16T23:59:59,1,1\n"
        + "2023-11-17 00:00:00.5Z,1,1\n"
        + "2023-11-17 01:00:01+01:00,1,1\n",
    )
    assert [r.arrival_s for r in load_trace(p)] == pytest.approx([0.0, 1.5, 2.0])


def test_trace_reads_the_generic_csv_and_jsonl_formats_alike(tmp_path: Path) -> None:
    csv_path = _write(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens,extra\n10.5,100,20,x\n11.0,50,5,y\n")
    jsonl_path = tmp_path / "t.jsonl"
    write_trace_jsonl([TraceRequest(10.5, 100, 20), TraceRequest(11.0, 50, 5)], jsonl_path)
    expected = [TraceRequest(0.0, 100, 20), TraceRequest(0.5, 50, 5)]
    assert load_trace(csv_path) == expected
    assert load_trace(jsonl_path) == expected


def test_trace_rejects_negative_tokens_naming_the_row(tmp_path: Path) -> None:
    p = _write(tmp_path, "neg.csv", AZURE_HEADER + "2023-11-16 18:15:46.1,5,5\n2023-11-16 18:15:47.1,-3,5\n")
    with pytest.raises(TraceError, match=r"neg\.csv: line 3: field 'ContextTokens': negative token count -3"):
        load_trace(p)


def test_trace_rejects_non_integer_tokens_naming_the_row(tmp_path: Path) -> None:
    p = _write(tmp_path, "frac.csv", "arrival_s,prompt_tokens,output_tokens\n0,5,5\n1,5,2.5\n")
    with pytest.raises(TraceError, match=r"line 3: field 'output_tokens': expected a non-negative integer, got '2.5'"):
        load_trace(p)


def test_trace_accepts_integral_float_token_counts(tmp_path: Path) -> None:
    p = _write(tmp_path, "f.csv", "arrival_s,prompt_tokens,output_tokens\n0,5.0,7\n")
    assert load_trace(p) == [TraceRequest(0.0, 5, 7)]


def test_trace_rejects_an_unparsable_timestamp_naming_the_row(tmp_path: Path) -> None:
    p = _write(tmp_path, "ts.csv", AZURE_HEADER + "2023-11-16 18:15:46.1,5,5\nyesterday noon,5,5\n")
    with pytest.raises(TraceError, match=r"ts\.csv: line 3: field 'TIMESTAMP': unparsable timestamp 'yesterday noon'"):
        load_trace(p)


def test_trace_rejects_an_impossible_date(tmp_path: Path) -> None:
    p = _write(tmp_path, "ts.csv", AZURE_HEADER + "2023-02-30 18:15:46.1,5,5\n")
    with pytest.raises(TraceError, match=r"line 2: field 'TIMESTAMP': unparsable timestamp"):
        load_trace(p)


def test_trace_rejects_missing_columns_naming_them(tmp_path: Path) -> None:
    p = _write(tmp_path, "cols.csv", "arrival_s,prompt_tokens\n0,5\n")
    with pytest.raises(TraceError, match=r"cols\.csv: line 1: missing column\(s\) output_tokens"):
        load_trace(p)


def test_trace_rejects_a_short_row_naming_the_missing_field(tmp_path: Path) -> None:
    p = _write(tmp_path, "short.csv", AZURE_HEADER + "2023-11-16 18:15:46.1,5,5\n2023-11-16 18:15:46.2,5\n")
    with pytest.raises(TraceError, match=r"line 3: field 'GeneratedTokens': missing value"):
        load_trace(p)


def test_trace_rejects_unsorted_timestamps_unless_asked_to_sort(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "unsorted.csv",
        AZURE_HEADER + "2023-11-16 18:15:46.0,1,1\n2023-11-16 18:15:48.0,2,2\n2023-11-16 18:15:47.0,3,3\n",
    )
    with pytest.raises(TraceError, match=r"line 4: field 'TIMESTAMP': timestamps are not sorted.*line 3.*sort=True"):
        load_trace(p)
    assert load_trace(p, sort=True) == [TraceRequest(0.0, 1, 1), TraceRequest(1.0, 3, 3), TraceRequest(2.0, 2, 2)]


def test_trace_rebases_to_the_earliest_row_after_sorting(tmp_path: Path) -> None:
    p = _write(tmp_path, "u.csv", "arrival_s,prompt_tokens,output_tokens\n5,1,1\n3,2,2\n")
    assert load_trace(p, sort=True) == [TraceRequest(0.0, 2, 2), TraceRequest(2.0, 1, 1)]


@pytest.mark.parametrize("text", ["", "\n\n", AZURE_HEADER, "arrival_s,prompt_tokens,output_tokens\n\n"])
def test_trace_rejects_an_empty_file(tmp_path: Path, text: str) -> None:
    p = _write(tmp_path, "empty.csv", text)
    with pytest.raises(TraceError, match=r"empty\.csv: trace file is empty"):
        load_trace(p)


def test_trace_rejects_a_missing_file_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv: cannot read trace file"):
        load_trace(tmp_path / "nope.csv")


def test_trace_rejects_bad_jsonl_lines_naming_line_and_key(tmp_path: Path) -> None:
    bad_json = _write(tmp_path, "a.jsonl", '{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}\n{oops\n')
    with pytest.raises(TraceError, match=r"a\.jsonl: line 2: invalid JSON"):
        load_trace(bad_json)
    missing = _write(tmp_path, "b.jsonl", '\n{"arrival_s": 0, "prompt_tokens": 1}\n')
    with pytest.raises(TraceError, match=r"b\.jsonl: line 2: field 'output_tokens': missing key"):
        load_trace(missing)
    boolean = _write(tmp_path, "c.jsonl", '{"arrival_s": 0, "prompt_tokens": true, "output_tokens": 1}\n')
    with pytest.raises(TraceError, match=r"line 1: field 'prompt_tokens': expected a non-negative integer"):
        load_trace(boolean)


def test_trace_time_scale_divides_arrivals(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.csv", "arrival_s,prompt_tokens,output_tokens\n0,1,1\n2,1,1\n6,1,1\n")
    assert [r.arrival_s for r in load_trace(p, time_scale=2.0)] == [0.0, 1.0, 3.0]


def test_trace_slicing_rebases_to_the_first_kept_row_and_cuts_by_count_and_duration() -> None:
    reqs = [TraceRequest(float(i), i, i) for i in range(10)]
    assert slice_trace(reqs, start=3, limit=2) == [TraceRequest(0.0, 3, 3), TraceRequest(1.0, 4, 4)]
    assert [r.prompt_tokens for r in slice_trace(reqs, start=2, max_duration_s=3.0)] == [2, 3, 4, 5]
    assert [r.arrival_s for r in slice_trace(reqs, start=2, time_scale=4.0, max_duration_s=1.0)] == [0, 0.25, 0.5, 0.75, 1.0]
    assert slice_trace(reqs, start=20) == []


def test_trace_rejects_a_non_positive_time_scale() -> None:
    with pytest.raises(TraceError, match="time_scale must be a positive"):
        slice_trace([TraceRequest(0.0, 1, 1)], time_scale=0.0)
