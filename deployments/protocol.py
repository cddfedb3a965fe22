"""OpenAI wire format at the router: strict request models (vLLM's OpenAI API surface), the API features a request
uses, errors in OpenAI's shape, and SSE framing."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# --- requests --------------------------------------------------------------------------------
#
# Strict: a JSON string is not a number ("10" is refused, as OpenAI refuses it), and a field this endpoint does not
# know is a 400 naming it (OpenAI answers "Unrecognized request argument supplied"): nothing is silently dropped.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_where_needed(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionSpec(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema")
        return self


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


Stop = str | Annotated[list[str], Field(max_length=4)] | None
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class _Sampling(_Strict):
    """Fields shared by chat and text completions (OpenAI's, and the vLLM extensions the pools honour)."""

    model: str = Field(min_length=1)
    n: int = Field(1, ge=1, le=16)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: sample from the k likeliest tokens.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="vLLM extension.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="vLLM extension.")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: Seed | None = None
    stop: Stop = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, description="vLLM extension.")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: no EOS or stop before this many tokens.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past the EOS token.")
    user: str | None = None
    metadata: dict[str, str] | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: Stop) -> Stop:
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream: true")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = Field(None, min_length=1)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_need_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_names_a_tool(cls, v: Any, info: ValidationInfo) -> Any:
        tools = info.data.get("tools")
        if v not in (None, "none") and not tools:
            raise ValueError("tool_choice needs tools")
        if isinstance(v, NamedToolChoice) and v.function.name not in {t.function.name for t in tools or []}:
            raise ValueError(f"tool_choice names {v.function.name!r}, which is not in tools")
        return v

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


Prompt = (Annotated[str, Field(min_length=1)]
          | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=16)]
          | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
          | Annotated[list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
                      Field(min_length=1, max_length=16)])


class CompletionRequest(_Sampling):
    prompt: Prompt
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class TokenizeRequest(_Strict):
    """``POST /tokenize``: a prompt or chat messages (vLLM's tokenize API)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


# --- features: what a request needs from a pool's engine ------------------------------------------------------

# Each is the request field a pool must honour; a pool's `features` say which it has.
FEATURES = ("n", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "logit_bias",
            "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "stop_token_ids",
            "top_k", "min_p", "echo", "prompt")


def engine_features(engine: str, engine_args: dict[str, Any]) -> frozenset[str]:
    """What a pool's engine honours. vLLM: everything, tool calls only with a tool-call parser configured
    (``tool_call_parser``; "auto" also needs ``enable_auto_tool_choice``). The CPU engine: see edge_api."""
    if engine == "vllm":
        out = set(FEATURES) - {"tools", "tool_choice"}
        if engine_args.get("tool_call_parser"):
            out.add("tool_choice")
            if engine_args.get("enable_auto_tool_choice"):
                out.add("tools")
        return frozenset(out)
    return EDGE_FEATURES


# What deployments.edge_api (the CPU replica's app) honours; its tests check each one.
EDGE_FEATURES = frozenset(FEATURES) - {"tools"}


def features_of(body: ChatCompletionRequest | CompletionRequest) -> frozenset[str]:
    """The API features a request uses beyond plain sampling (names are its request fields)."""
    need = set()
    if body.n > 1:
        need.add("n")
    if body.logprobs:
        need.add("logprobs")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            need.add(name)
    for name in ("repetition_penalty", "top_k", "min_p"):
        if getattr(body, name) is not None:
            need.add(name)
    if body.logit_bias:
        need.add("logit_bias")
    if body.min_tokens:
        need.add("min_tokens")
    if body.stop_token_ids:
        need.add("stop_token_ids")
    if isinstance(body, ChatCompletionRequest):
        if body.top_logprobs:
            need.add("top_logprobs")
        if body.tools and body.tool_choice != "none":
            # "auto" needs the model's tool-call parser to find calls in free text; "required" or a named function
            # is a call forced by structured output (any model).
            need.add("tools" if body.tool_choice in (None, "auto") else "tool_choice")
        if body.response_format is not None and body.response_format.type != "text":
            need.add("response_format")
    else:
        if body.echo:
            need.add("echo")
        if len(body.prompts()) > 1:
            need.add("prompt")
    return frozenset(need)


# --- what the router's edge replica engine gets -------------------------------------------------------------


class GenerationRequest(BaseModel):
    """One sequence for the CPU engine: token ids and every sampling setting it honours."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] = Field(default_factory=dict)
    logprobs: int | None = None  # top candidates per token to report (0: the sampled token's only); None: none
    json_schema: dict[str, Any] | None = None  # constrain the output to JSON matching this schema ({}: any JSON)


class GenerationDelta(BaseModel):
    """One streamed step from the CPU engine: new text and token ids, and why it ended."""

    model_config = ConfigDict(frozen=True)

    text: str
    completion_tokens: int
    finish_reason: Literal["stop", "length"] | None = None
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


class TokenLogprob(BaseModel):
    model_config = ConfigDict(frozen=True)

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token id, token text, logprob), likeliest first


GenerationDelta.model_rebuild()


# --- errors ----------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_json(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object; every way it can be wrong is a 4xx APIError (deep nesting included)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(
            415,
            f"Content-Type must be application/json, got {content_type or 'none'!r}.",
            code="unsupported_media_type",
        )
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"Request body is not valid JSON: {e}.", code="invalid_json") from e
    except RecursionError as e:
        raise APIError(400, "Request body is nested too deeply.", code="invalid_json") from e
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
    return data


def parse_request(raw: bytes, content_type: str | None, model_cls: type[BaseModel]) -> Any:
    """Validate a request body, turning every way it can be wrong into a 4xx APIError."""
    return validate_request(parse_json(raw, content_type), model_cls)


def validate_request(data: dict[str, Any], model_cls: type[BaseModel]) -> Any:
    try:
        return model_cls.model_validate(data)
    except RecursionError as e:
        raise APIError(400, "Request body is nested too deeply.", code="invalid_json") from e
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        param = loc[0] if loc else None
        where = ".".join(p for p in loc if not _is_union_tag(p)) or "body"
        missing = err["type"] == "missing"
        if err["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: '{where}'."
            code = "unknown_parameter"
        elif missing:
            msg, code = f"'{where}' is a required property.", "missing_required_parameter"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg, code = f"Invalid value for '{where}': {text}.", "invalid_value"
        extra = len(e.errors()) - 1
        if extra:
            msg += f" ({extra} more error{'s' if extra > 1 else ''})"
        raise APIError(400, msg, param=param, code=code) from e


def _is_union_tag(part: str) -> bool:
    # pydantic names the union branch it tried (e.g. "str", "list[str]", "function-after[...]").
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict", "NamedToolChoice"}


# --- SSE framing -----------------------------------------------------------------------------

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON payload, as OpenAI streams it."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
