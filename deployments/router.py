"""The OpenAI-compatible ingress: validates requests, picks a pool and a replica per request, and passes the
replica's bytes through. It serves HTTP itself (uvicorn in its Serve replica), so no Ray hop carries a token."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.auth import Auth, keys_from_env
from deployments.config import AppConfig
from deployments.contract import RouterStats, RoutingPlan, fill_order, router_stats
from deployments.dispatch import Dispatcher, Opened, ReplicaFailed
from deployments.engine_metrics import Exposition, Scraped, relabelled
from deployments.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    engine_features,
    features_of,
    parse_json,
    sse_event,
    validate_request,
)
from deployments.replica_set import ServeReplicas
from deployments.resume import Reshape, Streamed, continuation, resumable, strip_token_ids
from deployments.routing import RequestFeatures
from deployments.window import PoolWindow, ServiceSample

log = logging.getLogger("ray.serve")

POOL_HEADER = "x-elo-pool"
_JSON = {"content-type": "application/json"}


class _Metrics:
    """Prometheus metrics of one router replica."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("elo_requests", "Requests answered, by pool and HTTP status.", ["pool", "status"], registry=r)
        self.ttft = Histogram(
            "elo_time_to_first_token_seconds", "Time to first token.", ["pool"], registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.latency = Histogram(
            "elo_request_latency_seconds", "End-to-end request latency.", ["pool"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.tokens = Counter("elo_tokens", "Tokens processed, by pool and kind.", ["pool", "kind"], registry=r)
        self.in_flight = Gauge("elo_pool_in_flight_requests", "Requests in flight per pool.", ["pool"], registry=r)
        self.ready = Gauge("elo_pool_ready_replicas", "Ready replicas per pool.", ["pool"], registry=r)
        self.retries = Counter("elo_retries", "Requests retried after a replica failed before answering.", ["pool"],
                               registry=r)
        self.resumes = Counter("elo_stream_resumes", "Streams continued on another replica after theirs failed "
                               "mid-stream, by the pool that failed and the pool that continued.",
                               ["from_pool", "to_pool"], registry=r)
        self.slo = Counter("elo_slo_requests", "Requests counted against the controller's SLO (TTFT and E2E within "
                           "it, answered 200: result=met).", ["pool", "result"], registry=r)
        self.key_refused = Counter("elo_key_refused_requests", "Requests refused for their API key: 401 (no valid "
                                   "key), 403 (a right it lacks), 429 (its per-minute budget), by key name.",
                                   ["key", "status"], registry=r)
        self.starting = Gauge("elo_pool_starting_replicas", "Replicas on their way per pool (the controller's plan).",
                              ["pool"], registry=r)
        self.queued = Gauge("elo_pool_queued_requests", "Requests waiting at the router for the pool's capacity.",
                            ["pool"], registry=r)
        self.admit = Gauge("elo_pool_slo_concurrency_per_replica",
                           "Requests the router lets one replica take (the SLO-safe concurrency in force).", ["pool"],
                           registry=r)

    def observe(self, stats: RouterStats) -> None:
        """Gauges that are a reading of the router's state, set at scrape time from /elo/pools' figures."""
        for pool, s in stats.pools.items():
            self.ready.labels(pool).set(s.ready_replicas)
            self.starting.labels(pool).set(s.starting_replicas)
            self.queued.labels(pool).set(s.queued)
            self.in_flight.labels(pool).set(s.in_flight)
            self.admit.labels(pool).set(s.admission.max_concurrency_per_replica)


@dataclass
class Call:
    """One request on its way: what the router parsed, and what it measured of the answer."""

    path: str
    body: bytes
    features: RequestFeatures
    prompt_tokens: int
    stream: bool
    wants_usage: bool  # the client asked for the stream's usage chunk
    started: float
    data: dict[str, Any] = field(default_factory=dict)  # the request as sent to the replica
    prompt_ids: list[int] | None = None  # the one prompt's token ids (None: several prompts)
    first_pool: str = ""
    completion_tokens: int = 0
    first_token_at: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    resumed: int = 0  # times the stream was continued on another replica


class _HttpUpstream:
    """An aiohttp streaming response as the dispatcher's Upstream (aiohttp: its HTTP parser is C, and a relayed
    token costs the router a fraction of what a pure-Python client's parse costs)."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.status = response.status
        self.headers = response.headers

    def body(self) -> AsyncIterator[bytes]:
        return self.response.content.iter_any()

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()  # read to the end: the connection goes back to the pool
        else:
            self.response.close()  # cut short (the client left, or an error): closing stops the replica's work


@serve.deployment(max_ongoing_requests=1000)
class Router:
    async def __init__(
        self,
        config: dict[str, Any],
        model_path: str,
        max_model_len: int,
        pools: dict[str, Any],
        host: str = "127.0.0.1",
        port: int = 8000,
    ):
        from transformers import AutoTokenizer

        self.config = AppConfig.model_validate(config)
        self.model_name = self.config.model.served_name
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.vocab_size = len(self.tokenizer)
        self.metrics = _Metrics()
        for pool in self.config.pools:  # every pool's SLO series exists from the start (a share is 0/0, not absent)
            for result in ("met", "missed"):
                self.metrics.slo.labels(pool, result)
        self.clock: Callable[[], float] = time.monotonic
        self.auth = Auth(self.config.router.auth, self.clock, keys_from_env())
        if not self.auth.enabled and host not in ("127.0.0.1", "localhost", "::1"):
            log.warning("router on %s:%d without API keys: anyone who reaches it may call every endpoint", host, port)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=4096, limit_per_host=0, keepalive_timeout=75),
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=self.config.router.request_timeout_s),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        self.dispatch = Dispatcher(
            self.config, send=self._send, clock=self.clock,
            on_retry=lambda pool: self.metrics.retries.labels(pool).inc(),
        )
        self.dispatch.set_features({n: engine_features(c.engine, c.engine_args) for n, c in self.config.pools.items()})
        self.windows = {name: PoolWindow(self.config.router.metrics_window_s) for name in self.config.pools}
        self.replicas = {name: ServeReplicas(h) for name, h in pools.items()}
        self.app = build_app(self)
        self.gate = _Gate(self.app, self.config.router.retry_after_s)
        self.uvicorn, self.server = _serve(self.gate, host, port)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_replicas())

    # --- readiness: pushed by Serve to this process's handles -------------------------------------------------

    async def _refresh_replicas(self) -> None:
        every_s = min(0.25, self.config.router.readiness_poll_s)
        while True:
            for pool, replicas in self.replicas.items():
                try:
                    self.dispatch.set_replicas(pool, replicas.endpoints())
                except Exception:  # Serve's view may be rebuilding: keep the last known replicas
                    log.warning("could not read the running replicas of %s", pool, exc_info=True)
            await asyncio.sleep(every_s)

    async def _send(self, url: str, path: str, body: bytes) -> _HttpUpstream:
        try:
            response = await self.http.post(url + path, data=body, headers=_JSON)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ReplicaFailed(f"{type(e).__name__}: {e}") from e
        return _HttpUpstream(response)

    async def engine_metrics(self) -> list[Metric]:
        """Every ready replica's ``vllm:`` metrics, labelled with pool and replica (deployments/engine_metrics.py)."""
        targets = [(pool, r.replica_id, r.url) for pool in self.config.pools for r in self.dispatch.ready(pool)]
        texts = await asyncio.gather(*(self._scrape(url) for _, _, url in targets))
        return relabelled(Scraped(pool, rid, text) for (pool, rid, _), text in zip(targets, texts, strict=True))

    async def _scrape(self, url: str) -> str | None:
        try:
            timeout = aiohttp.ClientTimeout(total=self.config.router.engine_metrics_timeout_s)
            async with self.http.get(url + "/metrics", timeout=timeout) as r:
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def check_health(self) -> None:
        if self.server.done():
            raise RuntimeError("the router's HTTP server stopped")

    async def __del__(self) -> None:
        """Graceful shutdown (Serve calls it before stopping the replica): stop admitting, let what is in flight
        finish (up to router.drain_timeout_s), then stop serving."""
        gate = getattr(self, "gate", None)
        if gate is None:
            return
        gate.draining = True
        log.info("router draining: %d requests in flight", gate.in_flight)
        try:
            await asyncio.wait_for(gate.idle.wait(), self.config.router.drain_timeout_s)
        except TimeoutError:
            log.warning("router: %d requests still in flight after %.0f s of draining", gate.in_flight,
                        self.config.router.drain_timeout_s)
        self.uvicorn.should_exit = True
        try:
            await asyncio.wait_for(self.server, 5)
        except (TimeoutError, asyncio.CancelledError, Exception):
            self.server.cancel()
        await self.http.close()

    # --- stats ------------------------------------------------------------------------------------------------

    def stats(self) -> RouterStats:
        return router_stats(self.dispatch.views(), self.windows, self.clock(), self.dispatch.plan,
                            wall_time_s=time.time())

    def set_plan(self, plan: RoutingPlan) -> None:
        unknown = plan.unknown_pools(list(self.config.pools))
        if unknown:
            raise APIError(400, f"Unknown pools {unknown}; pools are {sorted(self.config.pools)}.",
                           param="fill_order", code="invalid_value")
        self.dispatch.set_plan(plan)

    # --- the request path -------------------------------------------------------------------------------------

    def prepare_chat(self, body: ChatCompletionRequest, data: dict[str, Any], slo_class: str | None) -> Call:
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        for m in messages:
            if m["role"] == "developer":
                m["role"] = "system"
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p["text"] for p in m["content"])
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                      tokenize=False)
        except Exception as e:
            raise APIError(400, f"The model's chat template cannot render these messages: {e}.",
                           param="messages", code="invalid_value") from e
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._call("/v1/chat/completions", body, data, len(ids), slo_class, ids)

    def prepare_completion(self, body: CompletionRequest, data: dict[str, Any], slo_class: str | None) -> Call:
        prompts = []
        for p in body.prompts():
            if isinstance(p, str):
                prompts.append(self.tokenizer(p)["input_ids"])
            else:
                bad = [t for t in p if t >= self.vocab_size]
                if bad:
                    raise APIError(400, f"Token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1}).",
                                   param="prompt", code="invalid_value")
                prompts.append(p)
        return self._call("/v1/completions", body, data, max(map(len, prompts)), slo_class,
                          prompts[0] if len(prompts) == 1 else None)

    def _call(self, path: str, body: ChatCompletionRequest | CompletionRequest, data: dict[str, Any],
              prompt_tokens: int, slo_class: str | None, prompt_ids: list[int] | None = None) -> Call:
        if body.model != self.model_name:
            raise APIError(404, f"The model '{body.model}' does not exist. This endpoint serves '{self.model_name}'.",
                           param="model", code="model_not_found")
        self._check_token_ids(body)
        max_tokens = self._limit_tokens(prompt_tokens, body.requested_max_tokens())
        wants_usage = body.include_usage()
        if body.stream and not wants_usage:
            # The router counts tokens from the usage chunk; the client did not ask for it, so it is dropped.
            data = {**data, "stream_options": {**(data.get("stream_options") or {}), "include_usage": True}}
        if body.stream and resumable(data) is None:
            # The token ids of what is streamed, should the stream have to go on elsewhere (stripped on the way).
            data = {**data, "return_token_ids": True}
        features = RequestFeatures(prompt_tokens=prompt_tokens, max_tokens=max_tokens, slo_class=slo_class,
                                   needs=features_of(body))
        return Call(path, json.dumps(data, separators=(",", ":")).encode(), features, prompt_tokens, body.stream,
                    wants_usage, self.clock(), data, prompt_ids)

    def _check_token_ids(self, body: ChatCompletionRequest | CompletionRequest) -> None:
        for name, ids in (("logit_bias", [int(k) for k in (body.logit_bias or {})]),
                          ("stop_token_ids", body.stop_token_ids or [])):
            bad = [t for t in ids if t >= self.vocab_size]
            if bad:
                raise APIError(400, f"Token id {bad[0]} in '{name}' is outside the vocabulary "
                               f"(0..{self.vocab_size - 1}).", param=name, code="invalid_value")

    def _limit_tokens(self, prompt_tokens: int, requested: int | None) -> int:
        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{prompt_tokens} tokens, leaving no room for a completion.",
                param="messages", code="context_length_exceeded",
            )
        if requested is None:
            return limit - prompt_tokens
        if prompt_tokens + requested > limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, {requested} for the "
                f"completion). Please reduce the prompt or max_tokens.",
                param="max_tokens", code="context_length_exceeded",
            )
        return requested

    async def serve_call(self, call: Call) -> Response:
        order = fill_order(self.dispatch.plan, self.config).for_class(call.features.slo_class)
        call.first_pool = order[0] if order else ""
        try:
            opened = await self.dispatch.open(call.features, call.path, call.body)
        except APIError as e:  # refused (429/503/400) or failed twice: demand the first pool did not absorb
            pool = call.first_pool or next(iter(self.config.pools))
            self.metrics.requests.labels(pool, str(e.status)).inc()
            if e.status in (429, 503):  # refused for want of capacity: a request the SLO lost
                self._count_slo(pool, None, self.clock() - call.started, False)
            self.windows[pool].rejected(self.clock())
            raise
        headers = {POOL_HEADER: opened.pool}
        status = opened.upstream.status
        if status >= 400 or not call.stream:
            return await self._whole(call, opened, headers)
        return StreamingResponse(self._events(call, opened), status_code=status, media_type="text/event-stream",
                                 headers=headers)

    async def _whole(self, call: Call, opened: Opened, headers: dict[str, str]) -> Response:
        """A non-streamed answer (or the replica's own error, passed through: it is the client's). A replica that
        fails while generating it (nothing was sent to the client yet) is replaced: the request is sent again, up
        to ``router.stream_resumes`` times."""
        status, data = 500, b""
        for attempt in range(self.config.router.stream_resumes + 1):
            try:
                async with asyncio.timeout(self.config.router.request_timeout_s):
                    chunks = [c async for c in opened.upstream.body()]
                data = b"".join(chunks)
                status = opened.upstream.status
                call.first_token_at = self.clock()
                if status == 200:
                    call.usage = json.loads(data).get("usage") or {}
                break
            except (Exception, asyncio.CancelledError) as e:
                cancelled = isinstance(e, asyncio.CancelledError)
                if cancelled or attempt == self.config.router.stream_resumes:
                    self._done(call, opened, 499 if cancelled else 500)
                    await opened.upstream.aclose()
                    if cancelled:
                        raise
                    raise APIError(500, f"The {opened.pool} replica failed during generation: {e}",
                                   type="server_error") from e
                await opened.upstream.aclose()
                self.dispatch.failed(opened.pool, opened.replica, e)
                failed = opened.pool
                opened = await self.dispatch.open(call.features, call.path, call.body)
                self.metrics.retries.labels(failed).inc()
                headers[POOL_HEADER] = opened.pool
        await opened.upstream.aclose()
        self._done(call, opened, status)
        media = opened.upstream.headers.get("content-type", "application/json")
        return Response(data, status_code=status, media_type=media, headers=headers)

    async def _events(self, call: Call, opened: Opened) -> AsyncIterator[bytes]:
        """The replica's SSE events as they come, whole events per write; the usage chunk the router asked for
        is read (token counts) and dropped unless the client asked for it too. When the replica fails mid-stream
        (its connection breaks, or it streams an error), the stream goes on from the text already sent on another
        replica, up to ``router.stream_resumes`` times, and the client sees one stream."""
        status, sent, released = 500, [], False  # released: the failed replica let go, no other took over yet
        try:
            async with asyncio.timeout(self.config.router.request_timeout_s):
                reshape: Reshape | None = None
                for attempt in range(self.config.router.stream_resumes + 1):
                    try:
                        async for events in self._relay(call, opened, reshape, sent):
                            yield events
                        status = 200
                        break
                    except Exception as e:  # a cancelled stream (the client left) is not resumed
                        if attempt == self.config.router.stream_resumes:
                            raise
                        why = resumable(call.data)
                        if why is not None:
                            log.warning("stream from %s failed (%r); not resumable (%s)", opened.pool, e, why)
                            raise
                        log.warning("stream from %s failed after %d events: %r; resuming", opened.pool, len(sent), e)
                        await opened.upstream.aclose()
                        self.dispatch.failed(opened.pool, opened.replica, e)
                        released = True
                        resumed = await self._resume(call, sent, opened.pool)
                        if resumed is None:  # the generation had finished: only the end of the stream was lost
                            yield SSE_DONE
                            status = 200
                            return
                        self.metrics.resumes.labels(opened.pool, resumed[0].pool).inc()
                        (opened, reshape), released = resumed, False
                        call.resumed += 1
        except asyncio.CancelledError:
            status = 499  # the client went away: closing the upstream stops the replica's work too
            raise
        except Exception as e:
            log.warning("stream from %s failed after the first token: %r", opened.pool, e)
            yield sse_event(APIError(500, f"The {opened.pool} replica failed during generation: {e}",
                                     type="server_error").body())
            yield SSE_DONE
        finally:
            if not released:
                await opened.upstream.aclose()
            self._done(call, opened, status, release=not released)

    async def _relay(self, call: Call, opened: Opened, reshape: Reshape | None,
                     sent: list[bytes]) -> AsyncIterator[bytes]:
        """One upstream's events, whole events per write (reshaped when it continues another's stream); each is
        kept in ``sent``. An error event from the replica raises ReplicaFailed, after what came before it."""
        buf = b""
        async for chunk in opened.upstream.body():
            if call.first_token_at is None:
                call.first_token_at = self.clock()
            if reshape is not None:
                events = reshape.feed(chunk, lambda usage: setattr(call, "usage", usage))
            else:
                buf += chunk
                cut = buf.rfind(b"\n\n")
                if cut < 0:
                    continue
                events, buf = buf[: cut + 2], buf[cut + 2:]
                if b'"usage":{' in events:
                    events = self._take_usage(call, events)
            err = events.find(b'data: {"error"')
            if err >= 0:
                if err:
                    sent.append(events[:err])
                    yield strip_token_ids(events[:err])
                raise ReplicaFailed(f"the replica streamed an error: {events[err:err + 300]!r}")
            if events:
                sent.append(events)
                yield strip_token_ids(events)
        if buf:
            yield strip_token_ids(buf)
        if reshape is not None:
            if call.wants_usage and call.usage:
                yield reshape.usage_event(call.usage)
            yield SSE_DONE

    async def _resume(self, call: Call, sent: list[bytes], failed_pool: str) -> tuple[Opened, Reshape | None] | None:
        """Open the request that continues a failed stream: the original again when nothing was sent yet, else a
        completion of the prompt and the streamed text; None when the stream had already finished."""
        chat = call.path == "/v1/chat/completions"
        streamed = Streamed.of(sent, chat)
        if streamed.finished:
            return None
        if streamed.template is None or call.prompt_ids is None:
            path, body, reshape, features = call.path, call.body, None, call.features
        else:
            ids = streamed.token_ids  # what the model generated; else the text's tokens (one may differ)
            if ids is None:
                ids = self.tokenizer(streamed.text, add_special_tokens=False)["input_ids"] if streamed.text else []
            prompt = streamed.prompt_ids or call.prompt_ids
            data = continuation(call.data, prompt, ids, call.features.max_tokens)
            path, body = "/v1/completions", json.dumps(data, separators=(",", ":")).encode()
            reshape = Reshape(streamed, chat, len(prompt), len(ids))
            features = replace(call.features, prompt_tokens=len(data["prompt"]), max_tokens=data["max_tokens"])
        # The failed replica's pool first: another of its replicas continues on the same engine (greedy decoding
        # then gives the uninterrupted run's tokens); without room there, the fill order as usual.
        opened = await self.dispatch.open(features, path, body, prefer=failed_pool)
        if opened.upstream.status != 200:
            detail = b"".join([c async for c in opened.upstream.body()])[:300]
            await opened.upstream.aclose()
            self.dispatch.release(opened.pool, opened.replica)
            raise ReplicaFailed(f"the continuation got HTTP {opened.upstream.status}: {detail!r}")
        return opened, reshape

    def _take_usage(self, call: Call, events: bytes) -> bytes:
        at = events.find(b'"usage":{')
        start = events.rfind(b"data: ", 0, at)
        end = events.find(b"\n\n", at) + 2
        try:
            payload = json.loads(events[start + 6: end - 2])
        except ValueError:
            return events
        usage = payload.get("usage") or {}
        if not payload.get("choices"):
            call.usage = usage
            if not call.wants_usage:
                return events[:start] + events[end:]
        elif usage:
            call.usage = usage
        return events

    def _done(self, call: Call, opened: Opened, status: int, release: bool = True) -> None:
        if release:
            self.dispatch.release(opened.pool, opened.replica)
        now = self.clock()
        pool = opened.pool
        completion = int(call.usage.get("completion_tokens", 0))
        prompt = int(call.usage.get("prompt_tokens", call.prompt_tokens))
        self.metrics.requests.labels(pool, str(status)).inc()
        self.metrics.latency.labels(pool).observe(now - call.started)
        self._count_slo(pool, call.first_token_at - call.started if call.first_token_at is not None else None,
                        now - call.started, status == 200)
        self.metrics.tokens.labels(pool, "prompt").inc(prompt)
        self.metrics.tokens.labels(pool, "completion").inc(completion)
        w = self.windows[pool]
        if call.first_token_at is not None:
            ttft = call.first_token_at - call.started
            self.metrics.ttft.labels(pool).observe(ttft)
            w.arrived(call.started)
            w.first_token(call.first_token_at, ttft)
        if status == 200 and call.first_token_at is not None:
            w.finished(now, now - call.started, completion)
            if call.resumed:  # its replica's service is not one request's: no sample of the profile
                return
            tpot = (now - call.first_token_at) / (completion - 1) if completion > 1 and call.stream else None
            w.served(ServiceSample(now, opened.concurrency, prompt, completion, call.first_token_at - opened.sent_at,
                                   tpot))

    def _count_slo(self, pool: str, ttft_s: float | None, e2e_s: float, ok: bool) -> None:
        slo = self.dispatch.plan.slo if self.dispatch.plan is not None else None
        if slo is not None:
            self.metrics.slo.labels(pool, "met" if slo.met(ttft_s, e2e_s, ok) else "missed").inc()

    # --- tokenizer endpoints (answered here: the router has the model's tokenizer) -----------------------------

    def tokenize(self, body: TokenizeRequest) -> dict[str, Any]:
        self._check_model_name(body.model)
        if body.messages is not None:
            messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                        for m in body.messages]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=body.add_generation_prompt,
                                                      tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
        return {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids,
                "token_strs": self.tokenizer.convert_ids_to_tokens(ids)}

    def detokenize(self, body: DetokenizeRequest) -> dict[str, Any]:
        self._check_model_name(body.model)
        bad = [t for t in body.tokens if t >= self.vocab_size]
        if bad:
            raise APIError(400, f"Token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1}).",
                           param="tokens", code="invalid_value")
        return {"prompt": self.tokenizer.decode(body.tokens)}

    def _check_model_name(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"The model '{model}' does not exist. This endpoint serves '{self.model_name}'.",
                           param="model", code="model_not_found")

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "elo",
                "max_model_len": self.max_model_len}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body of {declared} bytes is over the limit of {limit} bytes.",
                       code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise APIError(413, f"Request body is over the limit of {limit} bytes.", code="request_too_large")
    return bytes(data)


