"""The OpenAI endpoint end to end: official openai client, real Serve, vLLM CPU and transformers replicas."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import ServedApp

pytestmark = pytest.mark.integration

CLOUD: dict[str, str] = {}  # no SLO class: the default preference, the cloud pool
EDGE = {"x-slo-class": "batch"}  # the test config prefers the edge pool for batch requests
CORPUS_PROMPT = "It was the best of times, it was the worst of times,"


@pytest.fixture(scope="module")
def client(served_app: ServedApp) -> openai.OpenAI:
    return openai.OpenAI(base_url=served_app.v1, api_key="unused", max_retries=0, timeout=120)


def chat(client: openai.OpenAI, model: str, headers: dict[str, str], **kw):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": kw.pop("content", "What are you?")}],
        extra_headers=headers, **kw,
    )
    return raw.headers.get("x-elo-pool"), raw.parse()


def complete(client: openai.OpenAI, model: str, headers: dict[str, str], **kw):
    raw = client.completions.with_raw_response.create(model=model, extra_headers=headers, **kw)
    return raw.headers.get("x-elo-pool"), raw.parse()


def test_models_lists_the_served_model(client, served_app):
    models = client.models.list().data
    assert [m.id for m in models] == [served_app.model]
    assert client.models.retrieve(served_app.model).id == served_app.model


def test_chat_completion_from_the_cloud_pool_counts_usage_with_the_tokenizer(client, served_app, tokenizer):
    pool, r = chat(client, served_app.model, CLOUD, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert pool == "cloud"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What are you?"}], add_generation_prompt=True,
                                         tokenize=False)
    assert r.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert len(tokenizer(r.choices[0].message.content, add_special_tokens=False)["input_ids"]) <= 12


def test_chat_completion_from_the_edge_pool(client, served_app):
    pool, r = chat(client, served_app.model, EDGE, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
    assert pool == "edge"
    assert r.usage.completion_tokens == 12 and r.choices[0].message.content


def test_trained_demo_model_answers_recognisable_text(client, served_app):
    _, r = chat(client, served_app.model, CLOUD, max_tokens=24, temperature=0)
    assert "demo model" in r.choices[0].message.content


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_both_pools_give_the_same_greedy_output_for_the_same_prompt(client, served_app, endpoint):
    outputs = {}
    for headers in (CLOUD, EDGE):
        if endpoint == "completions":
            pool, r = complete(client, served_app.model, headers, prompt=CORPUS_PROMPT, max_tokens=32, temperature=0)
            outputs[pool] = (r.choices[0].text, r.usage.completion_tokens, r.choices[0].finish_reason)
        else:
            pool, r = chat(client, served_app.model, headers, max_tokens=32, temperature=0)
            outputs[pool] = (r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason)
    assert set(outputs) == {"cloud", "edge"}
    assert outputs["cloud"] == outputs["edge"]
    assert outputs["cloud"][0]


@pytest.mark.parametrize("headers,pool", [(CLOUD, "cloud"), (EDGE, "edge")])
def test_streaming_chat_matches_the_whole_answer_and_reports_usage(client, served_app, headers, pool):
    _, whole = chat(client, served_app.model, headers, max_tokens=20, temperature=0)
    raw = client.chat.completions.with_raw_response.create(
        model=served_app.model, messages=[{"role": "user", "content": "What are you?"}], max_tokens=20,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_headers=headers,
    )
    assert raw.headers["x-elo-pool"] == pool and raw.headers["content-type"].startswith("text/event-stream")
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.model_dump() == whole.usage.model_dump()


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_streaming_completion_yields_text_chunks(client, served_app, headers):
    stream = client.completions.create(model=served_app.model, prompt=CORPUS_PROMPT, max_tokens=16, temperature=0,
                                       stream=True, extra_headers=headers)
    pieces = [c.choices[0].text for c in stream if c.choices]
    assert len(pieces) > 1 and "".join(pieces)


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_stop_string_ends_the_text_before_it(client, served_app, headers):
    _, full = complete(client, served_app.model, headers, prompt=CORPUS_PROMPT, max_tokens=32, temperature=0)
    text = full.choices[0].text
    stop = text.split()[2]  # a word the greedy continuation contains
    _, cut = complete(client, served_app.model, headers, prompt=CORPUS_PROMPT, max_tokens=32, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_seeded_sampling_repeats_and_top_p_is_accepted(client, served_app, headers):
    kw = dict(prompt="The", max_tokens=16, temperature=1.5, top_p=0.9, seed=7, extra_body={"ignore_eos": True})
    _, a = complete(client, served_app.model, headers, **kw)
    _, b = complete(client, served_app.model, headers, **kw)
    assert a.choices[0].text == b.choices[0].text


def test_completion_accepts_token_ids(client, served_app, tokenizer):
    ids = tokenizer(CORPUS_PROMPT)["input_ids"]
    _, by_ids = complete(client, served_app.model, CLOUD, prompt=ids, max_tokens=8, temperature=0)
    _, by_text = complete(client, served_app.model, CLOUD, prompt=CORPUS_PROMPT, max_tokens=8, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text and by_ids.usage.prompt_tokens == len(ids)


# --- bad input: a clear OpenAI-shaped error, never a 500 or a hang ---------------------------------


def _post(served_app: ServedApp, path: str, body: bytes | dict, content_type: str = "application/json") -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{served_app.v1}{path}", content=data, headers={"content-type": content_type}, timeout=30)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def _body(served_app: ServedApp, **kw) -> dict:
    return {"model": served_app.model, "messages": [{"role": "user", "content": "hi"}], **kw}


def test_malformed_json_gets_400(served_app):
    assert _error(_post(served_app, "/chat/completions", b'{"model": '), 400)["code"] == "invalid_json"


def test_wrong_content_type_gets_415(served_app):
    _error(_post(served_app, "/chat/completions", _body(served_app), "text/plain"), 415)


def test_unknown_model_gets_404_from_the_openai_client(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_not_found" and "gpt-17" in e.value.body["message"]


@pytest.mark.parametrize("change,param", [
    ({"messages": []}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": 9}, "temperature"),
    ({"n": 17}, "n"),
    ({"max_tokens": "10"}, "max_tokens"),  # no lax coercion
    ({"seed": 2**63}, "seed"),  # outside int64
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"frobnicate": True}, "frobnicate"),  # unknown field
    ({"logit_bias": {"5": 300}}, "logit_bias"),
])
def test_invalid_fields_get_400_naming_the_field(served_app, change, param):
    assert _error(_post(served_app, "/chat/completions", _body(served_app, **change)), 400)["param"] == param


def test_missing_model_gets_400(served_app):
    body = _body(served_app)
    del body["model"]
    assert _error(_post(served_app, "/chat/completions", body), 400)["param"] == "model"


def test_huge_max_tokens_gets_400_naming_the_context_limit(client, served_app):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served_app.model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10**9)
    assert e.value.body["code"] == "context_length_exceeded" and "1024" in e.value.body["message"]


def test_prompt_longer_than_the_context_gets_400_naming_the_limit(client, served_app):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=served_app.model, prompt="times " * 3000, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded" and "1024" in e.value.body["message"]


def test_out_of_vocabulary_token_ids_get_400(served_app):
    err = _error(_post(served_app, "/completions", {"model": served_app.model, "prompt": [1, 10**7]}), 400)
    assert err["param"] == "prompt"


def test_unknown_path_gets_an_openai_shaped_404(served_app):
    _error(httpx.get(f"{served_app.v1}/engines", timeout=10), 404)


def test_deeply_nested_json_gets_400_not_500(served_app):
    deep = b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    assert _error(_post(served_app, "/chat/completions", deep), 400)["code"] == "invalid_json"


def test_a_body_over_the_limit_gets_413(served_app):
    big = _body(served_app, messages=[{"role": "user", "content": "x" * (served_app.config.router.max_body_bytes + 1)}])
    _error(_post(served_app, "/chat/completions", big), 413)


# --- vLLM's OpenAI API through the router: honoured on the pools that have it, never dropped -------------------

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
    "additionalProperties": False}}}]


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_json_schema_output_validates_on_both_pools(client, served_app, headers):
    import jsonschema

    pool, r = chat(client, served_app.model, headers, max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert pool == ("edge" if headers else "cloud")
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_forced_tool_call_is_schema_valid_on_both_pools(client, served_app, headers):
    import jsonschema

    _, r = chat(client, served_app.model, headers, max_tokens=200, tools=TOOLS, tool_choice="required",
                parallel_tool_calls=False)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), TOOLS[0]["function"]["parameters"])


def test_auto_tool_choice_goes_only_to_the_pool_with_a_tool_parser(client, served_app):
    # The edge pool has no tool-call parser: a batch request (which prefers edge) still goes to cloud.
    pool, r = chat(client, served_app.model, EDGE, max_tokens=16, tools=TOOLS, tool_choice="auto")
    assert pool == "cloud" and r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("headers", [CLOUD, EDGE])
def test_n_choices_with_logprobs_on_both_pools(client, served_app, headers):
    _, r = chat(client, served_app.model, headers, max_tokens=6, n=2, logprobs=True, top_logprobs=2, temperature=1,
                seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert all(len(t.top_logprobs) == 2 for c in r.choices for t in c.logprobs.content)


def test_completions_with_a_list_of_prompts_and_echo(client, served_app):
    _, r = complete(client, served_app.model, CLOUD, prompt=["It was", "The"], max_tokens=4, echo=True, temperature=0)
    texts = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    assert texts[0].startswith("It was") and texts[1].startswith("The")


def test_tokenize_and_detokenize_through_the_router(served_app, tokenizer):
    t = httpx.post(f"{served_app.base_url}/tokenize", json={"model": served_app.model, "prompt": CORPUS_PROMPT},
                   timeout=30).json()
    assert t["tokens"] == tokenizer(CORPUS_PROMPT, add_special_tokens=False)["input_ids"] or t["count"] > 0
    d = httpx.post(f"{served_app.base_url}/detokenize", json={"model": served_app.model, "tokens": t["tokens"]},
                   timeout=30).json()
    assert d["prompt"] == CORPUS_PROMPT


# --- load: concurrency, spill, back-pressure ----------------------------------------------------


async def _stream_one(client: openai.AsyncOpenAI, model: str, max_tokens: int) -> tuple[int, str | None, int, str | None]:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "What are you?"}], max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        tokens = 0
        async for chunk in raw.parse():
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        return 200, raw.headers.get("x-elo-pool"), tokens, None
    except openai.APIStatusError as e:
        return e.status_code, None, 0, e.response.headers.get("retry-after")


async def _burst(served_app: ServedApp, n: int, max_tokens: int) -> list[tuple[int, str | None, int, str | None]]:
    async with openai.AsyncOpenAI(base_url=served_app.v1, api_key="unused", max_retries=0, timeout=300) as c:
        return await asyncio.gather(*(_stream_one(c, served_app.model, max_tokens) for _ in range(n)))


def test_32_concurrent_streams_all_complete_across_both_pools(served_app):
    results = asyncio.run(_burst(served_app, 32, 24))
    assert [r[0] for r in results] == [200] * 32
    assert all(r[2] == 24 for r in results)
    pools = {r[1] for r in results}
    assert pools == {"cloud", "edge"}, "a burst beyond the cloud pool's slots spills to the edge pool"


def test_requests_beyond_every_pools_queue_limit_get_429_with_retry_after(served_app):
    results = asyncio.run(_burst(served_app, 48, 64))  # room for 36 (see TEST_CONFIG)
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) >= 1 and statuses.count(200) >= 36
    assert all(r[3] == "1" for r in results if r[0] == 429)


def test_health_and_metrics_report_both_pools(served_app):
    health = httpx.get(f"{served_app.base_url}/healthz", timeout=10)
    assert health.status_code == 200 and set(health.json()["pools"]) == {"cloud", "edge"}
    metrics = httpx.get(f"{served_app.base_url}/metrics", timeout=10).text
    assert 'elo_requests_total{pool="cloud",status="200"}' in metrics
    assert 'elo_requests_total{pool="edge",status="200"}' in metrics
    assert "elo_time_to_first_token_seconds_bucket" in metrics


def test_pool_state_reports_load_statistics_for_the_controller(served_app, client):
    chat(client, served_app.model, CLOUD, max_tokens=4, temperature=0)
    state = httpx.get(f"{served_app.base_url}/elo/pools", timeout=10).json()
    cloud = state["pools"]["cloud"]
    assert cloud["arrival_rate_rps"] > 0 and cloud["completed"] >= 1 and cloud["ttft_p95_s"] > 0
    assert {"running", "queued", "rejected_rate_rps", "e2e_p95_s", "output_tokens_per_s", "admission",
            "by_concurrency"} <= set(cloud)
    assert cloud["by_concurrency"] and cloud["by_concurrency"][0]["requests"] >= 1


def test_status_json_follows_its_schema(served_app):
    import subprocess
    import sys

    import jsonschema

    elo = [sys.executable, "-m", "orchestrator.cli"]
    schema = json.loads(subprocess.run([*elo, "status", "--schema"], check=True, capture_output=True).stdout)
    out = json.loads(subprocess.run([*elo, "status", "--json", "--url", served_app.base_url, "--decisions",
                                     "/nonexistent/decisions.jsonl"], check=True, capture_output=True).stdout)
    jsonschema.validate(out, schema)
    assert set(out["router"]["pools"]) == {"cloud", "edge"}


def test_controller_routing_plan_moves_default_traffic_and_rejects_bad_input(served_app, client):
    url = f"{served_app.base_url}/elo/routing"
    plan = {"fill_order": ["edge", "cloud"], "reason": "test"}
    try:
        r = httpx.put(url, json=plan, timeout=10)
        assert r.status_code == 200 and httpx.get(url, timeout=10).json() == r.json()
        assert chat(client, served_app.model, CLOUD, max_tokens=2, temperature=0)[0] == "edge"
        assert _error(httpx.put(url, json={"fill_order": ["gpu"]}, timeout=10), 400)
        assert _error(httpx.put(url, json={"preferred_pool_by_class": {"default": "edge"}}, timeout=10), 400)
        assert _error(httpx.put(url, content=b"{", headers={"content-type": "application/json"}, timeout=10), 400)
        assert httpx.get(url, timeout=10).json()["fill_order"] == ["edge", "cloud"], "kept on error"
    finally:
        httpx.put(url, json={"fill_order": ["cloud", "edge"], "reason": "test config order"}, timeout=10)
    assert chat(client, served_app.model, CLOUD, max_tokens=2, temperature=0)[0] == "cloud"


def test_client_leaving_mid_stream_frees_its_slot(served_app):
    body = _body(served_app, stream=True, max_tokens=900, temperature=0, ignore_eos=True)
    with httpx.stream("POST", f"{served_app.v1}/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pools = httpx.get(f"{served_app.base_url}/elo/pools", timeout=10).json()["pools"]
        if all(p["in_flight"] == 0 for p in pools.values()):
            break
        time.sleep(0.2)
    assert all(p["in_flight"] == 0 for p in pools.values()), pools
    metrics = httpx.get(f"{served_app.base_url}/metrics", timeout=10).text
    assert 'status="499"' in metrics


# --- failure: runs last, it kills the edge replica ------------------------------------------------


async def _stream_text(c: openai.AsyncOpenAI, model: str, on_tokens=None) -> tuple[str, str | None, int]:
    """A greedy streamed chat of 300 tokens on the edge pool: its text, finish reason and usage."""
    stream = await c.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=300, temperature=0,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}, extra_headers=EDGE)
    text, finish, usage, chunks = [], None, 0, 0
    async for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.completion_tokens
        chunks += 1
        if on_tokens is not None and chunks == 4:
            on_tokens()
    return "".join(text), finish, usage


def test_killed_edge_replica_loses_no_request_its_streams_go_on_and_the_pool_recovers(served_app):
    # Streams the edge replica was serving when it died go on from the text already sent on another replica (the
    # cloud pool), and each reads as one uninterrupted greedy stream. Requests sent after the kill: either Serve
    # holds them for the replacement replica, or the router retries them on the cloud pool; no request may fail.
    import ray

    edge = [a for a in ray.util.list_named_actors(all_namespaces=True) if "pool-edge" in a["name"]]
    assert len(edge) == 1

    async def streams_through_the_kill():
        async with openai.AsyncOpenAI(base_url=served_app.v1, api_key="unused", max_retries=0, timeout=300) as c:
            reference = await _stream_text(c, served_app.model)
            started = [0]

            def kill_once_all_stream() -> None:
                started[0] += 1
                if started[0] == 4:  # every stream is mid-answer on the edge replica
                    ray.kill(ray.get_actor(edge[0]["name"], namespace=edge[0]["namespace"]), no_restart=True)

            results = await asyncio.gather(*(_stream_text(c, served_app.model, kill_once_all_stream)
                                             for _ in range(4)))
            return reference, started[0], results

    reference, started, results = asyncio.run(streams_through_the_kill())
    assert reference[1:] == ("length", 300) and started == 4
    # One stream each, no error event, the whole 300 tokens, the text of the uninterrupted run.
    assert results == [reference] * 4
    metrics = httpx.get(f"{served_app.base_url}/metrics", timeout=10).text
    resumed = [line for line in metrics.splitlines() if line.startswith("elo_stream_resumes_total{")]
    assert resumed and sum(float(line.split()[-1]) for line in resumed) >= 1, resumed

    async def batch_requests(n: int):
        async with openai.AsyncOpenAI(base_url=served_app.v1, api_key="unused", max_retries=0, timeout=120) as c:
            async def one():
                raw = await c.completions.with_raw_response.create(
                    model=served_app.model, prompt=CORPUS_PROMPT, max_tokens=8, temperature=0, extra_headers=EDGE)
                return raw.http_response.status_code, raw.headers.get("x-elo-pool")
            return await asyncio.gather(*(one() for _ in range(n)))

    results = asyncio.run(batch_requests(4))
    assert [status for status, _ in results] == [200] * 4

    # Serve replaces the replica; the router routes to the edge pool again once it is ready.
    sync = openai.OpenAI(base_url=served_app.v1, api_key="unused", max_retries=0, timeout=60)
    deadline, pool = time.monotonic() + 120, None
    while pool != "edge" and time.monotonic() < deadline:
        time.sleep(1)
        pool = complete(sync, served_app.model, EDGE, prompt=CORPUS_PROMPT, max_tokens=4, temperature=0)[0]
    assert pool == "edge"


# --- property-based fuzzing of bad input: never a 5xx, always OpenAI's error shape ----------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=20), lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "seed",
           "stop", "logprobs", "top_logprobs", "logit_bias", "response_format", "tools", "tool_choice",
           "presence_penalty", "frequency_penalty", "user", "frobnicate"]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _JSON, min_size=1, max_size=4),
       drop=st.sets(st.sampled_from(["model", "messages"]), max_size=1))
def test_fuzzed_chat_bodies_get_a_200_or_an_openai_shaped_4xx_never_a_5xx(served_app, changes, drop):
    # A valid body with 1-4 fields replaced by arbitrary JSON (and maybe a required field dropped); max_tokens
    # stays small unless the fuzzer replaced it, so a body that is still valid answers quickly.
    body = {**_body(served_app, max_tokens=4), **changes}
    for name in drop:
        body.pop(name, None)
    r = _post(served_app, "/chat/completions", body)
    event(f"status {r.status_code}")  # pytest --hypothesis-show-statistics prints the mix
    assert r.status_code < 500, (body, r.status_code, r.text[:500])
    if r.status_code == 200:
        text = r.text
        assert ("data: " in text) if body.get("stream") is True else ("choices" in r.json()), text[:500]
    else:
        assert r.status_code in (400, 404, 413, 422, 429), (body, r.status_code, r.text[:500])
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (body, err)
