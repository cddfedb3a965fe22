"""Dispatcher: in-flight accounting, the one retry after a failure before the first token, refusals."""

from __future__ import annotations

import asyncio

import pytest

from deployments.config import AppConfig, PoolConfig, RouterConfig
from deployments.dispatch import Dispatcher
from deployments.protocol import APIError, GenerationDelta, GenerationRequest
from deployments.routing import RequestFeatures

CONFIG = AppConfig(pools={"cloud": PoolConfig(engine="vllm", max_ongoing_requests=2, max_queued_requests=0),
                          "edge": PoolConfig(engine="transformers", max_ongoing_requests=1, max_queued_requests=0)},
                   router=RouterConfig(cold_start_wait_s=0.2, max_waiting_at_zero=2))
GEN = GenerationRequest("r1", [1, 2, 3], max_tokens=2)
FEATURES = RequestFeatures(prompt_tokens=3, max_tokens=2)


class FakeStream:
    """Records cancellation; yields scripted deltas or raises a scripted error first."""

    def __init__(self, pool: str, fail: BaseException | None):
        self.pool, self.fail, self.cancelled = pool, fail, False
        self.items = [GenerationDelta("a", 1), GenerationDelta("b", 2, "length")]

    def __aiter__(self):
        return self

    async def __anext__(self) -> GenerationDelta:
        if self.fail is not None:
            raise self.fail
        if not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self) -> None:
        self.cancelled = True


class FakePools:
    def __init__(self, failing: dict[str, int]):
        self.failing = dict(failing)  # pool -> how many calls fail before the first token
        self.calls: list[FakeStream] = []

    def send(self, pool: str, gen: GenerationRequest) -> FakeStream:
        fail = RuntimeError(f"{pool} replica died") if self.failing.get(pool, 0) > 0 else None
        self.failing[pool] = self.failing.get(pool, 0) - 1
        self.calls.append(FakeStream(pool, fail))
        return self.calls[-1]


def dispatcher(failing: dict[str, int], ready: dict[str, int] | None = None) -> tuple[Dispatcher, FakePools, list]:
    pools, retried = FakePools(failing), []
    d = Dispatcher(CONFIG, pools.send, on_retry=retried.append)
    d.set_ready(ready or {"cloud": 1, "edge": 1})
    return d, pools, retried


def open_(d: Dispatcher, order=("cloud", "edge")):
    return asyncio.run(d.open(GEN, FEATURES, list(order), first_token_timeout_s=5))


def test_first_delta_is_returned_and_the_request_counts_as_in_flight_until_released():
    d, pools, _ = dispatcher({})
    pool, first, _ = open_(d)
    assert (pool, first.text) == ("cloud", "a")
    assert d.in_flight == {"cloud": 1, "edge": 0}
    d.release(pool)
    assert d.in_flight == {"cloud": 0, "edge": 0}


def test_failure_before_the_first_token_is_retried_once_on_the_other_pool():
    d, pools, retried = dispatcher({"cloud": 1})
    pool, first, _ = open_(d)
    assert pool == "edge" and first.text == "a"
    assert [c.pool for c in pools.calls] == ["cloud", "edge"] and pools.calls[0].cancelled
    assert retried == ["cloud"]
    assert d.in_flight == {"cloud": 0, "edge": 1}, "the failed attempt is not counted"


def test_retry_stays_in_the_same_pool_when_the_other_pool_is_full():
    d, pools, _ = dispatcher({"cloud": 1})
    d.in_flight["edge"] = 1  # edge's only slot is taken, and it queues nothing
    pool, _, _ = open_(d)
    assert [c.pool for c in pools.calls] == ["cloud", "cloud"] and pool == "cloud"


def test_second_failure_is_a_503_with_retry_after_and_nothing_stays_in_flight():
    d, pools, _ = dispatcher({"cloud": 1, "edge": 1})
    with pytest.raises(APIError) as e:
        open_(d)
    assert (e.value.status, e.value.code, e.value.headers) == (503, "replica_failed", {"Retry-After": "1"})
    assert len(pools.calls) == 2 and d.in_flight == {"cloud": 0, "edge": 0}


def test_full_pools_refuse_with_429_and_retry_after_without_calling_a_replica():
    d, pools, _ = dispatcher({})
    d.in_flight.update(cloud=2, edge=1)
    with pytest.raises(APIError) as e:
        open_(d)
    assert (e.value.status, e.value.type, e.value.headers["Retry-After"]) == (429, "rate_limit_error", "1")
    assert pools.calls == []


