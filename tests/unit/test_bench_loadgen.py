"""Unit tests for orchestrator.bench.loadgen (and `elo bench serve`) against a real in-process OpenAI-style SSE server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from orchestrator.bench.cli import bench_app
from orchestrator.bench.loadgen import LoadgenConfig, fetch_first_model, run_load
from orchestrator.bench.stats import summarize
from orchestrator.bench.workload import PlannedRequest, build_plan

FIRST_TOKEN_DELAY_S = 0.05

# --------------------------------------------------------------------------- fake OpenAI server

app = FastAPI()
seen: list[dict[str, Any]] = []
counters: defaultdict[str, int] = defaultdict(int)


def _sse(obj: object) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(body: dict[str, Any], kind: str, with_usage: bool) -> AsyncIterator[str]:
    n = int(body["max_tokens"])
    base = {"id": "cmpl-1", "created": 0, "model": body["model"]}
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    if kind == "chat":  # vLLM sends the role first, without content: it must not count as the first token
        yield _sse({**base, "object": obj, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    await asyncio.sleep(FIRST_TOKEN_DELAY_S)
    for i in range(n):
        piece = f"t{i} "
        choice = {"index": 0, "delta": {"content": piece}} if kind == "chat" else {"index": 0, "text": piece}
        yield _sse({**base, "object": obj, "choices": [{**choice, "finish_reason": None}]})
        await asyncio.sleep(0.002)
    last = {"index": 0, "delta": {}} if kind == "chat" else {"index": 0, "text": ""}
    yield _sse({**base, "object": obj, "choices": [{**last, "finish_reason": "length"}]})
    if with_usage and (body.get("stream_options") or {}).get("include_usage"):
        prompt = body["messages"][0]["content"] if kind == "chat" else body["prompt"]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": n, "total_tokens": n + len(prompt.split())}
        yield _sse({**base, "object": obj, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "server_error", "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _handle(scenario: str, kind: str, request: Request) -> Any:
    body = await request.json()
    seen.append({"scenario": scenario, "kind": kind, "body": body, "headers": dict(request.headers)})
    counters[scenario] += 1
    n = counters[scenario]
    if scenario.startswith("busy") or (scenario.startswith("mixed") and n % 5 == 0):
        return _error(429, "too many requests", {"Retry-After": "2", "x-elo-pool": "cloud"})
    if scenario.startswith("broken") or (scenario.startswith("mixed") and n % 7 == 0):
        return _error(500, "replica crashed")
    if scenario.startswith("slow"):
        await asyncio.sleep(1.0)
    pool = "edge" if request.headers.get("x-slo-class") == "batch" else "cloud"
    headers = {} if scenario.startswith("raw") else {"x-elo-pool": pool}
    gen = _stream(body, kind, with_usage=not scenario.startswith("nousage"))
    return StreamingResponse(gen, media_type="text/event-stream", headers=headers)


@app.post("/{scenario}/v1/chat/completions")
async def chat(scenario: str, request: Request) -> Any:
    return await _handle(scenario, "chat", request)


@app.post("/{scenario}/v1/completions")
async def completions(scenario: str, request: Request) -> Any:
    return await _handle(scenario, "completions", request)


@app.get("/{scenario}/v1/models")
async def models(scenario: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "tiny-model", "object": "model", "created": 0, "owned_by": "me"}]}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "fake OpenAI server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=5)
    sock.close()


def _config(server: str, scenario: str, **kw: Any) -> LoadgenConfig:
    return LoadgenConfig(base_url=f"{server}/{scenario}/v1", model="tiny-model", **kw)


def _plan(n: int, output_tokens: int = 5, concurrency: int = 2) -> tuple[PlannedRequest, ...]:
    return build_plan(num_requests=n, prompt_tokens=6, output_tokens=output_tokens, concurrency=concurrency).requests


# --------------------------------------------------------------------------- tests


def test_loadgen_records_tokens_pool_and_ordered_timings_for_every_request(server: str) -> None:
    result = asyncio.run(run_load(_plan(6), _config(server, "ok", concurrency=3)))
    assert [r.index for r in result.records] == list(range(6))
    for r in result.records:
        assert (r.status, r.error, r.output_tokens, r.prompt_tokens, r.pool) == (200, None, 5, 6, "cloud")
        assert r.ttft_s is not None and r.ttft_s >= FIRST_TOKEN_DELAY_S * 0.9  # the role chunk is not the first token
        assert 0.0 <= r.start_s < r.start_s + r.ttft_s < r.end_s <= result.wall_s + 1e-9
    assert not result.deadline_hit
    summary = summarize(result.records, wall_s=result.wall_s)
    assert summary.num_ok == 6 and summary.total_output_tokens == 30 and summary.tpot is not None


def test_loadgen_counts_429_with_retry_after_and_500_by_status(server: str) -> None:
    result = asyncio.run(run_load(_plan(10), _config(server, "mixed-a", concurrency=2)))
    summary = summarize(result.records, wall_s=result.wall_s)
    assert summary.errors_by_status == {"429": 2, "500": 1}
    assert summary.num_ok == 7
    rate_limited = [r for r in result.records if r.status == 429]
    assert all(r.retry_after == "2" and r.pool == "cloud" and r.ttft_s is None for r in rate_limited)
    assert all("replica crashed" in (r.error or "") for r in result.records if r.status == 500)


def test_loadgen_sends_stream_usage_ignore_eos_temperature_and_extra_headers(server: str) -> None:
    seen.clear()
    cfg = _config(server, "hdr", headers={"x-slo-class": "batch"}, temperature=0.0)
    result = asyncio.run(run_load(_plan(1, output_tokens=3), cfg))
    assert result.records[0].pool == "edge"
    (call,) = seen
    body = call["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["ignore_eos"], body["temperature"], body["max_tokens"]) == (True, 0.0, 3)
    assert body["messages"][0]["role"] == "user" and call["headers"]["x-slo-class"] == "batch"
    seen.clear()
    asyncio.run(run_load(_plan(1), _config(server, "hdr", ignore_eos=False)))
    assert "ignore_eos" not in seen[0]["body"]


def test_loadgen_streams_the_completions_endpoint_and_has_no_pool_on_raw_vllm(server: str) -> None:
    result = asyncio.run(run_load(_plan(2, output_tokens=4), _config(server, "raw", endpoint="completions")))
    assert [(r.status, r.output_tokens, r.pool) for r in result.records] == [(200, 4, None)] * 2


def test_loadgen_counts_content_chunks_when_the_server_sends_no_usage(server: str) -> None:
    result = asyncio.run(run_load(_plan(1, output_tokens=7), _config(server, "nousage")))
    assert (result.records[0].output_tokens, result.records[0].prompt_tokens) == (7, None)


def test_loadgen_records_timeouts_and_connection_errors_instead_of_raising(server: str) -> None:
    result = asyncio.run(run_load(_plan(1), _config(server, "slow", timeout_s=0.2)))
    (rec,) = result.records
    # Cut before the server's first byte (it waits 1 s): no token arrived. (No bound on how long it took.)
    assert rec.status == "timeout" and not rec.output_tokens
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = asyncio.run(run_load(_plan(1), LoadgenConfig(base_url=f"http://127.0.0.1:{closed_port}/v1", model="m")))
    assert refused.records[0].status == "connection"


def test_loadgen_sends_scheduled_requests_at_their_arrival_times(server: str) -> None:
    plan = [PlannedRequest(i, at, "hello there", 2, 2) for i, at in enumerate([0.0, 0.15, 0.3])]
    result = asyncio.run(run_load(plan, _config(server, "ok")))
    for planned, rec in zip(plan, result.records, strict=True):
        assert planned.send_at_s is not None
        assert planned.send_at_s - 0.01 <= rec.start_s <= planned.send_at_s + 0.1


def test_loadgen_deadline_cuts_in_flight_requests_and_sends_no_more(server: str) -> None:
    result = asyncio.run(run_load(_plan(5, concurrency=1), _config(server, "slow", deadline_s=0.3, concurrency=1)))
    # The one request in flight is cut before the server's first byte (it waits 1 s), and no other is sent.
    assert [r.status for r in result.records] == ["deadline"] and not result.records[0].output_tokens
    assert result.deadline_hit and result.num_planned == 5


def test_fetch_first_model_asks_the_models_route(server: str) -> None:
    assert asyncio.run(fetch_first_model(f"{server}/ok/v1")) == "tiny-model"


def test_cli_serve_writes_results_that_compare_side_by_side(server: str, tmp_path: Path) -> None:
    runner = CliRunner()
    outs = []
    for label, scenario in (("vllm", "raw"), ("ours", "ok")):
        out = tmp_path / f"{label}.json"
        args = ["serve", "--url", f"{server}/{scenario}/v1", "-n", "4", "-c", "2", "--prompt-tokens", "5",
                "--output-tokens", "3", "--out", str(out), "--label", label, "--records", "-H", "x-slo-class: batch"]
        result = runner.invoke(bench_app, args, env={"COLUMNS": "150"})
        assert result.exit_code == 0, result.output
        assert "TTFT" in result.output
        outs.append(out)
    data = json.loads(outs[1].read_text())
    assert data["params"]["model"] == "tiny-model" and data["params"]["headers"] == {"x-slo-class": "batch"}
    assert data["summary"]["num_ok"] == 4 and data["summary"]["pool_counts"] == {"edge": 4}
    assert len(data["records"]) == 4
    compared = runner.invoke(bench_app, ["compare", str(outs[0]), str(outs[1])], env={"COLUMNS": "150"})
    assert compared.exit_code == 0, compared.output
    assert "vllm (A) vs ours (B)" in compared.output and "output tokens/s" in compared.output
