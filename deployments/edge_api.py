"""The edge pool's OpenAI-compatible server around BatchedCPUEngine: vLLM 0.32's routes and response shapes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deployments.cpu_engine import BatchedCPUEngine, EngineRequest, GrammarError, RankedLogprob
from deployments.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    GenerationDelta,
    NamedToolChoice,
    TokenizeRequest,
    TokenLogprob,
    parse_json,
    sse_event,
    validate_request,
)

LOGPROB_FLOOR = -9999.0  # vLLM's (and OpenAI's) logprob of an impossible token: JSON has no -inf

T = TypeVar("T")
ToolMode = Literal["required", "named"]


class EdgeChatRequest(ChatCompletionRequest):
    """The router's chat body: the strict request model plus vLLM's ``return_token_ids`` (the router injects it)."""

    return_token_ids: bool = False


class EdgeCompletionRequest(CompletionRequest):
    """The router's completions body, plus ``return_token_ids``."""

    return_token_ids: bool = False


def build_edge_app(engine: BatchedCPUEngine, tokenizer: Any, model_name: str, max_model_len: int) -> FastAPI:
    """An OpenAI-compatible app serving one model from ``engine`` (the replica's HTTP server runs it)."""
    api = EdgeAPI(engine, tokenizer, model_name, max_model_len)
    app = FastAPI(title="elo edge replica", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(APIError, _api_error)  # type: ignore[arg-type]
    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    app.add_api_route("/tokenize", api.tokenize, methods=["POST"])
    app.add_api_route("/detokenize", api.detokenize, methods=["POST"])
    app.add_api_route("/v1/models", api.models, methods=["GET"])
    app.add_api_route("/health", api.health, methods=["GET"])
    if engine.metrics is not None:  # vLLM's path and names (deployments/engine_metrics.py)
        registry = engine.metrics.registry
        app.add_api_route("/metrics", lambda: Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST),
                          methods=["GET"])
    app.state.edge = api
    return app