def test_no_ready_replica_waits_the_bounded_cold_start_time_then_503_not_a_hang():
    d, pools, _ = dispatcher({}, ready={"cloud": 0, "edge": 0})
    with pytest.raises(APIError) as e:
        open_(d)
    assert (e.value.status, e.value.code, e.value.headers) == (503, "no_ready_replica", {"Retry-After": "1"})
    assert "waited 0s" in e.value.message and pools.calls == []
    assert d.waiting == {"cloud": 0, "edge": 0}, "a request that gave up no longer counts as waiting"


def test_with_waiting_disabled_no_ready_replica_is_an_immediate_503():
    config = CONFIG.model_copy(update={"router": RouterConfig(cold_start_wait_s=0)})
    d = Dispatcher(config, FakePools({}).send)
    with pytest.raises(APIError) as e:
        asyncio.run(d.open(GEN, FEATURES, ["cloud", "edge"], first_token_timeout_s=5))
    assert e.value.status == 503


def test_cold_start_request_waits_for_the_starting_replica_and_is_served_when_it_is_ready():
    async def scenario():
        pools = FakePools({})
        d = Dispatcher(CONFIG.model_copy(update={"router": RouterConfig(cold_start_wait_s=30)}), pools.send)
        d.set_ready({"cloud": 0, "edge": 0}, starting={"cloud": 1})
        task = asyncio.create_task(d.open(GEN, FEATURES, ["edge", "cloud"], first_token_timeout_s=5))
        await asyncio.sleep(0.05)
        seen_waiting = dict(d.waiting)
        d.set_ready({"cloud": 1}, starting={"cloud": 0})  # the replica came up
        pool, first, _ = await asyncio.wait_for(task, 5)
        return seen_waiting, pool, first, d

    seen_waiting, pool, first, d = asyncio.run(scenario())
    assert seen_waiting == {"cloud": 1, "edge": 0}, "the held request is visible as waiting for cloud"
    assert (pool, first.text) == ("cloud", "a")
    assert d.waiting == {"cloud": 0, "edge": 0} and d.in_flight == {"cloud": 1, "edge": 0}


def test_full_edge_and_starting_cloud_holds_the_request_and_a_release_lets_it_in():
    async def scenario():
        pools = FakePools({})
        d = Dispatcher(CONFIG.model_copy(update={"router": RouterConfig(cold_start_wait_s=30)}), pools.send)
        d.set_ready({"cloud": 0, "edge": 1}, starting={"cloud": 1})
        d.in_flight["edge"] = 1  # the edge pool is full
        task = asyncio.create_task(d.open(GEN, FEATURES, ["edge", "cloud"], first_token_timeout_s=5))
        await asyncio.sleep(0.05)
        held = not task.done()
        d.release("edge")  # the edge request finished: room again, before cloud is ready
        pool, _, _ = await asyncio.wait_for(task, 5)
        return held, pool

    held, pool = asyncio.run(scenario())
    assert held and pool == "edge"


def test_a_waiter_that_times_out_while_a_pool_serves_gets_429():
    d, pools, _ = dispatcher({}, ready={"cloud": 0, "edge": 1})
    d.set_ready({}, starting={"cloud": 1})
    d.in_flight["edge"] = 1
    with pytest.raises(APIError) as e:
        open_(d, order=("edge", "cloud"))
    assert (e.value.status, e.value.headers["Retry-After"]) == (429, "1") and pools.calls == []


def test_a_replica_that_never_answers_times_out_and_is_retried():
    class Hanging(FakeStream):
        async def __anext__(self) -> GenerationDelta:
            await asyncio.sleep(3600)
            raise AssertionError

    calls: list[str] = []

    def send(pool: str, gen: GenerationRequest) -> FakeStream:
        calls.append(pool)
        return Hanging(pool, None) if pool == "cloud" else FakeStream(pool, None)

    d = Dispatcher(CONFIG, send)
    d.set_ready({"cloud": 1, "edge": 1})
    pool, _, _ = asyncio.run(d.open(GEN, FEATURES, ["cloud", "edge"], first_token_timeout_s=0.05))
    assert calls == ["cloud", "edge"] and pool == "edge"
