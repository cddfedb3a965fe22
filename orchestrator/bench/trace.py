"""Load request traces (arrival time, prompt and output token counts) from CSV or JSONL files.

Pure and fast: no HTTP, no clock. Used by the benchmark and by the trace-replay
simulator.

Supported formats (detected from the extension and the CSV header):

1. Azure LLM inference trace CSV, header ``TIMESTAMP,ContextTokens,GeneratedTokens``;
   ``TIMESTAMP`` like ``2023-11-16 18:15:46.6805900`` (any number of fractional
   digits, optional ``T`` separator, optional ``Z`` / ``±HH:MM`` offset).
2. Generic CSV, header ``arrival_s,prompt_tokens,output_tokens``; ``arrival_s`` is
   seconds (float) on any origin.
3. JSONL (``.jsonl`` / ``.ndjson``), one object per line with the keys
   ``arrival_s``, ``prompt_tokens``, ``output_tokens``.

Extra columns/keys are ignored; blank lines are skipped. Token counts must be
non-negative integers (``12`` or ``12.0``). Rows must be sorted by arrival time
unless ``sort=True``. Returned arrivals are relative to the first selected row
and divided by ``time_scale``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

TraceFormat = Literal["auto", "azure", "csv", "jsonl"]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")

_TIMESTAMP_RE = re.compile(
    r"^\s*(\d{4}-\d{2}-\d{2})[ T](\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*"
    r"(Z|[+-]\d{2}:?\d{2})?\s*$"
)


class TraceError(ValueError):
    """A trace file is unreadable or has a bad row; the message names file, line and field."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives (s, relative) and its token counts."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    arrival_s: float  # relative to the first row of the file (before sorting)
    prompt_tokens: int
    output_tokens: int


