"""Request validation (each bad input and its error), SSE framing and response payload shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.config import ConfigError, load_app_config
from deployments.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    GenerationDelta,
    ResponseShape,
    parse_request,
    sse_event,
)

JSON = "application/json"


def chat(**fields) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


def error_of(raw: bytes, content_type: str | None = JSON, cls=ChatCompletionRequest) -> APIError:
    with pytest.raises(APIError) as e:
        parse_request(raw, content_type, cls)
    body = e.value.body()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return e.value


def test_valid_chat_request_parses_with_openai_defaults():
    req = parse_request(chat(max_tokens=5, stop="\n"), JSON, ChatCompletionRequest)
    assert req.requested_max_tokens() == 5 and req.stop_list() == ["\n"] and req.temperature == 1.0


def test_max_completion_tokens_wins_over_max_tokens():
    req = parse_request(chat(max_tokens=5, max_completion_tokens=7), JSON, ChatCompletionRequest)
    assert req.requested_max_tokens() == 7


def test_unknown_fields_are_ignored_like_openai_does():
    assert parse_request(chat(presence_penalty=0.1, logit_bias={}), JSON, ChatCompletionRequest).model == "m"


def test_content_as_text_parts_is_joined():
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}).encode()
    assert parse_request(raw, JSON, ChatCompletionRequest).messages[0].text() == "ab"


def test_malformed_json_is_a_400_naming_json():
    e = error_of(b'{"model": "m", "messages": [')
    assert (e.status, e.code) == (400, "invalid_json") and "not valid JSON" in e.message


def test_json_that_is_not_an_object_is_a_400():
    assert error_of(b"[1, 2]").status == 400


def test_wrong_content_type_is_a_415():
    e = error_of(chat(), "text/plain")
    assert (e.status, e.code) == (415, "unsupported_media_type") and "text/plain" in e.message
    assert error_of(chat(), None).status == 415


def test_content_type_with_charset_is_accepted():
    assert parse_request(chat(), "application/json; charset=utf-8", ChatCompletionRequest).model == "m"


def test_missing_messages_is_a_400_naming_the_field():
    e = error_of(json.dumps({"model": "m"}).encode())
    assert (e.status, e.param, e.code) == (400, "messages", "missing_required_parameter")


def test_empty_messages_is_a_400():
    e = error_of(chat(messages=[]))
    assert (e.status, e.param) == (400, "messages")


def test_message_with_unknown_role_is_a_400():
    e = error_of(chat(messages=[{"role": "robot", "content": "x"}]))
    assert e.param == "messages" and "messages.0.role" in e.message


@pytest.mark.parametrize("value", [-1, 0, "ten", 1.5])
def test_bad_max_tokens_is_a_400_naming_max_tokens(value):
    e = error_of(chat(max_tokens=value))
    assert (e.status, e.param, e.code) == (400, "max_tokens", "invalid_value")


@pytest.mark.parametrize("field,value", [("temperature", -0.5), ("temperature", 3), ("top_p", 0), ("top_p", 1.5),
                                         ("n", 2), ("stop", ["a", "b", "c", "d", "e"]), ("stop", ""), ("stop", 5),
                                         ("seed", "x"), ("model", "")])
def test_bad_sampling_fields_are_400s_naming_the_field(field, value):
    e = error_of(chat(**{field: value}))
    assert (e.status, e.param) == (400, field)
    assert "str]" not in e.message  # pydantic's union branch names stay out of the message


def test_completion_prompt_must_be_text_or_token_ids():
    assert parse_request(json.dumps({"model": "m", "prompt": [1, 2]}).encode(), JSON, CompletionRequest).prompt == [1, 2]
    e = error_of(json.dumps({"model": "m", "prompt": {"a": 1}}).encode(), cls=CompletionRequest)
    assert e.param == "prompt"
    e = error_of(json.dumps({"model": "m", "prompt": []}).encode(), cls=CompletionRequest)
    assert e.param == "prompt"


def test_sse_event_is_one_data_line_and_a_blank_line():
    frame = sse_event({"a": "é\n"})
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    assert json.loads(frame[len(b"data: "):]) == {"a": "é\n"}
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_chat_stream_opens_with_the_role_then_content_then_finish_reason():
    s = ResponseShape("chatcmpl-1", "m", chat=True)
    (opening,) = s.opening()
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    (mid,) = s.delta(GenerationDelta("Hel", 1), include_usage=True)
    assert mid["choices"][0]["delta"] == {"content": "Hel"} and mid["usage"] is None
    (end,) = s.delta(GenerationDelta("", 2, "stop"), include_usage=False)
    assert end["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert s.delta(GenerationDelta("", 2), include_usage=False) == []
    usage = s.usage_chunk({"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    assert usage["choices"] == [] and usage["object"] == "chat.completion.chunk"


def test_whole_responses_have_openai_shapes():
    u = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    chat_body = ResponseShape("chatcmpl-1", "m", chat=True).full("hi", "length", u)
    assert chat_body["object"] == "chat.completion"
    assert chat_body["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    text_body = ResponseShape("cmpl-1", "m", chat=False).full("hi", "stop", u)
    assert text_body["object"] == "text_completion" and text_body["choices"][0]["text"] == "hi"
    assert ResponseShape("cmpl-1", "m", chat=False).opening() == []


def test_app_config_errors_name_the_file_and_the_field(tmp_path: Path):
    bad = tmp_path / "app.yaml"
    bad.write_text("pools:\n  edge:\n    engine: tgi\n")
    with pytest.raises(ConfigError, match=r"app.yaml: invalid configuration:\n  pools.edge.engine"):
        load_app_config(bad)
    bad.write_text("pools: [unclosed\n")
    with pytest.raises(ConfigError, match="app.yaml: not valid YAML"):
        load_app_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_app_config(tmp_path / "missing.yaml")
