"""Send a request plan to an OpenAI-compatible endpoint with the official async client (streaming) and record per-request timings."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Literal

import openai
from openai import AsyncOpenAI

from orchestrator.bench.stats import RequestRecord
from orchestrator.bench.workload import PlannedRequest

EndpointKind = Literal["chat", "completions"]
POOL_HEADER = "x-elo-pool"
_MAX_ERROR_CHARS = 300


class EndpointError(RuntimeError):
    """The endpoint could not be used at all (e.g. model discovery failed)."""


@dataclass(frozen=True)
class LoadgenConfig:
    """How to talk to the endpoint and the bounds of one run."""

    base_url: str
    model: str
    api_key: str = "EMPTY"
    endpoint: EndpointKind = "chat"
    temperature: float = 0.0
    ignore_eos: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0  # per request, first byte to last byte
    deadline_s: float | None = None  # whole run; nothing is sent after it, in-flight requests are cut
    concurrency: int = 1  # closed-loop workers for requests whose send_at_s is None


@dataclass(frozen=True)
class RunResult:
    """Records (sorted by index) plus the run's wall time and bookkeeping."""

    records: tuple[RequestRecord, ...]
    wall_s: float
    num_planned: int
    started_at: str  # ISO-8601, UTC
    deadline_hit: bool


def make_client(base_url: str, api_key: str = "EMPTY", timeout_s: float = 120.0) -> AsyncOpenAI:
    """The official client with retries off (a retry would hide the latency and the error we measure)."""
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout_s)


async def fetch_first_model(
    base_url: str, api_key: str = "EMPTY", timeout_s: float = 10.0, headers: Mapping[str, str] | None = None
) -> str:
    """GET {base_url}/models and return the first model id; raises EndpointError."""
    client = make_client(base_url, api_key, timeout_s)
    try:
        page = await client.models.list(extra_headers=dict(headers or {}))
        if not page.data:
            raise EndpointError(f"{base_url}/models lists no models; pass --model")
        return page.data[0].id
    except openai.APIError as e:
        raise EndpointError(f"cannot list models at {base_url}/models: {e}") from e
    finally:
        await client.close()


async def run_load(
    plan: Sequence[PlannedRequest], config: LoadgenConfig, *, client: AsyncOpenAI | None = None
) -> RunResult:
    """Run the plan: closed-loop workers for unscheduled requests, a timer for scheduled ones."""
    own_client = client is None
    api = client or make_client(config.base_url, config.api_key, config.timeout_s)
    started_at = dt.datetime.now(dt.UTC).isoformat()
    t0 = perf_counter()
    deadline_at = None if config.deadline_s is None else t0 + config.deadline_s
    records: list[RequestRecord] = []

    def past_deadline(at: float) -> bool:
        return deadline_at is not None and at >= deadline_at

    async def send(req: PlannedRequest) -> None:
        records.append(await _send_one(api, req, config, t0, deadline_at))

    async def worker(queue: Iterator[PlannedRequest]) -> None:
        for req in queue:  # shared iterator: safe, next() never awaits
            if past_deadline(perf_counter()):
                return
            await send(req)

    async def scheduler(timed: list[PlannedRequest], tg: asyncio.TaskGroup) -> None:
        for req in timed:
            at = t0 + (req.send_at_s or 0.0)
            if past_deadline(at):
                return
            delay = at - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(send(req))

    closed = [r for r in plan if r.send_at_s is None]
    timed = sorted((r for r in plan if r.send_at_s is not None), key=lambda r: r.send_at_s or 0.0)
    try:
        async with asyncio.TaskGroup() as tg:
            shared = iter(closed)
            for _ in range(min(max(config.concurrency, 1), len(closed))):
                tg.create_task(worker(shared))
            if timed:
                tg.create_task(scheduler(timed, tg))
    finally:
        if own_client:
            await api.close()
    wall = max((r.end_s for r in records), default=perf_counter() - t0)
    records.sort(key=lambda r: r.index)
    hit = deadline_at is not None and (len(records) < len(plan) or any(r.status == "deadline" for r in records))
    return RunResult(tuple(records), wall, len(plan), started_at, hit)


