"""Summarise per-request benchmark records into latency percentiles, throughput, errors and pool shares (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PERCENTILES = (50, 95, 99)


class RequestRecord(BaseModel):
    """What happened to one request. Times are seconds from ``time.perf_counter()``, relative to the run start."""

    model_config = ConfigDict(frozen=True)

    index: int
    status: int | str = Field(description="HTTP status (200 on success) or 'timeout'/'connection'/'deadline'/'stream_error'/'error'")
    error: str | None = None
    start_s: float = Field(description="send time, relative to the run start")
    ttft_s: float | None = Field(None, description="first content chunk, relative to start_s")
    end_s: float = Field(description="last byte or failure, relative to the run start")
    output_tokens: int = 0
    prompt_tokens: int | None = Field(None, description="from the usage chunk, if any")
    planned_prompt_tokens: int | None = None
    max_tokens: int | None = None
    pool: str | None = Field(None, description="x-elo-pool response header")
    retry_after: str | None = Field(None, description="Retry-After header of a 429")

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first; None with <= 1 output token or no TTFT."""
        if self.ttft_s is None or self.output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class Percentiles(BaseModel):
    """Distribution of one latency metric, in milliseconds."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class BenchSummary(BaseModel):
    """Aggregate result of one benchmark run; serialises to JSON with ``model_dump_json``."""

    model_config = ConfigDict(frozen=True)

    num_planned: int
    num_sent: int
    num_ok: int
    num_errors: int
    errors_by_status: dict[str, int]
    wall_s: float
    requests_per_s: float = Field(description="successful requests / wall time")
    output_tokens_per_s: float = Field(description="output tokens of successful requests / wall time")
    total_output_tokens: int
    total_prompt_tokens: int
    ttft: Percentiles | None
    tpot: Percentiles | None
    e2e: Percentiles | None
    pool_counts: dict[str, int] = Field(description="requests per x-elo-pool value (empty if never sent)")
    pool_share: dict[str, float]


def percentiles(values_s: Sequence[float]) -> Percentiles | None:
    """p50/p95/p99/mean/max (ms) of values given in seconds; None when empty (linear interpolation)."""
    if not values_s:
        return None
    arr = np.asarray(values_s, dtype=float) * 1000.0
    p50, p95, p99 = (float(x) for x in np.percentile(arr, PERCENTILES))
    return Percentiles(
        count=len(arr), mean_ms=float(arr.mean()), p50_ms=p50, p95_ms=p95, p99_ms=p99, max_ms=float(arr.max())
    )


def summarize(records: Sequence[RequestRecord], *, wall_s: float, num_planned: int | None = None) -> BenchSummary:
    """Summarise records; rates are over ``wall_s`` (the run's wall time, first send to last end)."""
    ok = [r for r in records if r.ok]
    errors = Counter(str(r.status) for r in records if not r.ok)
    pools = Counter(r.pool for r in records if r.pool is not None)
    out_tokens = sum(r.output_tokens for r in ok)
    wall = max(wall_s, 0.0)
    return BenchSummary(
        num_planned=len(records) if num_planned is None else num_planned,
        num_sent=len(records),
        num_ok=len(ok),
        num_errors=len(records) - len(ok),
        errors_by_status=dict(sorted(errors.items())),
        wall_s=wall,
        requests_per_s=len(ok) / wall if wall > 0 else 0.0,
        output_tokens_per_s=out_tokens / wall if wall > 0 else 0.0,
        total_output_tokens=out_tokens,
        total_prompt_tokens=sum(r.prompt_tokens or r.planned_prompt_tokens or 0 for r in ok),
        ttft=percentiles([r.ttft_s for r in ok if r.ttft_s is not None]),
        tpot=percentiles([t for r in ok if (t := r.tpot_s) is not None]),
        e2e=percentiles([r.e2e_s for r in ok]),
        pool_counts=dict(sorted(pools.items())),
        pool_share={k: v / len(records) for k, v in sorted(pools.items())},
    )
