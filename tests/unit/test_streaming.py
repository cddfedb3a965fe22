"""Stream coalescing: first delta at once, merged deltas after, nothing lost, errors kept."""

from __future__ import annotations

import asyncio

import pytest

from deployments.protocol import GenerationDelta
from deployments.streaming import coalesce


async def tokens(n: int, gap_s: float, fail_at: int | None = None):
    for i in range(1, n + 1):
        await asyncio.sleep(gap_s)
        if i == fail_at:
            raise RuntimeError("engine died")
        yield GenerationDelta(f"t{i} ", i, "length" if i == n else None)


def collect(stream) -> list[GenerationDelta]:
    async def main():
        return [d async for d in stream]

    return asyncio.run(main())


def test_deltas_are_merged_without_losing_text_or_the_final_counts():
    out = collect(coalesce(tokens(20, 0.002), interval_s=0.02))
    assert "".join(d.text for d in out) == "".join(f"t{i} " for i in range(1, 21))
    assert out[0].text == "t1 " and out[-1].completion_tokens == 20 and out[-1].finish_reason == "length"
    assert 2 <= len(out) < 20
    assert [d.finish_reason for d in out[:-1]] == [None] * (len(out) - 1)


def test_zero_interval_passes_every_delta_through():
    assert len(collect(coalesce(tokens(5, 0), interval_s=0))) == 5


def test_an_engine_error_is_raised_after_the_text_before_it():
    seen: list[str] = []

    async def main():
        async for d in coalesce(tokens(10, 0.001, fail_at=6), interval_s=0.01):
            seen.append(d.text)

    with pytest.raises(RuntimeError, match="engine died"):
        asyncio.run(main())
    assert "".join(seen) == "t1 t2 t3 t4 t5 "
