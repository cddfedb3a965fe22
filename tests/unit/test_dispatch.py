"""Dispatcher: least busy replica, in-flight accounting that never leaks (cancellation included), the one retry
after a replica failed before answering, 4xx passed through unretried, refusals, the cold-start wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from deployments.config import AppConfig, PoolConfig, RouterConfig
from deployments.contract import RoutingPlan
from deployments.dispatch import Dispatcher, ReplicaFailed
from deployments.protocol import APIError
from deployments.routing import RequestFeatures

CONFIG = AppConfig(pools={"cloud": PoolConfig(engine="vllm", max_ongoing_requests=2, max_queued_requests=0),
                          "edge": PoolConfig(engine="transformers", max_ongoing_requests=1, max_queued_requests=0)},
                   router=RouterConfig(fill_order=["cloud", "edge"], cold_start_wait_s=0.2, max_waiting_at_zero=2,
                                       probe_every_s=None))
FEATURES = RequestFeatures(prompt_tokens=3, max_tokens=2)


class FakeUpstream:
    def __init__(self, status: int = 200, body: bytes = b"data: {}\n\n"):
        self.status, self.headers, self._body, self.closed = status, {}, body, False

    async def _iter(self) -> AsyncIterator[bytes]:
        yield self._body

    def body(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def aclose(self) -> None:
        self.closed = True


class FakeReplicas:
    """Answers by URL: a status, a connection failure (ReplicaFailed), or a hang."""

    def __init__(self, script: dict[str, list] | None = None):
        self.script = script or {}
        self.calls: list[str] = []

    async def send(self, url: str, path: str, body: bytes) -> FakeUpstream:
        self.calls.append(url)
        steps = self.script.get(url, [])
        step = steps.pop(0) if steps else 200
        if step == "down":
            raise ReplicaFailed("connection refused")
        if step == "hang":
            await asyncio.sleep(3600)
        return FakeUpstream(step)


def dispatcher(script: dict[str, list] | None = None, cloud: int = 1, edge: int = 1,
               config: AppConfig = CONFIG) -> tuple[Dispatcher, FakeReplicas]:
    replicas = FakeReplicas(script)
    d = Dispatcher(config, replicas.send)
    d.set_replicas("cloud", {f"c{i}": f"http://cloud-{i}" for i in range(cloud)})
    d.set_replicas("edge", {f"e{i}": f"http://edge-{i}" for i in range(edge)})
    return d, replicas


def in_flight(d: Dispatcher) -> dict[str, int]:
    return {n: p.in_flight for n, p in d.pools.items()}


def test_the_least_busy_replica_gets_the_request_and_counts_until_released():
    async def scenario():
        d, replicas = dispatcher(cloud=2)
        a = await d.open(FEATURES, "/v1/completions", b"{}")
        b = await d.open(FEATURES, "/v1/completions", b"{}")
        return d, replicas, a, b

    d, replicas, a, b = asyncio.run(scenario())
    assert replicas.calls == ["http://cloud-0", "http://cloud-1"]
    assert (a.concurrency, b.concurrency) == (1, 1) and in_flight(d) == {"cloud": 2, "edge": 0}
    d.release(a.pool, a.replica)
    d.release(b.pool, b.replica)
    assert in_flight(d) == {"cloud": 0, "edge": 0}


def test_a_replica_that_fails_before_answering_is_retried_once_on_the_other_pool():
    d, replicas = dispatcher({"http://cloud-0": ["down"]})
    opened = asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert opened.pool == "edge" and replicas.calls == ["http://cloud-0", "http://edge-0"]
    assert in_flight(d) == {"cloud": 0, "edge": 1}, "the failed attempt is not counted"


def test_a_5xx_is_a_failure_and_is_retried():
    d, replicas = dispatcher({"http://cloud-0": [500]})
    assert asyncio.run(d.open(FEATURES, "/v1/completions", b"{}")).pool == "edge"


def test_a_4xx_is_the_clients_and_is_passed_back_without_a_retry():
    d, replicas = dispatcher({"http://cloud-0": [400]})
    opened = asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert (opened.pool, opened.upstream.status) == ("cloud", 400) and replicas.calls == ["http://cloud-0"]


def test_the_retry_takes_another_replica_of_the_same_pool_when_the_other_pool_is_full():
    d, replicas = dispatcher({"http://cloud-0": ["down"]}, cloud=2, edge=0)
    opened = asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert replicas.calls == ["http://cloud-0", "http://cloud-1"] and opened.pool == "cloud"


def test_a_second_failure_is_a_503_with_retry_after_and_nothing_stays_in_flight():
    d, replicas = dispatcher({"http://cloud-0": ["down"], "http://edge-0": ["down"]})
    with pytest.raises(APIError) as e:
        asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert (e.value.status, e.value.code, e.value.headers) == (503, "replica_failed", {"Retry-After": "1"})
    assert len(replicas.calls) == 2 and in_flight(d) == {"cloud": 0, "edge": 0}


def test_full_pools_refuse_with_429_and_retry_after_without_calling_a_replica():
    d, replicas = dispatcher()
    d.pools["cloud"].in_flight, d.pools["edge"].in_flight = 2, 1
    with pytest.raises(APIError) as e:
        asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert (e.value.status, e.value.type, e.value.headers["Retry-After"]) == (429, "rate_limit_error", "1")
    assert replicas.calls == []


def test_no_ready_replica_waits_the_bounded_cold_start_time_then_503_not_a_hang():
    d, replicas = dispatcher(cloud=0, edge=0)
    with pytest.raises(APIError) as e:
        asyncio.run(d.open(FEATURES, "/v1/completions", b"{}"))
    assert (e.value.status, e.value.code) == (503, "no_ready_replica") and "waited" in e.value.message
    assert replicas.calls == [] and all(p.waiting == 0 for p in d.pools.values())


def test_a_cold_start_request_waits_for_the_starting_replica_and_is_served_when_it_is_ready():
    async def scenario():
        config = CONFIG.model_copy(update={"router": CONFIG.router.model_copy(update={"cold_start_wait_s": 30})})
        d, replicas = dispatcher(cloud=0, edge=0, config=config)
        d.set_plan(RoutingPlan(fill_order=["edge", "cloud"], starting={"cloud": 1}))
        task = asyncio.create_task(d.open(FEATURES, "/v1/completions", b"{}"))
        await asyncio.sleep(0.05)
        seen = {n: p.waiting for n, p in d.pools.items()}
        d.set_replicas("cloud", {"c0": "http://cloud-0"})  # the replica came up
        opened = await asyncio.wait_for(task, 5)
        return seen, opened, d

    seen, opened, d = asyncio.run(scenario())
    assert seen == {"cloud": 1, "edge": 0}, "the held request counts as waiting for cloud"
    assert opened.pool == "cloud" and in_flight(d) == {"cloud": 1, "edge": 0}


def test_a_client_that_goes_away_while_waiting_or_sending_leaves_nothing_in_flight():
    async def scenario():
        config = CONFIG.model_copy(update={"router": CONFIG.router.model_copy(update={"cold_start_wait_s": 30})})
        d, _ = dispatcher({"http://cloud-0": ["hang"]}, config=config)
        sending = asyncio.create_task(d.open(FEATURES, "/v1/completions", b"{}"))
        await asyncio.sleep(0.05)
        during_send = in_flight(d)
        sending.cancel()  # the client disconnected before the replica answered
        with pytest.raises(asyncio.CancelledError):
            await sending
        d.set_replicas("cloud", {})
        d.set_replicas("edge", {})
        d.set_plan(RoutingPlan(fill_order=["edge", "cloud"], starting={"edge": 1}))
        waiting = asyncio.create_task(d.open(FEATURES, "/v1/completions", b"{}"))
        await asyncio.sleep(0.05)
        held = {n: p.waiting for n, p in d.pools.items()}
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return d, during_send, held

    d, during_send, held = asyncio.run(scenario())
    assert during_send == {"cloud": 1, "edge": 0} and held["edge"] == 1
    assert in_flight(d) == {"cloud": 0, "edge": 0} and all(p.waiting == 0 for p in d.pools.values())
    assert all(r.in_flight == 0 for p in d.pools.values() for r in p.replicas.values())


def test_a_replica_that_left_finishes_its_requests_and_takes_no_new_one():
    async def scenario():
        d, replicas = dispatcher(cloud=2, edge=0)
        a = await d.open(FEATURES, "/v1/completions", b"{}")  # on cloud-0
        d.set_replicas("cloud", {"c1": "http://cloud-1"})  # Serve stopped c0 (draining)
        b = await d.open(FEATURES, "/v1/completions", b"{}")
        return d, replicas, a, b

    d, replicas, a, b = asyncio.run(scenario())
    assert b.replica.url == "http://cloud-1" and "c0" in d.pools["cloud"].replicas
    d.release(a.pool, a.replica)
    assert "c0" not in d.pools["cloud"].replicas, "gone once its last request finished"


def test_a_preferred_pool_goes_first_while_it_has_room_then_the_fill_order_holds():
    # A stream's continuation prefers the failed replica's pool (edge here, second in the fill order): another of
    # its replicas takes it; with no room left there (1 slot, no queue), the fill order's first pool does.
    async def scenario():
        d, _ = dispatcher(edge=1)
        first = await d.open(FEATURES, "/v1/completions", b"{}", prefer="edge")
        second = await d.open(FEATURES, "/v1/completions", b"{}", prefer="edge")
        plain = await d.open(FEATURES, "/v1/completions", b"{}")
        return first.pool, second.pool, plain.pool

    assert asyncio.run(scenario()) == ("edge", "cloud", "cloud")
