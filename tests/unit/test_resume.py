"""Continuing a stream on another replica: what was streamed, the continuation request, and its events reshaped
into the original stream's (deployments/resume.py)."""

from __future__ import annotations

import json

from deployments.protocol import SSE_DONE, sse_event
from deployments.resume import Reshape, Streamed, continuation, resumable, strip_token_ids

CHAT = [
    sse_event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
    sse_event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": {"content": "Once upon"}, "finish_reason": None}]})
    + sse_event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": " a time"}, "finish_reason": None}]}),
]


def test_what_a_chat_stream_sent_is_its_text_and_its_first_payload():
    s = Streamed.of(CHAT, chat=True)
    assert s.text == "Once upon a time" and not s.finished
    assert s.template is not None and s.template["id"] == "chatcmpl-1"
    done = CHAT + [sse_event({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})]
    assert Streamed.of(done, chat=True).finished
    text = [sse_event({"id": "cmpl-1", "choices": [{"index": 0, "text": "ab"}]}), sse_event({"choices": [
        {"index": 0, "text": "c"}]}) + SSE_DONE]
    assert Streamed.of(text, chat=False).text == "abc"
    assert Streamed.of([], chat=True).template is None  # nothing sent: the original request is sent again


def test_only_one_plain_sequence_is_resumable():
    assert resumable({"model": "m", "messages": [], "temperature": 0, "logprobs": False}) is None
    assert resumable({"n": 2}) == "n > 1"
    assert resumable({"tools": [{"type": "function"}]}) == "tools"
    assert resumable({"response_format": {"type": "json_object"}}) == "response_format"
    assert resumable({"response_format": {"type": "text"}}) is None
    assert resumable({"logprobs": True}) == "logprobs"
    assert resumable({"echo": True}) == "echo"
    assert resumable({"prompt": ["a", "b"]}) == "several prompts"
    assert resumable({"prompt": [1, 2, 3]}) is None and resumable({"prompt": [[1, 2]]}) is None


def test_the_continuation_completes_the_prompt_and_the_streamed_tokens_with_the_same_sampling():
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "stop": ["\n\n"],
            "min_tokens": 5, "seed": 3, "ignore_eos": True, "stream": True, "max_tokens": 100,
            "stream_options": {"include_usage": False}}
    body = continuation(data, [1, 2, 3], [9, 8], max_tokens=100)
    assert body == {"model": "m", "prompt": [1, 2, 3, 9, 8], "temperature": 0, "stop": ["\n\n"], "seed": 3,
                    "ignore_eos": True, "stream": True, "return_token_ids": True,
                    "stream_options": {"include_usage": True}, "max_tokens": 98, "min_tokens": 3}
    assert continuation(data, [1], [2] * 200, max_tokens=100)["max_tokens"] == 1  # never below one


def _events(raw: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def test_a_continuation_reads_as_the_original_chat_stream_and_its_usage_counts_every_token():
    r = Reshape(Streamed.of(CHAT, chat=True), chat=True, prompt_tokens=12, streamed_tokens=4)
    usage: list[dict] = []
    cont = (sse_event({"id": "cmpl-9", "object": "text_completion", "created": 99, "model": "m",
                       "choices": [{"index": 0, "text": " there", "logprobs": None, "finish_reason": None}]})
            + sse_event({"id": "cmpl-9", "object": "text_completion", "created": 99, "model": "m",
                         "choices": [{"index": 0, "text": " was", "logprobs": None, "finish_reason": "length"}]})
            + sse_event({"id": "cmpl-9", "object": "text_completion", "created": 99, "model": "m", "choices": [],
                         "usage": {"prompt_tokens": 16, "completion_tokens": 2, "total_tokens": 18}}) + SSE_DONE)
    cut = len(cont) // 3  # the bytes arrive in arbitrary pieces: only whole events come out
    out = r.feed(cont[:cut], usage.append) + r.feed(cont[cut:], usage.append)
    chunks = _events(out)
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == [" there", " was"]
    assert {(c["id"], c["object"], c["created"]) for c in chunks} == {("chatcmpl-1", "chat.completion.chunk", 7)}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and SSE_DONE not in out
    assert usage == [{"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}]
    tail = _events(r.usage_event(usage[0]))[0]
    assert tail["choices"] == [] and tail["usage"]["completion_tokens"] == 6 and tail["id"] == "chatcmpl-1"


def test_a_continuation_of_a_text_completion_keeps_its_shape_and_id():
    sent = [sse_event({"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                       "choices": [{"index": 0, "text": "ab", "finish_reason": None}]})]
    r = Reshape(Streamed.of(sent, chat=False), chat=False, prompt_tokens=3, streamed_tokens=1)
    out = _events(r.feed(sse_event({"id": "cmpl-2", "created": 6, "choices": [
        {"index": 0, "text": "c", "logprobs": None, "finish_reason": None}]}), lambda u: None))
    assert out == [{"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m",
                    "choices": [{"index": 0, "text": "c", "logprobs": None, "finish_reason": None}]}]


def test_the_token_ids_the_router_asked_for_are_what_it_resumes_from_and_never_reach_the_client():
    # vLLM's chat stream with return_token_ids: the prompt's ids in the first chunk, each delta's ids in its choice;
    # token 2 is an EOS under ignore_eos: it decodes to no text, so the text alone would lose it.
    raw = [sse_event({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                      "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "token_ids": []}],
                      "prompt_token_ids": [5, 6, 7]}),
           sse_event({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}, "token_ids": [40]}]})
           + sse_event({"id": "c", "choices": [{"index": 0, "delta": {"content": ""}, "token_ids": [2]}]})
           + sse_event({"token_ids": [41], "choices": [{"index": 0, "delta": {"content": " x"}, "token_ids": [41]}]})]
    s = Streamed.of(raw, chat=True)
    assert (s.text, s.token_ids, s.prompt_ids) == ("Hi x", [40, 2, 41], [5, 6, 7])
    clean = [strip_token_ids(e) for e in raw]
    assert all(b"token_ids" not in e for e in clean)
    assert [json.loads(line[6:]) for e in clean for line in e.split(b"\n") if line.startswith(b"data: ")][1] == {
        "id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    # A stream whose chunks did not all carry ids: the router falls back to the text's tokens.
    assert Streamed.of([sse_event({"choices": [{"index": 0, "delta": {"content": "a"}}]})], chat=True).token_ids is None
    # The reshaped continuation keeps its ids for a later resume (stripped on the way out), not the prompt's.
    r = Reshape(s, chat=True, prompt_tokens=3, streamed_tokens=3)
    out = r.feed(sse_event({"id": "x", "choices": [{"index": 0, "text": "!", "token_ids": [9],
                                                    "prompt_token_ids": [5, 6, 7, 40, 2, 41]}]}), lambda u: None)
    (chunk,) = _events(out)
    assert chunk["choices"][0]["token_ids"] == [9] and "prompt_token_ids" not in chunk
    assert Streamed.of([*raw, out], chat=True).token_ids == [40, 2, 41, 9]
