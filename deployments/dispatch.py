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
        self.starting = {name: 0 for name in config.pools}
        self.waiting = {name: 0 for name in config.pools}  # requests held until the pool has room (cold start)
        self._room = asyncio.Event()  # set (and replaced) whenever room may have appeared

    def views(self) -> dict[str, PoolView]:
        return {
            name: PoolView(name, self.ready[name], self.in_flight[name], cfg.max_ongoing_requests,
                           cfg.max_queued_requests, cfg.eligibility, self.starting[name], self.waiting[name],
                           self.config.router.max_waiting_at_zero)
            for name, cfg in self.config.pools.items()
        }

    def set_ready(self, ready: Mapping[str, int], starting: Mapping[str, int] | None = None) -> None:
        self.ready.update({p: n for p, n in ready.items() if p in self.ready})
        self.starting.update({p: n for p, n in (starting or {}).items() if p in self.starting})
        self._wake()

    def release(self, pool: str) -> None:
        self.in_flight[pool] -= 1
        self.on_change(pool, self.in_flight[pool])
        self._wake()

    def _wake(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    async def _wait_for_room(self, pool: str, timeout_s: float) -> None:
        """Hold one request for ``pool`` until readiness or in-flight counts change (or ``timeout_s``)."""
        room = self._room
        self.waiting[pool] += 1
        try:
            async with asyncio.timeout(timeout_s):
                await room.wait()
        except TimeoutError:
            pass
        finally:
            self.waiting[pool] -= 1

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
            pool = await self._place(features, order)
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

    async def _place(self, features: RequestFeatures, order: list[str]) -> str:
        """The pool the request goes to; while the routing policy says WAIT, hold it (up to
        ``cold_start_wait_s``) and ask again each time room may have appeared."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.router.cold_start_wait_s
        while True:
            decision = choose_pool(features, self.views(), order)
            if decision.outcome is Outcome.ROUTE:
                assert decision.pool is not None
                return decision.pool
            remaining = deadline - loop.time()
            if decision.outcome is not Outcome.WAIT or remaining <= 0:
                outcome = decision.outcome
                if outcome is Outcome.WAIT:  # waited long enough: busy if something serves, else unavailable
                    serving = any(v.ready_replicas > 0 and v.accepts(features) for v in self.views().values())
                    outcome = Outcome.BUSY if serving else Outcome.UNAVAILABLE
                    reason = f"waited {self.config.router.cold_start_wait_s:.0f}s: {decision.reason}"
                else:
                    reason = decision.reason
                raise refusal(outcome, reason, self.config.router.retry_after_s)
            assert decision.pool is not None
            await self._wait_for_room(decision.pool, remaining)


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