def build_app(router: Router) -> FastAPI:
    """The router's HTTP API (FastAPI) over a Router."""
    app = FastAPI(title="Elastic LLM Orchestrator", description="OpenAI-compatible endpoint over cloud and edge pools.")
    limit = router.config.router.max_body_bytes

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return JSONResponse(APIError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)

    async def body_of(request: Request, model: type) -> tuple[Any, dict[str, Any]]:
        data = parse_json(await read_body(request, limit), request.headers.get("content-type"))
        return validate_request(data, model), data

    def key_of(request: Request, admin: bool = False) -> Any:
        try:
            return router.auth.authenticate(request.headers.get("authorization"), admin=admin)
        except APIError as e:
            router.metrics.key_refused.labels("(none)" if e.status == 401 else "(not admin)", str(e.status)).inc()
            raise

    def admit(key: Any, call: Call, body: ChatCompletionRequest | CompletionRequest) -> None:
        try:
            router.auth.admit(key, slo_class=call.features.slo_class, ignore_eos=body.ignore_eos,
                              tokens=call.prompt_tokens + call.features.max_tokens)
        except APIError as e:
            router.metrics.key_refused.labels(key.name if key is not None else "(none)", str(e.status)).inc()
            raise

    @app.get("/healthz")
    @app.get("/-/healthz")
    async def healthz() -> JSONResponse:
        stats = router.stats()
        ok = any(p.ready_replicas > 0 for p in stats.pools.values())
        body = {"status": "ok" if ok else "no ready replica",
                "pools": {n: p.ready_replicas for n, p in stats.pools.items()}}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/elo/pools")
    async def pools(request: Request) -> Response:
        key_of(request, admin=True)
        return Response(router.stats().model_dump_json(), media_type="application/json")

    @app.get("/elo/routing")
    async def routing(request: Request) -> Response:
        key_of(request, admin=True)
        plan = router.dispatch.plan
        return Response(plan.model_dump_json() if plan else "null", media_type="application/json")

    @app.put("/elo/routing")
    async def set_routing(request: Request) -> Response:
        key_of(request, admin=True)
        plan, _ = await body_of(request, RoutingPlan)
        router.set_plan(plan)
        return Response(plan.model_dump_json(), media_type="application/json")

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        if not router.auth.open_metrics:
            key_of(request)
        router.metrics.observe(router.stats())
        engines = await router.engine_metrics()
        return Response(generate_latest(Exposition(router.metrics.registry, engines)),  # type: ignore[arg-type]
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        key_of(request)
        return {"object": "list", "data": [router.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        key_of(request)
        router._check_model_name(model_id)
        return router.model_card()

    async def generate(request: Request, model: type, prepare: Callable[..., Any]) -> Response:
        """The generation endpoints: key, parsed body, routing call, per-key admission, then the pools."""
        key = key_of(request)
        body, data = await body_of(request, model)
        call = prepare(body, data, request.headers.get(router.config.router.slo_class_header))
        admit(key, call, body)
        return await router.serve_call(call)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest, router.prepare_chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest, router.prepare_completion)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        key_of(request)
        body, _ = await body_of(request, TokenizeRequest)
        return router.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        key_of(request)
        body, _ = await body_of(request, DetokenizeRequest)
        return router.detokenize(body)

    return app


class _Gate:
    """ASGI wrapper: counts the HTTP requests in flight and, once draining, answers new API requests 503 with
    Retry-After (the client retries elsewhere or later) while those in flight finish."""

    ADMITTED_WHILE_DRAINING = ("/healthz", "/-/healthz", "/metrics", "/elo/")

    def __init__(self, app: Any, retry_after_s: int):
        self.app = app
        self.retry_after_s = retry_after_s
        self.draining = False
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.draining and not scope["path"].startswith(self.ADMITTED_WHILE_DRAINING):
            err = APIError(503, "The endpoint is shutting down; retry shortly.", type="server_error",
                           code="draining", headers={"Retry-After": str(self.retry_after_s)})
            await JSONResponse(err.body(), status_code=503, headers=err.headers)(scope, receive, send)
            return
        self.in_flight += 1
        self.idle.clear()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()


def _serve(app: Any, host: str, port: int) -> tuple[Any, asyncio.Task[None]]:
    """uvicorn on ``host:port`` in this replica's event loop; SO_REUSEPORT, so a restarted router binds at once."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(app, interface="asgi3", log_level="warning", access_log=False, lifespan="off",
                                           timeout_keep_alive=75))
    return server, asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))