def run_load_sync(plan: Sequence[PlannedRequest], config: LoadgenConfig) -> RunResult:
    """``asyncio.run(run_load(...))`` for synchronous callers such as the CLI."""
    return asyncio.run(run_load(plan, config))


@asynccontextmanager
async def _open_stream(api: AsyncOpenAI, req: PlannedRequest, cfg: LoadgenConfig) -> AsyncIterator[Any]:
    common: dict[str, Any] = {
        "model": cfg.model,
        "max_tokens": req.max_tokens,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_headers": dict(cfg.headers) or None,
        "extra_body": {"ignore_eos": True} if cfg.ignore_eos else None,
    }
    if cfg.endpoint == "chat":
        ctx = api.chat.completions.with_streaming_response.create(
            messages=[{"role": "user", "content": req.prompt}], **common
        )
    else:
        ctx = api.completions.with_streaming_response.create(prompt=req.prompt, **common)
    async with ctx as resp:
        yield resp


def _chunk_text(chunk: Any, endpoint: EndpointKind) -> str:
    parts: list[str] = []
    for choice in getattr(chunk, "choices", None) or ():
        text = choice.delta.content if endpoint == "chat" else choice.text
        if text:
            parts.append(text)
    return "".join(parts)


def _transport_kind(exc: BaseException) -> str | None:
    """Classify httpx/httpx2 transport errors by class name, independent of which one the client uses."""
    names = {c.__name__ for c in type(exc).__mro__}
    if "TimeoutException" in names:
        return "timeout"
    if "TransportError" in names:
        return "connection"
    return None


def _short(msg: object) -> str:
    text = str(msg)
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


async def _send_one(
    api: AsyncOpenAI, req: PlannedRequest, cfg: LoadgenConfig, t0: float, deadline_at: float | None
) -> RequestRecord:
    start = perf_counter()
    budget, cut_by_deadline = cfg.timeout_s, False
    if deadline_at is not None and deadline_at - start < budget:
        budget, cut_by_deadline = max(deadline_at - start, 0.0), True
    status: int | str = 200
    error: str | None = None
    ttft: float | None = None
    chunks = 0
    usage_out: int | None = None
    usage_prompt: int | None = None
    pool: str | None = None
    retry_after: str | None = None
    try:
        async with asyncio.timeout(budget):
            async with _open_stream(api, req, cfg) as resp:
                pool = resp.headers.get(POOL_HEADER)
                stream = await resp.parse()
                async for chunk in stream:
                    if _chunk_text(chunk, cfg.endpoint):
                        chunks += 1
                        if ttft is None:
                            ttft = perf_counter() - start
                    usage = getattr(chunk, "usage", None)
                    if usage is not None:
                        usage_out, usage_prompt = usage.completion_tokens, usage.prompt_tokens
    except TimeoutError:
        status = "deadline" if cut_by_deadline else "timeout"
        error = f"no complete response within {budget:.3g} s"
    except openai.APITimeoutError as e:
        status, error = "timeout", _short(e)
    except openai.APIConnectionError as e:
        status, error = "connection", _short(e.__cause__ or e)
    except openai.APIStatusError as e:
        status, error = e.status_code, _short(e.message)
        pool = e.response.headers.get(POOL_HEADER)
        if e.status_code == 429:
            retry_after = e.response.headers.get("retry-after")
    except openai.APIError as e:  # error event inside an otherwise 200 stream
        status, error = "stream_error", _short(e)
    except Exception as e:  # noqa: BLE001 - a measurement tool records every failure instead of crashing
        status, error = _transport_kind(e) or "error", _short(f"{type(e).__name__}: {e}")
    end = perf_counter()
    return RequestRecord(
        index=req.index,
        status=status,
        error=error,
        start_s=start - t0,
        ttft_s=ttft,
        end_s=end - t0,
        output_tokens=usage_out if usage_out is not None else chunks,
        prompt_tokens=usage_prompt,
        planned_prompt_tokens=req.prompt_tokens,
        max_tokens=req.max_tokens,
        pool=pool,
        retry_after=retry_after,
    )