async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# --- per-choice results ----------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """A validated request ready for the engine: one EngineRequest per choice (prompt-major, n per prompt)."""

    reqs: list[EngineRequest]
    prompts: list[list[int]]
    n: int
    tool_mode: ToolMode | None = None
    tool_name: str | None = None

    def prompt_of(self, index: int) -> list[int]:
        return self.prompts[index // self.n]


@dataclass
class _Output:
    """One choice's whole output, gathered from its deltas."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: tuple[RankedLogprob | None, ...] | None = None

    def add(self, d: GenerationDelta) -> None:
        self.text += d.text
        self.token_ids += d.token_ids
        self.logprobs += d.logprobs
        self.finish_reason = d.finish_reason
        self.stop_reason = getattr(d, "stop_reason", None)
        if getattr(d, "prompt_logprobs", None) is not None:
            self.prompt_logprobs = d.prompt_logprobs  # type: ignore[attr-defined]


# --- the app ---------------------------------------------------------------------------------------------------


class EdgeAPI:
    """Request handlers: validate (4xx in OpenAI's shape), run on the engine, answer as vLLM would."""

    def __init__(self, engine: BatchedCPUEngine, tokenizer: Any, model_name: str, max_model_len: int):
        self.engine = engine
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.vocab_size = engine.vocab_size

    # --- routes ---

    async def chat(self, request: Request) -> Response:
        body: EdgeChatRequest = validate_request(await _json(request), EdgeChatRequest)
        self._check_model(body.model)
        schema, mode, name = _chat_constraint(body)
        if schema is not None:
            await self._prepare(schema, "tools" if mode else "response_format")
        prompt = self._render(body.messages, body.tools)
        budget = self._budget(len(prompt), body.requested_max_tokens(),
                              "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens",
                              "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        plan = _Plan(self._engine_requests(body, [prompt], [budget], logprobs, schema), [prompt], body.n, mode, name)
        if body.stream:
            return _EventStream(self._chat_stream(body, plan))
        outs = await _until_disconnect(request, self._collect(plan))
        return JSONResponse(self._chat_response(body, plan, outs))

    async def completions(self, request: Request) -> Response:
        body: EdgeCompletionRequest = validate_request(await _json(request), EdgeCompletionRequest)
        self._check_model(body.model)
        prompts = [self._prompt_ids(p) for p in body.prompts()]
        budgets = [self._budget(len(p), body.max_tokens, "max_tokens", "prompt") for p in prompts]
        plan = _Plan(self._engine_requests(body, prompts, budgets, body.logprobs, None), prompts, body.n)
        if body.stream:
            return _EventStream(self._completion_stream(body, plan))
        outs = await _until_disconnect(request, self._collect(plan))
        return JSONResponse(self._completion_response(body, plan, outs))

    async def tokenize(self, request: Request) -> Response:
        body: TokenizeRequest = validate_request(await _json(request), TokenizeRequest)
        if body.model is not None:
            self._check_model(body.model)
        if body.messages is not None:
            # vLLM's chat tokenize adds no special tokens unless asked (the template has them).
            special = body.add_special_tokens if "add_special_tokens" in body.model_fields_set else False
            text = self._template(body.messages, None, body.add_generation_prompt)
            ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        else:
            ids = self.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens)["input_ids"]
        return JSONResponse({"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids,
                             "token_strs": self.tokenizer.convert_ids_to_tokens(ids)})

    async def detokenize(self, request: Request) -> Response:
        body: DetokenizeRequest = validate_request(await _json(request), DetokenizeRequest)
        if body.model is not None:
            self._check_model(body.model)
        self._check_vocab(body.tokens, "tokens")
        return JSONResponse({"prompt": self.tokenizer.decode(body.tokens)})

    async def models(self) -> Response:
        now = int(time.time())
        permission = {"id": f"modelperm-{_hex()}", "object": "model_permission", "created": now,
                      "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                      "organization": "*", "group": None, "is_blocking": False}
        card = {"id": self.model_name, "object": "model", "created": now, "owned_by": "elo", "root": self.model_name,
                "parent": None, "max_model_len": self.max_model_len, "permission": [permission]}
        return JSONResponse({"object": "list", "data": [card]})

    async def health(self) -> Response:
        return Response(status_code=200)

    # --- validation ---

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")

    def _check_vocab(self, ids: list[int], param: str) -> None:
        bad = [i for i in ids if i >= self.vocab_size]
        if bad:
            raise APIError(400, f"Token id {bad[0]} in '{param}' is out of vocabulary (size {self.vocab_size}).",
                           param=param, code="invalid_value")

    def _budget(self, prompt_len: int, requested: int | None, param: str, prompt_param: str) -> int:
        """max_tokens for one prompt: as asked (refused beyond the context), else the context left."""
        left = self.max_model_len - prompt_len
        if left <= 0:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                           f"prompt has {prompt_len} tokens, which leaves no room for output. Please reduce the "
                           "length of the prompt.", param=prompt_param, code="context_length_exceeded")
        if requested is not None and requested > left:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                           f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} for "
                           "the completion). Please reduce the length of the prompt or the completion.",
                           param=param, code="context_length_exceeded")
        return left if requested is None else requested

    async def _prepare(self, schema: dict[str, Any], param: str) -> None:
        try:
            await self.engine.prepare_grammar(schema)
        except GrammarError as e:
            raise APIError(400, f"Failed to transform json schema into a grammar: {e}", param=param,
                           code="invalid_value") from e

    # --- prompts ---

    def _render(self, messages: list[ChatMessage], tools: list[Any] | None) -> list[int]:
        text = self._template(messages, tools, True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _template(self, messages: list[ChatMessage], tools: list[Any] | None, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                [_conversation_message(m) for m in messages], tools=[t.model_dump(exclude_none=True) for t in tools]
                if tools else None, add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception as e:  # no template, or the template refuses the conversation (jinja raise_exception)
            raise APIError(400, f"Cannot apply the chat template: {e}", param="messages", code="invalid_value") from e

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        self._check_vocab(prompt, "prompt")
        return prompt

    def _engine_requests(self, body: EdgeChatRequest | EdgeCompletionRequest, prompts: list[list[int]],
                         budgets: list[int], logprobs: int | None, schema: dict[str, Any] | None) -> list[EngineRequest]:
        bias = {int(k): v for k, v in (body.logit_bias or {}).items()}
        self._check_vocab(list(bias), "logit_bias")
        self._check_vocab(body.stop_token_ids or [], "stop_token_ids")
        if body.min_tokens > min(budgets):
            raise APIError(400, f"min_tokens ({body.min_tokens}) must not exceed max_tokens ({min(budgets)}).",
                           param="min_tokens", code="invalid_value")
        echo = isinstance(body, CompletionRequest) and body.echo and logprobs is not None
        rid = _hex()
        return [EngineRequest(
            request_id=f"{rid}-{p}-{j}", prompt_token_ids=prompt, max_tokens=budget, temperature=body.temperature,
            top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
            seed=None if body.seed is None else body.seed + j,  # vLLM: choice j of a seeded request gets seed + j
            stop=body.stop_list(), stop_token_ids=body.stop_token_ids or [], ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, repetition_penalty=body.repetition_penalty, logit_bias=bias,
            logprobs=logprobs, json_schema=schema, prompt_logprobs=logprobs if echo else None)
            for p, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)) for j in range(body.n)]

    # --- running ---

    async def _collect(self, plan: _Plan) -> list[_Output]:
        outs = [_Output() for _ in plan.reqs]
        async with contextlib.aclosing(self.engine.generate_many(plan.reqs)) as stream:
            async for i, d in stream:
                outs[i].add(d)
        return outs

    async def _chat_stream(self, body: EdgeChatRequest, plan: _Plan) -> AsyncIterator[bytes]:
        head = {"id": f"chatcmpl-{_hex()}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model_name}
        prompt = plan.prompts[0]
        tools = [_ToolStream(plan.tool_mode, plan.tool_name) if plan.tool_mode else None for _ in plan.reqs]
        counts = [0] * len(plan.reqs)
        continuous = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        started = False
        try:
            async with contextlib.aclosing(self.engine.generate_many(plan.reqs)) as stream:
                async for i, d in stream:
                    if not started:  # after the prefill, as vLLM: the role chunks mark the first token's time
                        for j in range(len(plan.reqs)):
                            yield sse_event(self._role_chunk(head, j, prompt, body, continuous))
                        started = True
                    counts[i] += len(d.token_ids)
                    chunk = self._chat_chunk(head, i, d, body, tools[i])
                    if chunk is not None:
                        if continuous:
                            chunk["usage"] = _usage(len(prompt), counts[i])
                        yield sse_event(chunk)
            if body.include_usage():
                yield sse_event({**head, "choices": [], "usage": _usage(len(prompt), sum(counts))})
        except Exception as e:  # after the 200: an SSE error event, as vLLM sends
            yield sse_event(_stream_error(e))
        yield SSE_DONE

    async def _completion_stream(self, body: EdgeCompletionRequest, plan: _Plan) -> AsyncIterator[bytes]:
        head = {"id": f"cmpl-{_hex()}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name}
        counts = [0] * len(plan.reqs)
        offsets = [0] * len(plan.reqs)
        started = [False] * len(plan.reqs)
        continuous = bool(body.stream_options and body.stream_options.continuous_usage_stats)
        try:
            async with contextlib.aclosing(self.engine.generate_many(plan.reqs)) as stream:
                async for i, d in stream:
                    counts[i] += len(d.token_ids)
                    chunk = self._completion_chunk(head, i, d, body, plan, offsets, not started[i])
                    started[i] = True
                    if continuous:
                        chunk["usage"] = _usage(len(plan.prompt_of(i)), counts[i])
                    yield sse_event(chunk)
            if body.include_usage():
                yield sse_event({**head, "choices": [], "usage": _usage(sum(map(len, plan.prompts)), sum(counts))})
        except Exception as e:
            yield sse_event(_stream_error(e))
        yield SSE_DONE

    # --- chat shapes (vLLM's ChatCompletionResponse / ChatCompletionStreamResponse) ---

    def _chat_response(self, body: EdgeChatRequest, plan: _Plan, outs: list[_Output]) -> dict[str, Any]:
        choices = [self._chat_choice(i, out, body, plan) for i, out in enumerate(outs)]
        prompt = plan.prompts[0]
        return {"id": f"chatcmpl-{_hex()}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "service_tier": None, "system_fingerprint": None,
                "usage": _usage(len(prompt), sum(len(o.token_ids) for o in outs), full=True),
                "prompt_logprobs": None, "prompt_token_ids": prompt if body.return_token_ids else None,
                "prompt_text": None, "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}

    def _chat_choice(self, index: int, out: _Output, body: EdgeChatRequest, plan: _Plan) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": out.text, "refusal": None, "annotations": None,
                                   "audio": None, "function_call": None}
        finish = out.finish_reason
        if plan.tool_mode is not None:
            calls = _named_calls(plan.tool_name, out.text) if plan.tool_mode == "named" else _required_calls(out.text)
            message["content"] = ""
            if calls:
                message["tool_calls"] = calls
            if plan.tool_mode == "required" and finish == "stop":
                finish = "tool_calls"  # OpenAI: "tool_calls" for required, "stop" for a named function
        message["reasoning"] = None
        return {"index": index, "message": message,
                "logprobs": self._chat_logprobs(out.logprobs, body) if body.logprobs else None,
                "finish_reason": finish, "stop_reason": out.stop_reason,
                "token_ids": out.token_ids if body.return_token_ids else None, "routed_experts": None}

    def _role_chunk(self, head: dict[str, Any], index: int, prompt: list[int], body: EdgeChatRequest,
                    continuous: bool) -> dict[str, Any]:
        chunk = {**head, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}],
                 "prompt_token_ids": prompt if body.return_token_ids else None, "prompt_text": None}
        if continuous:
            chunk["usage"] = _usage(len(prompt), 0)
        return chunk

    def _chat_chunk(self, head: dict[str, Any], index: int, d: GenerationDelta, body: EdgeChatRequest,
                    tools: _ToolStream | None) -> dict[str, Any] | None:
        logprobs = self._chat_logprobs(list(d.logprobs), body) if body.logprobs else None
        delta = tools.delta(d.text) if tools is not None else {"content": d.text}
        if delta is None:
            if d.finish_reason is None and logprobs is None and not body.return_token_ids:
                return None  # nothing to tell yet (a tool call's name is still being written)
            delta = {}
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        if d.finish_reason is not None:
            finish = d.finish_reason
            if tools is not None and tools.mode == "required" and tools.announced and finish == "stop":
                finish = "tool_calls"
            choice.update(finish_reason=finish, stop_reason=getattr(d, "stop_reason", None))
        choice["token_ids"] = list(d.token_ids) if body.return_token_ids else None
        return {**head, "choices": [choice]}

    def _chat_logprobs(self, logprobs: list[TokenLogprob], body: EdgeChatRequest) -> dict[str, Any]:
        n = body.top_logprobs or 0
        return {"content": [{**_chat_logprob(lp.token, lp.logprob),
                             "top_logprobs": [_chat_logprob(t, v) for _, t, v in _vllm_candidates(lp)[:n]]}
                            for lp in logprobs]}

    # --- completions shapes (vLLM's CompletionResponse / CompletionStreamResponse) ---

    def _completion_response(self, body: EdgeCompletionRequest, plan: _Plan, outs: list[_Output]) -> dict[str, Any]:
        choices = [self._completion_choice(i, out, body, plan) for i, out in enumerate(outs)]
        return {"id": f"cmpl-{_hex()}", "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "service_tier": None, "system_fingerprint": None,
                "usage": _usage(sum(map(len, plan.prompts)), sum(len(o.token_ids) for o in outs), full=True),
                "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}

    def _completion_choice(self, index: int, out: _Output, body: EdgeCompletionRequest, plan: _Plan) -> dict[str, Any]:
        prompt = plan.prompt_of(index)
        entries: list[tuple[int, TokenLogprob | None]] = [(lp.token_id, lp) for lp in out.logprobs]
        text = out.text
        if body.echo:
            text = self._prompt_text(body, index, plan) + text
            entries = self._prompt_entries(prompt, out.prompt_logprobs) + entries
        return {"index": index, "text": text,
                "logprobs": self._completion_logprobs(entries, body.logprobs, 0) if body.logprobs is not None
                else None,
                "finish_reason": out.finish_reason, "stop_reason": out.stop_reason,
                "token_ids": out.token_ids if body.return_token_ids else None,
                "prompt_logprobs": _prompt_logprobs_field(out.prompt_logprobs),
                "prompt_token_ids": prompt if body.return_token_ids else None, "routed_experts": None}

    def _completion_chunk(self, head: dict[str, Any], index: int, d: GenerationDelta, body: EdgeCompletionRequest,
                          plan: _Plan, offsets: list[int], first: bool) -> dict[str, Any]:
        prompt = plan.prompt_of(index)
        text = d.text
        entries: list[tuple[int, TokenLogprob | None]] = [(lp.token_id, lp) for lp in d.logprobs]
        if first and body.echo:
            text = self._prompt_text(body, index, plan) + text
            entries = self._prompt_entries(prompt, getattr(d, "prompt_logprobs", None)) + entries
        logprobs = None
        if body.logprobs is not None:
            logprobs = self._completion_logprobs(entries, body.logprobs, offsets[index])
            if logprobs["tokens"]:
                offsets[index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": d.finish_reason,
                  "stop_reason": getattr(d, "stop_reason", None),
                  "prompt_token_ids": prompt if first and (body.echo or body.return_token_ids) else None,
                  "token_ids": list(d.token_ids) if body.return_token_ids else None}
        return {**head, "choices": [choice]}

    def _prompt_text(self, body: EdgeCompletionRequest, index: int, plan: _Plan) -> str:
        prompt = body.prompts()[index // plan.n]
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)

    def _prompt_entries(self, prompt: list[int], logprobs: tuple[RankedLogprob | None, ...] | None
                        ) -> list[tuple[int, TokenLogprob | None]]:
        return [(tok, logprobs[j] if logprobs else None) for j, tok in enumerate(prompt)]

    def _completion_logprobs(self, entries: list[tuple[int, TokenLogprob | None]], k: int, offset: int
                             ) -> dict[str, Any]:
        """vLLM's completions logprobs: the sampled token and its k likeliest alternatives per position (k + 1 at
        most), text offsets counted in token strings."""
        out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
        for token_id, lp in entries:
            token = lp.token if lp is not None else self.tokenizer.decode([token_id])
            out["text_offset"].append(offset)
            out["token_logprobs"].append(None if lp is None else _floor(lp.logprob))
            out["tokens"].append(token)
            out["top_logprobs"].append(None if lp is None else
                                       {t: _floor(v) for _, t, v in _vllm_candidates(lp)[: k + 1]})
            offset += len(token)
        return out


# --- structured output: response_format and forced tool calls -------------------------------------------------


def _chat_constraint(body: ChatCompletionRequest) -> tuple[dict[str, Any] | None, ToolMode | None, str | None]:
    """(JSON schema the output must match, tool mode, named function) as vLLM's JSON tool-call path builds them."""
    if body.tools and body.tool_choice in (None, "auto"):
        raise APIError(400, "tool_choice 'auto' (the default with tools) needs a tool-call parser, which this replica "
                       "does not have; use 'required', a named function or 'none'.", param="tool_choice",
                       code="unsupported_value")
    if body.tools and isinstance(body.tool_choice, NamedToolChoice):
        name = body.tool_choice.function.name
        tool = next(t for t in body.tools if t.function.name == name)
        return _params_schema(tool.function.parameters), "named", name
    if body.tools and body.tool_choice == "required":
        return _required_schema(body), "required", None
    fmt = body.response_format
    if fmt is not None and fmt.type == "json_object":
        return {"type": "object"}, None, None
    if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
        return fmt.json_schema.schema_, None, None
    return None, None, None


def _params_schema(params: dict[str, Any] | None) -> dict[str, Any]:
    return copy.deepcopy(params) if params else {"type": "object", "properties": {}}


def _required_schema(body: ChatCompletionRequest) -> dict[str, Any]:
    """An array of ``{"name": ..., "parameters": {...}}``, one item schema per tool (vLLM's ``tool_choice: required``);
    the tools' ``$defs`` hoisted to the top."""
    items, defs = [], {}
    for tool in body.tools or []:
        params = _params_schema(tool.function.parameters)
        for key, value in params.pop("$defs", {}).items():
            if defs.setdefault(key, value) != value:
                raise APIError(400, f"Tool definition '{key}' has multiple schemas, which is not supported.",
                               param="tools", code="invalid_value")
        items.append({"properties": {"name": {"type": "string", "enum": [tool.function.name]}, "parameters": params},
                      "required": ["name", "parameters"], "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
    if body.parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def _named_calls(name: str | None, text: str) -> list[dict[str, Any]]:
    if not text.strip():
        return []
    return [{"id": _tool_call_id(), "type": "function", "function": {"name": name, "arguments": text}}]


def _required_calls(text: str) -> list[dict[str, Any]]:
    """The calls of a complete JSON array; none when it does not parse (cut by max_tokens), as vLLM drops it."""
    try:
        calls = json.loads(text)
    except json.JSONDecodeError:
        return []
    if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
        return []
    return [{"id": _tool_call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("parameters"), ensure_ascii=False)}}
            for c in calls]


@dataclass
class _ToolStream:
    """One choice's forced tool call, streamed as vLLM streams it: tool_calls deltas of the arguments' text."""

    mode: ToolMode
    name: str | None
    text: str = ""
    announced: bool = False  # a call's id and name went out

    def delta(self, piece: str) -> dict[str, Any] | None:
        before, self.text = self.text, self.text + piece
        if self.mode == "named":
            call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
            if not self.announced:
                call = {"id": _tool_call_id(), "type": "function", "index": 0,
                        "function": {"name": self.name, "arguments": piece}}
            self.announced = True
            return {"tool_calls": [call]}
        calls = _required_deltas(before, self.text)
        self.announced = self.announced or bool(calls)
        return {"tool_calls": calls} if calls else None


@dataclass
class _CallSpan:
    """Where one element of a required-tool-call array sits in the text (offsets are stable as the text grows)."""

    name: str | None = None
    name_end: int | None = None
    args_start: int | None = None
    args_end: int | None = None

    @property
    def ready(self) -> bool:
        return self.name is not None and self.args_start is not None

    def ready_at(self, length: int) -> bool:
        return (self.ready and self.name_end is not None and self.name_end <= length
                and self.args_start is not None and self.args_start < length)


def _required_deltas(before: str, now: str) -> list[dict[str, Any]]:
    """New tool_calls deltas between two texts of the array: a call's first delta has its id, name and arguments
    so far; later ones only new argument text (vLLM's ``extract_required_tool_call_streaming``)."""
    calls: list[dict[str, Any]] = []
    for index, span in enumerate(_call_spans(now)):
        if not span.ready or span.args_start is None:
            break
        end = span.args_end if span.args_end is not None else len(now)
        if span.ready_at(len(before)):
            new = now[min(end, len(before)):end]
            if new:
                calls.append({"index": index, "function": {"name": None, "arguments": new}})
            continue
        calls.append({"id": _tool_call_id(), "type": "function", "index": index,
                      "function": {"name": span.name, "arguments": now[span.args_start:end]}})
    return calls


def _call_spans(text: str) -> list[_CallSpan]:
    """One pass over a (partial) JSON array of objects: each element's ``name`` and ``parameters`` value span."""
    spans: list[_CallSpan] = []
    depth, in_string, escaped, start = 0, False, False, 0
    key: str | None = None
    expect = "key"  # key | colon | value | string | container | scalar | after
    cur: _CallSpan | None = None

    def end_value(pos: int) -> None:
        nonlocal expect
        assert cur is not None
        if key == "parameters":
            cur.args_end = pos
        elif key == "name" and expect == "string":
            with contextlib.suppress(json.JSONDecodeError):
                cur.name, cur.name_end = json.loads(text[start:pos]), pos
        expect = "after"

    def start_value(pos: int, kind: str) -> None:
        nonlocal expect, start
        assert cur is not None
        start, expect = pos, kind
        if key == "parameters":
            cur.args_start = pos

    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 2 and cur is not None and expect == "key":
                    key, expect = text[start + 1 : i], "colon"
                elif depth == 2 and cur is not None and expect == "string":
                    end_value(i + 1)
        elif ch == '"':
            in_string = True
            if depth == 2 and cur is not None and expect == "value":
                start_value(i, "string")
            elif depth == 2 and cur is not None and expect == "key":
                start = i
        elif ch in "{[":
            if (depth == 0 and ch != "[") or (depth == 1 and ch != "{"):
                return spans
            if depth == 1:
                cur, key, expect = _CallSpan(), None, "key"
                spans.append(cur)
            elif depth == 2 and cur is not None and expect == "value":
                start_value(i, "container")
            depth += 1
        elif ch in "}]":
            if depth == 2 and cur is not None and expect == "scalar":
                end_value(i)
            depth -= 1
            if depth == 2 and cur is not None and expect == "container":
                end_value(i + 1)
            elif depth == 1:
                cur = None
            elif depth <= 0:
                return spans
        elif depth == 2 and cur is not None:
            if ch == ":" and expect == "colon":
                expect = "value"
            elif ch == ",":
                if expect == "scalar":
                    end_value(i)
                key, expect = None, "key"
            elif ch.isspace():
                if expect == "scalar":
                    end_value(i)
            elif expect == "value":
                start_value(i, "scalar")
    return spans


# --- small shapes and helpers -----------------------------------------------------------------------------------


def _vllm_candidates(lp: TokenLogprob) -> list[tuple[int, str, float]]:
    """vLLM's per-token candidates: the sampled token first, then the likeliest others (no duplicates)."""
    return [(lp.token_id, lp.token, lp.logprob), *(t for t in lp.top if t[0] != lp.token_id)]


def _chat_logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": _floor(logprob), "bytes": list(token.encode("utf-8", errors="replace"))}


def _prompt_logprobs_field(logprobs: tuple[RankedLogprob | None, ...] | None) -> list[Any] | None:
    """vLLM's ``prompt_logprobs``: per prompt token, null for the first, else {token id: {logprob, rank, token}}."""
    if logprobs is None:
        return None
    out: list[Any] = []
    for lp in logprobs:
        if lp is None:
            out.append(None)
            continue
        entry = {str(lp.token_id): {"logprob": _floor(lp.logprob), "rank": lp.rank, "decoded_token": lp.token}}
        for rank, (tid, token, value) in enumerate(lp.top, start=1):
            entry.setdefault(str(tid), {"logprob": _floor(value), "rank": rank, "decoded_token": token})
        out.append(entry)
    return out


def _usage(prompt: int, completion: int, full: bool = False) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                             "completion_tokens": completion}
    if full:  # non-streamed responses carry the detail fields too (null)
        usage.update(prompt_tokens_details=None, completion_tokens_details=None)
    return usage


