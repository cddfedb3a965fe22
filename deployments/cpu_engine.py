"""Batched, streaming text generation with transformers on CPU: the edge pool's engine."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from deployments.protocol import GenerationDelta, GenerationRequest

log = logging.getLogger(__name__)


def load_causal_lm(model_path: str, dtype: str = "float32", quantization: str = "none") -> tuple[Any, Any]:
    """Load a model and tokenizer with transformers' own loaders; optionally int8-quantize Linear layers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.eval()
    if quantization == "int8":
        # Dynamic int8 quantization of the Linear layers: weights int8, activations quantized on the fly.
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model, tokenizer


@dataclass
class _Sequence:
    req: GenerationRequest
    out: asyncio.Queue[GenerationDelta | BaseException] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None


class BatchedCPUEngine:
    """Decodes concurrent requests together, one forward pass per step for the whole batch.

    Requests that arrive while a batch is decoding wait for the next batch ("waves"); rows that
    finish leave the batch at once, so a long request does not make short ones pay for it.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, max_model_len: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len or int(getattr(model.config, "max_position_embeddings", 2048))
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self._pending: deque[_Sequence] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.running = 0
        self.steps = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        seq = _Sequence(req)
        if req.seed is not None:
            seq.generator = torch.Generator().manual_seed(req.seed)
        self._pending.append(seq)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        try:
            while True:
                item = await seq.out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            seq.cancelled = True  # the batch loop drops the row at its next step

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                batch: list[_Sequence] = []
                while self._pending and len(batch) < self.max_batch_size:
                    seq = self._pending.popleft()
                    if not seq.cancelled:
                        batch.append(seq)
                if not batch:
                    continue
                try:
                    await self._run_wave(batch)
                except Exception as e:  # a failed forward pass fails its batch, not the replica
                    log.exception("batch of %d failed", len(batch))
                    for seq in batch:
                        seq.out.put_nowait(e)
                finally:
                    self.running = 0

    async def _run_wave(self, batch: list[_Sequence]) -> None:
        self.running = len(batch)
        logits, cache, mask, pos = await asyncio.to_thread(self._prefill, [s.req.prompt_token_ids for s in batch])
        while batch:
            tokens = self._sample(logits, batch)
            keep: list[int] = []
            for row, (seq, tok) in enumerate(zip(batch, tokens, strict=False)):
                if not seq.cancelled and not self._advance(seq, tok):
                    keep.append(row)
            if len(keep) < len(batch):
                batch = [batch[i] for i in keep]
                if not batch:
                    break
                idx = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(idx)
                mask, pos, tokens = mask[idx], pos[idx], [tokens[i] for i in keep]
            self.running = len(batch)
            logits, mask, pos = await asyncio.to_thread(self._decode, tokens, cache, mask, pos)
            self.steps += 1

    @torch.inference_mode()
    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last token is at the end
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        return out.logits[:, -1, :].float(), out.past_key_values, mask, pos[:, -1:]

    @torch.inference_mode()
    def _decode(
        self, tokens: list[int], cache: Any, mask: torch.Tensor, pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1)
        mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=torch.long)], dim=1)
        pos = pos + 1
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :].float(), mask, pos

    def _sample(self, logits: torch.Tensor, batch: list[_Sequence]) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(batch):
            r = seq.req
            if r.temperature <= 0:
                continue
            probs = torch.softmax(logits[row] / r.temperature, dim=-1)
            if r.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > r.top_p  # keep the smallest prefix reaching top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tokens[row] = int(torch.multinomial(probs, 1, generator=seq.generator).item())
        return tokens

    def _advance(self, seq: _Sequence, token: int) -> bool:
        """Add a token to a sequence and stream the new text; True when the sequence is finished."""
        r = seq.req
        seq.generated.append(token)
        n = len(seq.generated)
        finish: str | None = None
        if token in self.eos_ids and not r.ignore_eos:
            finish = "stop"
        elif n >= r.max_tokens or len(r.prompt_token_ids) + n >= self.max_model_len:
            finish = "length"
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        if r.stop:
            hits = [i for i in (text.find(s, max(0, seq.emitted_chars - len(s))) for s in r.stop) if i >= 0]
            if hits:
                text, finish = text[: min(hits)], "stop"
        if finish is None:
            # Hold back a partial UTF-8 character, and text that may be the start of a stop string.
            hold = max((len(s) - 1 for s in r.stop), default=0)
            end = len(text) - hold
            while end > seq.emitted_chars and text[end - 1] == "\ufffd":
                end -= 1
        else:
            end = len(text)
        delta = text[seq.emitted_chars : max(end, seq.emitted_chars)]
        seq.emitted_chars = max(end, seq.emitted_chars)
        if delta or finish is not None:
            seq.out.put_nowait(GenerationDelta(delta, n, finish))  # type: ignore[arg-type]
        return finish is not None
