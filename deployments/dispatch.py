"""Sends a routed request to a pool: in-flight accounting, first-token wait, one retry elsewhere on failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from deployments.config import AppConfig
from deployments.protocol import APIError, GenerationDelta, GenerationRequest
from deployments.routing import Outcome, PoolView, RequestFeatures, choose_pool

log = logging.getLogger("ray.serve")


class DeltaStream(Protocol):
    """What a Serve streaming handle call returns (DeploymentResponseGenerator)."""

    def __aiter__(self) -> AsyncIterator[GenerationDelta]: ...
    async def __anext__(self) -> GenerationDelta: ...
    def cancel(self) -> None: ...


Send = Callable[[str, GenerationRequest], DeltaStream]


class Dispatcher:
    """Owns each pool's in-flight count and readiness as this router replica sees them."""

    def __init__(
        self,
        config: AppConfig,
        send: Send,
        on_change: Callable[[str, int], None] = lambda pool, in_flight: None,
        on_retry: Callable[[str], None] = lambda failed_pool: None,
    ):
        self.config = config
        self.send = send
        self.on_change = on_change
        self.on_retry = on_retry
        self.in_flight = {name: 0 for name in config.pools}
        self.ready = {name: 0 for name in config.pools}

    def views(self) -> dict[str, PoolView]:
        return {
            name: PoolView(name, self.ready[name], self.in_flight[name], cfg.max_ongoing_requests,
                           cfg.max_queued_requests, cfg.eligibility)
            for name, cfg in self.config.pools.items()
        }

    def set_ready(self, ready: Mapping[str, int]) -> None:
        self.ready.update({p: n for p, n in ready.items() if p in self.ready})

    def release(self, pool: str) -> None:
        self.in_flight[pool] -= 1
        self.on_change(pool, self.in_flight[pool])

    async def open(
        self, gen: GenerationRequest, features: RequestFeatures, order: list[str], first_token_timeout_s: float
    ) -> tuple[str, GenerationDelta, DeltaStream]:
        """Route the request and wait for its first delta. A failure before it is retried once, on
        another pool when one can take the request, else on the same pool (Serve picks a replica).
        The caller owns the returned stream and must `release(pool)` when it ends."""
        failed: str | None = None
        for attempt in (1, 2):
            if failed is not None:
                order = [p for p in order if p != failed] + [failed]
            decision = choose_pool(features, self.views(), order)
            if decision.outcome is not Outcome.ROUTE:
                raise refusal(decision.outcome, decision.reason, self.config.router.retry_after_s)
            pool = decision.pool
            assert pool is not None
            self.in_flight[pool] += 1
            self.on_change(pool, self.in_flight[pool])
            stream = self.send(pool, gen)
            try:
                async with asyncio.timeout(first_token_timeout_s):
                    first = await stream.__anext__()
            except Exception as e:
                self.release(pool)
                stream.cancel()
                log.warning("pool %s failed before the first token of %s (attempt %d): %r",
                            pool, gen.request_id, attempt, e)
                if attempt == 1:
                    failed = pool
                    self.on_retry(pool)
                    continue
                raise APIError(503, f"The {pool} pool failed to start generating: {e}", type="server_error",
                               code="replica_failed", headers=retry_after(self.config.router.retry_after_s)) from e
            return pool, first, stream
        raise AssertionError("unreachable")


def retry_after(seconds: int) -> dict[str, str]:
    return {"Retry-After": str(seconds)}


def refusal(outcome: Outcome, reason: str, retry_after_s: int) -> APIError:
    """The client-facing error for a request the routing policy could not place."""
    if outcome is Outcome.BUSY:
        return APIError(429, f"All pools are at capacity ({reason}). Retry later.", type="rate_limit_error",
                        code="pools_saturated", headers=retry_after(retry_after_s))
    if outcome is Outcome.UNAVAILABLE:
        return APIError(503, f"No replica is ready ({reason}). Retry later.", type="server_error",
                        code="no_ready_replica", headers=retry_after(retry_after_s))
    return APIError(400, f"No pool can serve this request: {reason}.", param="max_tokens", code="no_eligible_pool")