def load_trace(
    path: str | Path,
    *,
    time_scale: float = 1.0,
    start: int = 0,
    limit: int | None = None,
    max_duration_s: float | None = None,
    sort: bool = False,
    fmt: TraceFormat = "auto",
) -> list[TraceRequest]:
    """Read a trace file and return its requests, sliced and time-scaled.

    ``start`` skips that many data rows, ``limit`` keeps at most that many rows,
    ``max_duration_s`` keeps rows whose (scaled) arrival is ``<= max_duration_s``.
    ``time_scale`` is a speed-up factor: 2.0 replays twice as fast.
    Raises :class:`TraceError` on any bad input.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise TraceError(f"{p}: cannot read trace file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise TraceError(f"{p}: trace file is not UTF-8 text: {e}") from e
    if fmt == "auto":
        fmt = "jsonl" if p.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    if fmt == "jsonl":
        rows, time_field = _parse_jsonl(p, text.splitlines()), "arrival_s"
    else:
        rows, time_field = _parse_csv(p, text.splitlines(), force_azure=fmt == "azure")
    if not rows:
        raise TraceError(f"{p}: trace file is empty (no data rows)")
    rows = _check_order(p, rows, sort=sort, field=time_field)
    requests = [TraceRequest(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in rows]
    return slice_trace(
        requests, time_scale=time_scale, start=start, limit=limit, max_duration_s=max_duration_s
    )


def slice_trace(
    requests: Sequence[TraceRequest],
    *,
    time_scale: float = 1.0,
    start: int = 0,
    limit: int | None = None,
    max_duration_s: float | None = None,
) -> list[TraceRequest]:
    """Select rows ``[start, start+limit)``, rebase arrivals to the first kept row, scale, cut at a duration."""
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise TraceError(f"time_scale must be a positive finite number, got {time_scale!r}")
    if start < 0:
        raise TraceError(f"start must be >= 0, got {start}")
    if limit is not None and limit < 0:
        raise TraceError(f"limit must be >= 0, got {limit}")
    if max_duration_s is not None and max_duration_s < 0:
        raise TraceError(f"max_duration_s must be >= 0, got {max_duration_s}")
    end = None if limit is None else start + limit
    kept = requests[start:end]
    if not kept:
        return []
    origin = kept[0].arrival_s
    out: list[TraceRequest] = []
    for r in kept:
        arrival = (r.arrival_s - origin) / time_scale
        if max_duration_s is not None and arrival > max_duration_s:
            break
        out.append(TraceRequest(arrival, r.prompt_tokens, r.output_tokens))
    return out


# --------------------------------------------------------------------------- parsing


def _parse_csv(p: Path, lines: list[str], *, force_azure: bool) -> tuple[list[_Row], str]:
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise TraceError(f"{p}: trace file is empty")
    header_line, header_text = numbered[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    if force_azure or "TIMESTAMP" in header:
        columns, azure = AZURE_COLUMNS, True
    else:
        columns, azure = GENERIC_COLUMNS, False
    missing = [c for c in columns if c not in header]
    if missing:
        raise TraceError(
            f"{p}: line {header_line}: missing column(s) {', '.join(missing)}; "
            f"expected a header with {','.join(AZURE_COLUMNS)} (Azure trace) "
            f"or {','.join(GENERIC_COLUMNS)} (generic CSV), got {','.join(header)}"
        )
    idx = [header.index(c) for c in columns]
    width = max(idx) + 1
    rows: list[_Row] = []
    clock = _AzureClock() if azure else None
    for line_no, text in numbered[1:]:
        cells = next(csv.reader([text])) if '"' in text else text.split(",")
        if len(cells) < width:
            have = len(cells)
            raise TraceError(
                f"{p}: line {line_no}: field '{columns[_first_missing(idx, have)]}': "
                f"missing value (row has {have} column(s), header has {len(header)})"
            )
        raw_t, raw_p, raw_o = cells[idx[0]], cells[idx[1]], cells[idx[2]]
        if clock is not None:
            arrival = clock.parse(raw_t, p, line_no, columns[0])
        else:
            arrival = _parse_seconds(raw_t, p, line_no, columns[0])
        rows.append(
            _Row(
                line_no,
                arrival,
                _parse_count(raw_p, p, line_no, columns[1]),
                _parse_count(raw_o, p, line_no, columns[2]),
            )
        )
    return rows, columns[0]


def _first_missing(idx: Sequence[int], have: int) -> int:
    return next(k for k, i in enumerate(idx) if i >= have)


def _parse_jsonl(p: Path, lines: list[str]) -> list[_Row]:
    rows: list[_Row] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceError(f"{p}: line {line_no}: invalid JSON: {e.msg}") from e
        if not isinstance(obj, dict):
            raise TraceError(f"{p}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in GENERIC_COLUMNS if k not in obj]
        if missing:
            raise TraceError(f"{p}: line {line_no}: field '{missing[0]}': missing key")
        rows.append(
            _Row(
                line_no,
                _parse_seconds(obj["arrival_s"], p, line_no, "arrival_s"),
                _parse_count(obj["prompt_tokens"], p, line_no, "prompt_tokens"),
                _parse_count(obj["output_tokens"], p, line_no, "output_tokens"),
            )
        )
    return rows


def _parse_count(raw: object, p: Path, line: int, field: str) -> int:
    value: float | int | None = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        value = int(raw) if raw.is_integer() else None
    elif isinstance(raw, str):
        s = raw.strip()
        try:
            value = int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                f = math.nan
            value = int(f) if math.isfinite(f) and f.is_integer() else None
    if value is None:
        raise TraceError(f"{p}: line {line}: field '{field}': expected a non-negative integer, got {raw!r}")
    if value < 0:
        raise TraceError(f"{p}: line {line}: field '{field}': negative token count {value}")
    return value


def _parse_seconds(raw: object, p: Path, line: int, field: str) -> float:
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        raise TraceError(f"{p}: line {line}: field '{field}': expected a number of seconds, got {raw!r}")
    return value


class _AzureClock:
    """Parses Azure timestamps into seconds relative to the first parsed one (integer ns, no float drift)."""

    def __init__(self) -> None:
        self._origin_ns: int | None = None
        self._days: dict[str, int] = {}

    def parse(self, raw: str, p: Path, line: int, field: str) -> float:
        m = _TIMESTAMP_RE.match(raw)
        day = self._days.get(m.group(1)) if m else None
        if m is not None and day is None:
            try:
                day = dt.date.fromisoformat(m.group(1)).toordinal()
            except ValueError:
                day = None
            else:
                self._days[m.group(1)] = day
        if m is None or day is None:
            raise TraceError(
                f"{p}: line {line}: field '{field}': unparsable timestamp {raw!r} "
                "(expected e.g. 2023-11-16 18:15:46.6805900)"
            )
        hh, mm, ss = int(m.group(2)), int(m.group(3)), int(m.group(4))
        if hh > 23 or mm > 59 or ss > 60:
            raise TraceError(f"{p}: line {line}: field '{field}': unparsable timestamp {raw!r} (time out of range)")
        frac = (m.group(5) or "")[:9].ljust(9, "0")
        secs = day * 86400 + hh * 3600 + mm * 60 + ss
        tz = m.group(6)
        if tz and tz != "Z":
            sign = -1 if tz[0] == "-" else 1
            digits = tz[1:].replace(":", "")
            secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        ns = secs * 1_000_000_000 + int(frac)
        if self._origin_ns is None:
            self._origin_ns = ns
        return (ns - self._origin_ns) / 1e9


def _check_order(p: Path, rows: list[_Row], *, sort: bool, field: str) -> list[_Row]:
    prev = rows[0]
    for r in rows[1:]:
        if r.arrival_s < prev.arrival_s:
            if sort:
                rows = sorted(rows, key=lambda x: x.arrival_s)
                break
            raise TraceError(
                f"{p}: line {r.line}: field '{field}': timestamps are not sorted "
                f"(earlier than line {prev.line} by {prev.arrival_s - r.arrival_s:.6f} s); "
                "pass sort=True (CLI: --trace-sort) to sort the rows"
            )
        prev = r
    origin = rows[0].arrival_s
    if origin != 0.0:
        rows = [_Row(r.line, r.arrival_s - origin, r.prompt_tokens, r.output_tokens) for r in rows]
    return rows


def write_trace_jsonl(requests: Iterable[TraceRequest], path: str | Path) -> None:
    """Write requests in the JSONL trace format (handy for tests and for exporting a slice)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for r in requests:
            f.write(
                json.dumps(
                    {"arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens}
                )
                + "\n"
            )