def _conversation_message(m: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it: text parts joined by newlines, tool call arguments as objects."""
    content = m.content if isinstance(m.content, str) else "\n".join(p.text for p in m.content or [])
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": c.type, "function": {"name": c.function.name,
                                                                      "arguments": _maybe_json(c.function.arguments)}}
                             for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _stream_error(e: Exception) -> dict[str, Any]:
    status = 400 if isinstance(e, ValueError) else 500
    kind = "invalid_request_error" if status == 400 else "internal_error"
    return APIError(status, str(e) or type(e).__name__, type=kind).body()


def _floor(logprob: float) -> float:
    return max(logprob, LOGPROB_FLOOR)


def _hex() -> str:
    return secrets.token_hex(8)


def _tool_call_id() -> str:
    return f"chatcmpl-tool-{_hex()}"


async def _json(request: Request) -> dict[str, Any]:
    return parse_json(await request.body(), request.headers.get("content-type"))


class _ClientGone(Exception):
    pass


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run a non-streamed request's work, cancelling it (and so its engine sequences) if the client leaves."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise APIError(499, "Client disconnected.", code="client_disconnected")
        return task.result()
    finally:
        for t in (task, watch):
            t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _EventStream(StreamingResponse):
    """Server-sent events that stop as soon as the client disconnects (whatever the server's ASGI version) and
    always close their source, which cancels the engine's sequences."""

    def __init__(self, content: AsyncIterator[bytes]):
        super().__init__(content, media_type="text/event-stream")
        self._source = content

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (streaming, listening):
                t.cancel()
            results = await asyncio.gather(streaming, listening, return_exceptions=True)
            await self._source.aclose()  # type: ignore[attr-defined]
        if isinstance(results[0], Exception) and not isinstance(results[0], OSError):
            raise results[0]
