"""OpenAI wire format: request models, the internal generation request, errors and SSE framing."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# --- requests --------------------------------------------------------------------------------

Stop = str | Annotated[list[str], Field(max_length=4)] | None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by chat and text completions. Unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Stop = None
    seed: int | None = None
    n: Literal[1] = Field(1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past the EOS token.")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: Stop) -> Stop:
        stops = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[int], Field(min_length=1)]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class RoutingPreference(BaseModel):
    """The controller's routing preference (PUT /elo/routing): SLO class or "default" -> pool."""

    model_config = ConfigDict(extra="forbid")
    preferred_pool_by_class: dict[str, str]


# --- what the router sends a replica, and what comes back ------------------------------------


@dataclass(frozen=True)
class GenerationRequest:
    """Engine-neutral request: both pools get the same token ids and sampling settings."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass(frozen=True)
class GenerationDelta:
    """One streamed step from a replica: new text, tokens generated so far, and why it ended."""

    text: str
    completion_tokens: int
    finish_reason: Literal["stop", "length"] | None = None


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


def parse_request(raw: bytes, content_type: str | None, model_cls: type[BaseModel]) -> Any:
    """Validate a request body, turning every way it can be wrong into a 4xx APIError."""
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
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        param = loc[0] if loc else None
        where = ".".join(p for p in loc if not _is_union_tag(p)) or "body"
        missing = err["type"] == "missing"
        msg = f"'{where}' is a required property." if missing else f"Invalid value for '{where}': {err['msg']}."
        extra = len(e.errors()) - 1
        if extra:
            msg += f" ({extra} more error{'s' if extra > 1 else ''})"
        code = "missing_required_parameter" if missing else "invalid_value"
        raise APIError(400, msg, param=param, code=code) from e


def _is_union_tag(part: str) -> bool:
    # pydantic names the union branch it tried (e.g. "str", "list[str]", "function-after[...]").
    return "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}


# --- SSE framing -----------------------------------------------------------------------------

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON payload, as OpenAI streams it."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


# --- response payloads -----------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ResponseShape:
    """The OpenAI payloads of one request: chat.completion(.chunk) or text_completion."""

    def __init__(self, request_id: str, model: str, chat: bool):
        self.chat = chat
        self.base = {"id": request_id, "created": int(time.time()), "model": model}
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"

    def _choice(self, text: str, finish_reason: str | None, whole: bool = False) -> dict[str, Any]:
        if not self.chat:
            body: dict[str, Any] = {"text": text}
        elif whole:
            body = {"message": {"role": "assistant", "content": text}}
        else:
            body = {"delta": {"content": text} if text else {}}
        return {"index": 0, **body, "logprobs": None, "finish_reason": finish_reason}

    def opening(self) -> list[dict[str, Any]]:
        if not self.chat:
            return []
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [{**self.base, "object": self.chunk_object, "choices": [choice]}]

    def delta(self, d: GenerationDelta, include_usage: bool) -> list[dict[str, Any]]:
        if not d.text and d.finish_reason is None:
            return []
        chunk = {**self.base, "object": self.chunk_object, "choices": [self._choice(d.text, d.finish_reason)]}
        if include_usage:
            chunk["usage"] = None
        return [chunk]

    def usage_chunk(self, usage: dict[str, int]) -> dict[str, Any]:
        return {**self.base, "object": self.chunk_object, "choices": [], "usage": usage}

    def full(self, text: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self.base, "object": obj, "choices": [self._choice(text, finish_reason, whole=True)], "usage": usage}
