"""Continuing a stream whose replica died after it began: what the client already has, the request that continues
it on another replica (a completion of the prompt plus the tokens streamed, as token ids), and that request's events
reshaped into the original stream's. Pure: no I/O.

The router asks the replicas for the token ids of what they stream (vLLM's ``return_token_ids``) and strips them
from what the client gets (:func:`strip_token_ids`): the streamed text alone would lose tokens that decode to
nothing (an EOS token under ``ignore_eos``), and re-tokenizing it need not give the tokens the model chose."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from deployments.protocol import SSE_DONE, sse_event

# Request fields a continuation carries over unchanged: sampling, stops, and what the client identified itself by.
_CARRIED = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
            "logit_bias", "seed", "stop", "stop_token_ids", "ignore_eos", "user")


def resumable(data: dict[str, Any]) -> str | None:
    """Why a stream of this request cannot be continued elsewhere (None: it can). A continuation is a plain
    completion of one sequence: several choices or prompts, tool calls, structured output and logprobs do not carry
    over."""
    if int(data.get("n") or 1) > 1:
        return "n > 1"
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and not isinstance(prompt[0], int):
        return "several prompts"
    for name in ("tools", "response_format", "logprobs", "echo"):
        if data.get(name) not in (None, False, [], {"type": "text"}):
            return name
    return None


_IDS_AFTER = re.compile(rb',"(?:prompt_)?token_ids":(?:\[[0-9,]*\]|null)')
_IDS_BEFORE = re.compile(rb'"(?:prompt_)?token_ids":(?:\[[0-9,]*\]|null),')


def strip_token_ids(events: bytes) -> bytes:
    """The events without the ``token_ids`` and ``prompt_token_ids`` fields the router asked for (bytes-level: no
    JSON is parsed on the way through)."""
    if b"token_ids" not in events:
        return events
    return _IDS_BEFORE.sub(b"", _IDS_AFTER.sub(b"", events))


@dataclass(frozen=True)
class Streamed:
    """What the client received of a stream: the generated text, its token ids and the prompt's where every chunk
    carried them (None otherwise), the first event's payload (its id, created and model are the stream's), and
    whether the generation had already finished."""

    text: str
    template: dict[str, Any] | None
    finished: bool
    token_ids: list[int] | None = None
    prompt_ids: list[int] | None = None

    @classmethod
    def of(cls, events: Sequence[bytes], chat: bool) -> Streamed:
        parts: list[str] = []
        ids: list[int] | None = []
        template, finished, prompt_ids = None, False, None
        for payload in _payloads(b"".join(events)):
            prompt_ids = prompt_ids or payload.get("prompt_token_ids")
            for choice in payload.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                parts.append(piece or "")
                finished = finished or choice.get("finish_reason") is not None
                prompt_ids = prompt_ids or choice.get("prompt_token_ids")
                if ids is not None:
                    ids = ids + list(choice["token_ids"]) if isinstance(choice.get("token_ids"), list) else None
            template = template or payload
        return cls("".join(parts), template, finished, ids, prompt_ids)


def continuation(data: dict[str, Any], prompt_ids: Sequence[int], streamed_ids: Sequence[int],
                 max_tokens: int) -> dict[str, Any]:
    """The completion request that goes on from where the stream stopped: the prompt's token ids and the streamed
    text's, the original sampling, and the tokens still allowed."""
    body: dict[str, Any] = {k: data[k] for k in _CARRIED if data.get(k) is not None}
    body.update(model=data["model"], prompt=[*prompt_ids, *streamed_ids], stream=True, return_token_ids=True,
                stream_options={"include_usage": True}, max_tokens=max(1, max_tokens - len(streamed_ids)))
    if data.get("min_tokens"):
        body["min_tokens"] = max(0, int(data["min_tokens"]) - len(streamed_ids))
    return body


class Reshape:
    """The continuation's SSE events as the original stream's: its id, created and model; a chat stream's chunks
    carry the text as ``delta.content``; the usage counts the whole prompt and every generated token."""

    def __init__(self, streamed: Streamed, chat: bool, prompt_tokens: int, streamed_tokens: int):
        self.template = streamed.template or {}
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.streamed_tokens = streamed_tokens
        self.buf = b""

    def feed(self, chunk: bytes, on_usage: Callable[[dict[str, Any]], None]) -> bytes:
        """Whole reshaped events of what arrived so far (the rest waits for more); the usage chunk goes to
        ``on_usage`` and is not emitted (the router adds it back when the client asked for it)."""
        self.buf += chunk
        cut = self.buf.rfind(b"\n\n")
        if cut < 0:
            return b""
        events, self.buf = self.buf[: cut + 2], self.buf[cut + 2:]
        if SSE_DONE in events:
            events = events.replace(SSE_DONE, b"")
        out = []
        for payload in _payloads(events):
            if payload.get("usage") and not payload.get("choices"):
                usage = dict(payload["usage"])
                usage["completion_tokens"] = int(usage.get("completion_tokens", 0)) + self.streamed_tokens
                usage["prompt_tokens"] = self.prompt_tokens
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                on_usage(usage)
                continue
            if "error" in payload:
                out.append(sse_event(payload))
                continue
            out.append(sse_event(self._chunk(payload.get("choices") or [])))
        return b"".join(out)

    def usage_event(self, usage: dict[str, Any]) -> bytes:
        return sse_event({**self._base(), "choices": [], "usage": usage})

    def _base(self) -> dict[str, Any]:
        return {k: v for k, v in self.template.items() if k not in ("choices", "usage", "prompt_token_ids")}

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        # token_ids stay (a later resume needs them); the router strips them from what the client gets
        if self.chat:
            choices = [{"index": 0, "delta": {"content": c.get("text") or ""}, "logprobs": None,
                        "finish_reason": c.get("finish_reason"), "token_ids": c.get("token_ids")} for c in choices]
        else:
            choices = [{k: v for k, v in c.items() if k != "prompt_token_ids"} | {"index": 0} for c in choices]
        return {**self._base(), "choices": choices}


def _payloads(events: bytes) -> list[dict[str, Any]]:
    out = []
    for line in events.split(b"\n"):
        if not line.startswith(b"data: ") or line == SSE_DONE.strip():
            continue
        try:
            payload = json.loads(line[6:])
        except ValueError:
            continue
        if isinstance(payload, dict):
            out.append(payload)
    return out
