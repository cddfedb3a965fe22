"""Request validation (each bad input and its error), SSE framing and response payload shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.config import ConfigError, load_app_config
from deployments.protocol import (
    EDGE_FEATURES,
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    engine_features,
    features_of,
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


def test_an_unknown_field_is_a_400_naming_it_as_openai_does_nothing_is_silently_dropped():
    e = error_of(chat(guided_json={"type": "object"}))
    assert (e.status, e.param, e.code) == (400, "guided_json", "unknown_parameter")
    assert "Unrecognized request argument supplied: 'guided_json'" in e.message


@pytest.mark.parametrize("field,value", [("max_tokens", "10"), ("temperature", "0.5"), ("stream", "true"),
                                         ("n", 2.0), ("logprobs", 1)])
def test_no_lax_coercion_a_string_or_float_is_not_an_int_or_bool(field, value):
    e = error_of(chat(**{field: value}))
    assert (e.status, e.param) == (400, field)


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64])
def test_seed_outside_int64_is_a_400(seed):
    assert error_of(chat(seed=seed)).param == "seed"
    assert parse_request(chat(seed=2**63 - 1), JSON, ChatCompletionRequest).seed == 2**63 - 1


def test_stream_options_without_stream_is_a_400():
    e = error_of(chat(stream_options={"include_usage": True}))
    assert (e.status, e.param) == (400, "stream_options")
    assert parse_request(chat(stream=True, stream_options={"include_usage": True}), JSON,
                         ChatCompletionRequest).include_usage()


def test_deep_nesting_is_a_400_not_a_500():
    e = error_of(b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}")
    assert (e.status, e.code) == (400, "invalid_json") and "nested too deeply" in e.message


def test_the_feature_dependencies_are_checked():
    assert error_of(chat(top_logprobs=2)).param == "top_logprobs"
    assert error_of(chat(tool_choice="required")).param == "tool_choice"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    e = error_of(chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "g"}}))
    assert e.param == "tool_choice" and "'g'" in e.message
    assert error_of(chat(logit_bias={"abc": 1})).param == "logit_bias"


def test_features_name_the_request_fields_a_pool_must_honour():
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    parse = lambda **kw: parse_request(chat(**kw), JSON, ChatCompletionRequest)  # noqa: E731
    assert features_of(parse()) == frozenset()
    assert features_of(parse(n=2, logprobs=True, top_logprobs=2)) == {"n", "logprobs", "top_logprobs"}
    assert features_of(parse(tools=[tool])) == {"tools"}, "tool_choice auto: the model's parser finds the call"
    assert features_of(parse(tools=[tool], tool_choice="required")) == {"tool_choice"}
    assert features_of(parse(tools=[tool], tool_choice="none")) == frozenset()
    assert features_of(parse(response_format={"type": "json_object"})) == {"response_format"}
    assert features_of(parse(response_format={"type": "text"})) == frozenset()
    completion = parse_request(json.dumps({"model": "m", "prompt": ["a", "b"], "echo": True}).encode(), JSON,
                               CompletionRequest)
    assert features_of(completion) == {"prompt", "echo"}


def test_vllm_honours_tool_calls_only_with_a_parser_and_auto_only_when_enabled():
    assert "tool_choice" not in engine_features("vllm", {})
    assert {"tool_choice"} <= engine_features("vllm", {"tool_call_parser": "xlam"})
    assert "tools" not in engine_features("vllm", {"tool_call_parser": "xlam"})
    assert "tools" in engine_features("vllm", {"tool_call_parser": "xlam", "enable_auto_tool_choice": True})
    assert engine_features("transformers", {}) == EDGE_FEATURES


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
                                         ("n", 0), ("n", 17), ("stop", ["a", "b", "c", "d", "e"]), ("stop", ""),
                                         ("stop", 5),
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


def test_app_config_errors_name_the_file_and_the_field(tmp_path: Path):
    bad = tmp_path / "app.yaml"
    bad.write_text("pools:\n  edge:\n    engine: tgi\n")
    with pytest.raises(ConfigError, match=r"app.yaml: invalid app config \(1 problem\):\n  .*app.yaml:3: pools.edge.engine"):
        load_app_config(bad)
    bad.write_text("pools: [unclosed\n")
    with pytest.raises(ConfigError, match=r"app.yaml:2: not valid YAML"):
        load_app_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_app_config(tmp_path / "missing.yaml")
