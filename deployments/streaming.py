"""Coalesces a replica's token stream into fewer, larger deltas: one Ray round trip per interval, not per token."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from deployments.protocol import GenerationDelta

_END = object()


def merge(deltas: list[GenerationDelta]) -> GenerationDelta:
    last = deltas[-1]
    return GenerationDelta("".join(d.text for d in deltas), last.completion_tokens, last.finish_reason)


async def coalesce(stream: AsyncIterator[GenerationDelta], interval_s: float) -> AsyncIterator[GenerationDelta]:
    """Yield the first delta at once, then at most one merged delta per `interval_s` (the last one at once).

    Per-item streaming between Serve replicas costs a Ray object each; at one item per token it, not the
    model, bounds throughput of small models (Ray Serve LLM batches its stream the same way).
    """
    if interval_s <= 0:
        async for d in stream:
            yield d
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for d in stream:
                queue.put_nowait(d)
            queue.put_nowait(_END)
        except Exception as e:
            queue.put_nowait(e)

    task = loop.create_task(pump())
    last_yield = float("-inf")
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            batch = [item]
            assert isinstance(item, GenerationDelta)
            wait = interval_s - (loop.time() - last_yield)
            if item.finish_reason is None and wait > 0:
                await asyncio.sleep(wait)
            pending: object = None
            while not queue.empty():
                nxt = queue.get_nowait()
                if not isinstance(nxt, GenerationDelta):
                    pending = nxt
                    break
                batch.append(nxt)
            yield merge(batch)
            last_yield = loop.time()
            if pending is _END:
                return
            if isinstance(pending, Exception):
                raise pending
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
