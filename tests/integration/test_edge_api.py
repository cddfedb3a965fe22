"""The edge replica's OpenAI app (deployments.edge_api) on the real demo model, over real HTTP (its ReplicaServer on
127.0.0.1), called with the official ``openai`` client: every feature in EDGE_FEATURES is honoured, and what the
edge pool cannot honour gets a 400 naming the field."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from deployments.protocol import EDGE_FEATURES, FEATURES

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}, "required": ["city"],
    "additionalProperties": False}}}]
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def edge_url(demo_model_path: Path) -> Iterator[str]:
    from deployments.cpu_engine import BatchedCPUEngine, load_causal_lm
    from deployments.edge_api import build_edge_app
    from deployments.replica_server import ReplicaServer

    model, tokenizer = load_causal_lm(str(demo_model_path))
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, object] = {}

    async def serve() -> None:
        engine = BatchedCPUEngine(model, tokenizer, max_batch_size=4, max_model_len=1024)
        server = ReplicaServer(build_edge_app(engine, tokenizer, "demo", 1024), host="127.0.0.1")
        holder["url"] = await server.start()
        holder["server"] = server
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result()
    ready.wait()
    yield str(holder["url"])

    async def stop() -> None:
        await holder["server"].drain(5.0)  # type: ignore[attr-defined]

    asyncio.run_coroutine_threadsafe(stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)


@pytest.fixture(scope="module")
def client(edge_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{edge_url}/v1", api_key="unused", max_retries=0)


def test_edge_features_are_all_but_auto_tool_choice():
    assert set(FEATURES) - EDGE_FEATURES == {"tools"}


def test_chat_and_stream_report_the_same_text_and_usage(client):
    whole = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model="demo", messages=HELLO, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage == whole.usage and whole.usage.completion_tokens > 0


def test_n_choices_with_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=6, n=3, logprobs=True,
                                       top_logprobs=2, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    for c in r.choices:
        assert len(c.logprobs.content) > 0
        for tok in c.logprobs.content:
            assert len(tok.top_logprobs) == 2 and tok.logprob <= 0.0
            # As vLLM lists them: the sampled token first (at temperature 1 not always the likeliest), then the
            # likeliest others in descending order.
            assert (tok.top_logprobs[0].token, tok.top_logprobs[0].logprob) == (tok.token, tok.logprob)
            assert tok.top_logprobs[1].token != tok.token and tok.top_logprobs[1].logprob <= 0.0


def test_json_schema_output_validates(client):
    # Seeded: unseeded, the sampled integer sometimes ran on to max_tokens (a flaky test); greedy, it always does
    # ('{"a":-12615353533...'). Seeds 0-5 all stop within 40 tokens.
    r = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=40, seed=0, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_json_object_output_parses(client):
    r = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=60,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a JSON object's prefix
        assert r.choices[0].message.content.startswith("{")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_forced_tool_calls_are_schema_valid(client, choice):
    # Greedy: sampled at temperature 1, the small model's arguments were sometimes cut by max_tokens (a flaky test).
    r = client.chat.completions.create(model="demo", messages=HELLO, max_tokens=200, tools=TOOLS, temperature=0,
                                       tool_choice=choice, parallel_tool_calls=False)
    assert r.choices[0].finish_reason in ("stop", "tool_calls"), r.choices[0]
    calls = r.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), TOOLS[0]["function"]["parameters"])


def test_auto_tool_choice_is_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="demo", messages=HELLO, max_tokens=4, tools=TOOLS)
    assert e.value.body["param"] == "tool_choice"


def test_completions_with_a_list_of_prompts_echo_and_sampling_controls(client):
    r = client.completions.create(
        model="demo", prompt=["It is a truth", "The prompt"], max_tokens=5, echo=True, presence_penalty=0.5,
        frequency_penalty=0.3, logit_bias={"5": -100}, temperature=0,
        extra_body={"min_tokens": 3, "repetition_penalty": 1.1, "top_k": 5, "min_p": 0.1, "stop_token_ids": [7]})
    texts = sorted(r.choices, key=lambda c: c.index)
    assert texts[0].text.startswith("It is a truth") and texts[1].text.startswith("The prompt")
    assert r.usage.completion_tokens >= 6  # min_tokens 3 per prompt


def test_logit_bias_bans_a_token(client, tokenizer):
    free = client.completions.create(model="demo", prompt="It is a truth", max_tokens=1, temperature=0,
                                     extra_body={"return_token_ids": True})
    banned = free.choices[0].model_extra["token_ids"][0]
    biased = client.completions.create(model="demo", prompt="It is a truth", max_tokens=1, temperature=0,
                                       logit_bias={str(banned): -100}, extra_body={"return_token_ids": True})
    assert biased.choices[0].model_extra["token_ids"][0] != banned


@pytest.mark.parametrize(("change", "param"), [
    ({"max_tokens": "10"}, "max_tokens"),  # no lax coercion
    ({"seed": 2**64}, "seed"),  # outside int64
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"frobnicate": 1}, "frobnicate"),  # unknown field
])
def test_bad_input_gets_400_naming_the_field(edge_url, change, param):
    r = httpx.post(f"{edge_url}/v1/chat/completions", json={"model": "demo", "messages": HELLO, "max_tokens": 4,
                                                            **change})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_tokenize_and_detokenize_round_trip(edge_url):
    t = httpx.post(f"{edge_url}/tokenize", json={"model": "demo", "prompt": "hello there"}).json()
    assert t["count"] == len(t["tokens"]) > 0 and t["max_model_len"] == 1024
    d = httpx.post(f"{edge_url}/detokenize", json={"model": "demo", "tokens": t["tokens"]}).json()
    assert d["prompt"] == "hello there"
