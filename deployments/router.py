"""The OpenAI-compatible ingress: validates requests, picks a pool per request, streams the answer."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import AppConfig
from deployments.dispatch import DeltaStream, Dispatcher
from deployments.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationDelta,
    GenerationRequest,
    ResponseShape,
    RoutingPreference,
    parse_request,
    sse_event,
    usage,
)
from deployments.routing import RequestFeatures, preference_order, preferred_pool
from deployments.window import PoolWindow

log = logging.getLogger("ray.serve")

POOL_HEADER = "x-elo-pool"
# Serve replica states of a replica that is on its way to serving (RUNNING is ready).
_STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")

app = FastAPI(title="Elastic LLM Orchestrator", description="OpenAI-compatible endpoint over cloud and edge pools.")


@app.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
    return JSONResponse(APIError(e.status_code, str(e.detail), type=kind).body(), status_code=e.status_code)


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
        self.retries = Counter("elo_retries", "Requests retried after a replica failed before the first token.", ["pool"], registry=r)


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress(app)
class Router:
    def __init__(
        self,
        config: dict[str, Any],
        model_path: str,
        max_model_len: int,
        pools: dict[str, DeploymentHandle],
        pool_deployments: dict[str, str],
    ):
        from transformers import AutoTokenizer

        self.config = AppConfig.model_validate(config)
        self.model_name = self.config.model.served_name
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.vocab_size = len(self.tokenizer)
        handles = {name: h.options(stream=True) for name, h in pools.items()}
        self.pool_deployments = pool_deployments
        self.metrics = _Metrics()
        self.dispatch = Dispatcher(
            self.config,
            send=lambda pool, gen: handles[pool].generate.remote(gen),
            on_change=lambda pool, n: self.metrics.in_flight.labels(pool).set(n),
            on_retry=lambda pool: self.metrics.retries.labels(pool).inc(),
        )
        self.clock: Callable[[], float] = time.monotonic
        self.windows = {name: PoolWindow(self.config.router.metrics_window_s) for name in self.config.pools}
        self.preferences: dict[str, str] = {}  # set by the controller through PUT /elo/routing
        self._poller = asyncio.get_event_loop().create_task(self._poll_readiness())

    # --- readiness ------------------------------------------------------------------------

    async def _poll_readiness(self) -> None:
        app_name = serve.get_replica_context().app_name
        while True:
            try:
                status = await asyncio.to_thread(serve.status)
                deps = status.applications[app_name].deployments
                ready, starting = {}, {}
                for pool, dep in self.pool_deployments.items():
                    states = deps[dep].replica_states if dep in deps else {}
                    ready[pool] = int(states.get("RUNNING", 0))
                    starting[pool] = sum(int(states.get(s, 0)) for s in _STARTING_STATES)
                    self.metrics.ready.labels(pool).set(ready[pool])
                self.dispatch.set_ready(ready, starting)
            except Exception:  # the controller may be restarting: keep the last known readiness
                log.warning("could not read Serve status; keeping last readiness", exc_info=True)
            await asyncio.sleep(self.config.router.readiness_poll_s)

    # --- endpoints ------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        ok = any(n > 0 for n in self.dispatch.ready.values())
        body = {"status": "ok" if ok else "no ready replica", "pools": self._pool_state()}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/elo/pools")
    async def pools(self) -> dict[str, Any]:
        return self._pool_state()

    def _pool_state(self) -> dict[str, Any]:
        now = self.clock()
        return {
            n: {"ready_replicas": v.ready_replicas, "starting_replicas": v.starting_replicas,
                "in_flight": v.in_flight, "slots": v.slots, "queue_limit": v.queue_limit,
                "running": min(v.in_flight, v.slots), "waiting": v.waiting,
                # Held for a cold start or queued at a replica: both wait for capacity of this pool.
                "queued": max(0, v.in_flight - v.slots) + v.waiting, **self.windows[n].summary(now)}
            for n, v in self.dispatch.views().items()
        }

    @app.get("/elo/routing")
    async def routing(self) -> dict[str, Any]:
        return {"preferred_pool_by_class": self.preferences}

    @app.put("/elo/routing")
    async def set_routing(self, request: Request) -> dict[str, Any]:
        """The controller's routing preference: SLO class (or "default") -> preferred pool."""
        body: RoutingPreference = parse_request(
            await request.body(), request.headers.get("content-type"), RoutingPreference
        )
        prefs = body.preferred_pool_by_class
        unknown = sorted(set(prefs.values()) - set(self.config.pools))
        if unknown:
            raise APIError(400, f"Unknown pools {unknown}; pools are {sorted(self.config.pools)}.",
                           param="preferred_pool_by_class", code="invalid_value")
        self.preferences = dict(prefs)
        return {"preferred_pool_by_class": self.preferences}

    @app.get("/metrics")
    async def metrics(self) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str) -> dict[str, Any]:
        self._check_model(model_id)
        return self._model_card()

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "elo",
                "max_model_len": self.max_model_len}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        body: ChatCompletionRequest = parse_request(
            await request.body(), request.headers.get("content-type"), ChatCompletionRequest
        )
        self._check_model(body.model)
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return await self._serve(request, body, ids, chat=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        body: CompletionRequest = parse_request(
            await request.body(), request.headers.get("content-type"), CompletionRequest
        )
        self._check_model(body.model)
        if isinstance(body.prompt, str):
            if not body.prompt:
                raise APIError(400, "'prompt' must not be empty.", param="prompt", code="invalid_value")
            ids = self.tokenizer(body.prompt)["input_ids"]
        else:
            bad = [t for t in body.prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise APIError(400, f"Token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1}).",
                               param="prompt", code="invalid_value")
            ids = list(body.prompt)
        return await self._serve(request, body, ids, chat=False)

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(404, f"The model '{model}' does not exist. This endpoint serves '{self.model_name}'.",
                           param="model", code="model_not_found")

    # --- the request path -----------------------------------------------------------------

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

    async def _serve(
        self, request: Request, body: ChatCompletionRequest | CompletionRequest, ids: list[int], chat: bool
    ) -> Response:
        max_tokens = self._limit_tokens(len(ids), body.requested_max_tokens())
        slo_class = request.headers.get(self.config.router.slo_class_header)
        features = RequestFeatures(prompt_tokens=len(ids), max_tokens=max_tokens, slo_class=slo_class)
        order = preference_order(list(self.config.pools), preferred_pool(self.config, slo_class, self.preferences))
        gen = GenerationRequest(
            request_id=f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            prompt_token_ids=ids,
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop_list(),
            ignore_eos=body.ignore_eos,
        )
        started = self.clock()
        try:
            pool, first, rest = await self.dispatch.open(gen, features, order, self.config.router.request_timeout_s)
        except APIError as e:  # refused (429/503) or failed twice: demand the preferred pool did not absorb
            self.metrics.requests.labels(order[0], str(e.status)).inc()
            self.windows[order[0]].rejected(started)
            raise
        ttft = self.clock() - started
        self.metrics.ttft.labels(pool).observe(ttft)
        self.windows[pool].arrived(started)
        self.windows[pool].first_token(started + ttft, ttft)
        shape = ResponseShape(gen.request_id, self.model_name, chat)
        headers = {POOL_HEADER: pool}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = self._events(pool, started, len(ids), first, rest, shape, include_usage)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        text, last = [first.text], first
        try:
            async with asyncio.timeout(self.config.router.request_timeout_s):
                async for d in rest:
                    text.append(d.text)
                    last = d
        except Exception as e:  # includes the request timeout
            rest.cancel()
            self._done(pool, started, 500, len(ids), last.completion_tokens)
            raise APIError(500, f"The {pool} replica failed during generation: {e}", type="server_error") from e
        self._done(pool, started, 200, len(ids), last.completion_tokens)
        counts = usage(len(ids), last.completion_tokens)
        return JSONResponse(shape.full("".join(text), last.finish_reason or "length", counts), headers=headers)

    def _done(self, pool: str, started: float, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.dispatch.release(pool)
        now = self.clock()
        self.metrics.requests.labels(pool, str(status)).inc()
        self.metrics.latency.labels(pool).observe(now - started)
        if status == 200:
            self.windows[pool].finished(now, now - started, completion_tokens)
        self.metrics.tokens.labels(pool, "prompt").inc(prompt_tokens)
        self.metrics.tokens.labels(pool, "completion").inc(completion_tokens)

    async def _events(
        self,
        pool: str,
        started: float,
        prompt_tokens: int,
        first: GenerationDelta,
        rest: DeltaStream,
        shape: ResponseShape,
        include_usage: bool,
    ) -> AsyncIterator[bytes]:
        last, status = first, 500
        try:
            for chunk in shape.opening() + shape.delta(first, include_usage):
                yield sse_event(chunk)
            async with asyncio.timeout(self.config.router.request_timeout_s):
                async for d in rest:
                    last = d
                    for chunk in shape.delta(d, include_usage):
                        yield sse_event(chunk)
            if include_usage:
                yield sse_event(shape.usage_chunk(usage(prompt_tokens, last.completion_tokens)))
            yield SSE_DONE
            status = 200
        except asyncio.CancelledError:
            status = 499  # the client went away: stop the replica's work too
            rest.cancel()
            raise
        except Exception as e:
            log.warning("stream from %s failed after the first token: %r", pool, e)
            yield sse_event(APIError(500, f"The {pool} replica failed during generation: {e}", type="server_error").body())
            yield SSE_DONE
        finally:
            self._done(pool, started, status, prompt_tokens, last.completion_tokens)
