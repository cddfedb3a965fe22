"""Batched, streaming text generation with transformers on CPU: the edge pool's engine."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from deployments.engine_metrics import EngineMetrics
from deployments.protocol import GenerationDelta, GenerationRequest, TokenLogprob

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


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


class EngineRequest(GenerationRequest):
    """A GenerationRequest plus what only the edge app asks for: the prompt tokens' logprobs (completions' echo)."""

    prompt_logprobs: int | None = None  # top candidates per prompt token; None: none


class RankedLogprob(TokenLogprob):
    """A prompt token's logprob with its rank among all tokens (1: the likeliest), as vLLM's prompt_logprobs."""

    rank: int


class EngineDelta(GenerationDelta):
    """A GenerationDelta with vLLM's ``stop_reason`` (the stop token id or stop string that ended the sequence;
    None for EOS and length) and, on a sequence's first delta when asked, its prompt's logprobs."""

    stop_reason: int | str | None = None
    prompt_logprobs: tuple[RankedLogprob | None, ...] | None = None


class GrammarError(ValueError):
    """A JSON schema that cannot be turned into a grammar."""


@dataclass
class _Sequence:
    req: GenerationRequest
    index: int
    out: asyncio.Queue[tuple[int, GenerationDelta | BaseException]]
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None
    shaped: bool = False  # any logits processing at all (the plain path skips every step below)
    counts: torch.Tensor | None = None  # output token counts (presence/frequency penalties)
    seen: torch.Tensor | None = None  # prompt or output tokens (repetition penalty)
    bias_ids: torch.Tensor | None = None
    bias_values: torch.Tensor | None = None
    banned: torch.Tensor | None = None  # EOS and stop token ids, until min_tokens
    matcher: Any = None  # xgrammar.GrammarMatcher of a structured output
    prompt_logprobs: tuple[RankedLogprob | None, ...] | None = None
    arrived_s: float = 0.0  # on the metrics' clock
    last_token_s: float | None = None

    def put(self, item: GenerationDelta | BaseException) -> None:
        self.out.put_nowait((self.index, item))


class BatchedCPUEngine:
    """Decodes concurrent requests together, one forward pass per step for the whole batch.

    Requests that arrive while a batch is decoding wait for the next batch ("waves"); rows that
    finish leave the batch at once, so a long request does not make short ones pay for it. Each
    row has its own sampling settings (penalties, logit bias, min_tokens, a JSON grammar, top-k/p,
    min-p, seed) and logprobs; rows without any pay nothing for them.
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, max_model_len: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len or int(getattr(model.config, "max_position_embeddings", 2048))
        self.vocab_size = int(getattr(model.config, "vocab_size", len(tokenizer)))
        gen_cfg = getattr(model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self._keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._pending: deque[_Sequence] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._token_texts: dict[int, str] = {}
        self._grammars: dict[str, Any] = {}
        self._compiler: Any = None
        self._compiler_lock = threading.Lock()
        self.running = 0
        self.steps = 0
        self.metrics: EngineMetrics | None = None  # vLLM-named metrics, when the replica exports them

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        async for _, delta in self.generate_many([req]):
            yield delta

    async def generate_many(self, reqs: Sequence[GenerationRequest]) -> AsyncIterator[tuple[int, GenerationDelta]]:
        """Decode several sequences in the same batch (a request's n choices, or its prompts): ``(index, delta)``
        as they come. Closing the iterator cancels every sequence still running."""
        for schema in {json.dumps(r.json_schema, sort_keys=True) for r in reqs if r.json_schema is not None}:
            await self.prepare_grammar(json.loads(schema))  # before queueing: the sequences go in one batch
        out: asyncio.Queue[tuple[int, GenerationDelta | BaseException]] = asyncio.Queue()
        seqs = [self._sequence(r, i, out) for i, r in enumerate(reqs)]
        self._pending.extend(seqs)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        left = len(seqs)
        try:
            while left:
                index, item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                yield index, item
                if item.finish_reason is not None:
                    left -= 1
        finally:
            for seq in seqs:
                seq.cancelled = True  # the batch loop drops the row at its next step

    # --- structured output (xgrammar, the grammar backend vLLM uses) ---------------------------------------------

    async def prepare_grammar(self, schema: dict[str, Any]) -> None:
        """Compile (and cache) the grammar of a JSON schema; GrammarError if it has none."""
        if json.dumps(schema, sort_keys=True) not in self._grammars:
            await asyncio.to_thread(self._grammar, schema)

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        compiled = self._grammars.get(key)
        if compiled is None:
            compiler = self._grammar_compiler()
            try:
                # No free whitespace: small models otherwise fill every place JSON allows it (vLLM's
                # disable_any_whitespace does the same).
                compiled = compiler.compile_json_schema(key, any_whitespace=False, separators=(",", ":"))
            except RuntimeError as e:
                raise GrammarError(re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", str(e)).strip()) from e
            if len(self._grammars) >= 256:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[key] = compiled
        return compiled

    def _grammar_compiler(self) -> Any:
        with self._compiler_lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1)
            return self._compiler

    # --- per-sequence state ---------------------------------------------------------------------------------

    def _sequence(self, req: GenerationRequest, index: int, out: asyncio.Queue[Any]) -> _Sequence:
        self._check_ids(req)
        seq = _Sequence(req, index, out)
        if self.metrics is not None:
            seq.arrived_s = self.metrics.clock()
        if req.seed is not None:
            seq.generator = torch.Generator().manual_seed(req.seed)
        if req.presence_penalty or req.frequency_penalty or req.repetition_penalty not in (None, 1.0):
            seq.counts = torch.zeros(self.vocab_size)
            seq.seen = torch.zeros(self.vocab_size, dtype=torch.bool)
            seq.seen[torch.tensor(req.prompt_token_ids, dtype=torch.long)] = True
        if req.logit_bias:
            seq.bias_ids = torch.tensor(list(req.logit_bias), dtype=torch.long)
            seq.bias_values = torch.tensor(list(req.logit_bias.values()), dtype=torch.float32)
        if req.min_tokens:
            stops = set(req.stop_token_ids) | (set() if req.ignore_eos else self.eos_ids)
            seq.banned = torch.tensor(sorted(stops), dtype=torch.long)
        if req.json_schema is not None:
            import xgrammar as xgr

            seq.matcher = xgr.GrammarMatcher(self._grammar(req.json_schema))
        seq.shaped = any(x is not None for x in (seq.counts, seq.bias_ids, seq.banned, seq.matcher))
        return seq

    def _check_ids(self, req: GenerationRequest) -> None:
        for name, ids in (("prompt_token_ids", req.prompt_token_ids), ("logit_bias", req.logit_bias),
                          ("stop_token_ids", req.stop_token_ids)):
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(f"{name}: token id {bad[0]} is out of vocabulary (size {self.vocab_size})")

    # --- the batch loop -------------------------------------------------------------------------------------

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
                        seq.put(e)
                finally:
                    self.running = 0

    async def _run_wave(self, batch: list[_Sequence]) -> None:
        self.running = len(batch)
        if self.metrics is not None:
            for seq in batch:
                self.metrics.scheduled(seq.arrived_s, len(seq.req.prompt_token_ids))
        logits, cache, mask, pos = await asyncio.to_thread(self._prefill, batch)
        while batch:
            tokens, logprobs = self._sample(logits, batch)
            keep: list[int] = []
            for row, (seq, tok) in enumerate(zip(batch, tokens, strict=False)):
                if not seq.cancelled and not self._advance(seq, tok, logprobs[row] if logprobs else None):
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
    def _prefill(self, batch: list[_Sequence]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        prompts = [s.req.prompt_token_ids for s in batch]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last token is at the end
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        want_prompt = any(getattr(s.req, "prompt_logprobs", None) is not None for s in batch)
        extra = {"logits_to_keep": 1} if self._keep_last_logits and not want_prompt else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **extra)
        if want_prompt:
            for i, seq in enumerate(batch):
                if getattr(seq.req, "prompt_logprobs", None) is not None:
                    seq.prompt_logprobs = self._prompt_logprobs(out.logits[i, width - len(prompts[i]) :], seq.req)
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

    # --- sampling -------------------------------------------------------------------------------------------

    @torch.inference_mode()  # the logits are inference tensors: shaping them in place needs the same mode
    def _sample(self, logits: torch.Tensor, batch: list[_Sequence]) -> tuple[list[int], list[TokenLogprob | None]]:
        shaped = [row for row, seq in enumerate(batch) if seq.shaped]
        if shaped:
            self._shape(logits, batch, shaped)
        tokens = logits.argmax(dim=-1).tolist()
        for row, seq in enumerate(batch):
            if seq.req.temperature > 0:
                tokens[row] = self._draw(logits[row], seq)
        if any(seq.req.logprobs is not None for seq in batch):
            return tokens, self._logprobs(logits, batch, tokens)
        return tokens, []

    def _shape(self, logits: torch.Tensor, batch: list[_Sequence], rows: list[int]) -> None:
        """Logits processing in place, for the rows that have any: penalties, logit bias, min_tokens, grammar."""
        penalized = [r for r in rows if batch[r].counts is not None]
        if penalized:
            self._penalize(logits, [batch[r] for r in penalized], torch.tensor(penalized, dtype=torch.long))
        for r in rows:
            seq = batch[r]
            if seq.bias_ids is not None:
                logits[r].index_add_(0, seq.bias_ids, seq.bias_values)
            if seq.banned is not None and len(seq.generated) < seq.req.min_tokens:
                logits[r, seq.banned] = NEG_INF
        constrained = [r for r in rows if batch[r].matcher is not None and not batch[r].matcher.is_terminated()]
        if constrained:
            import xgrammar as xgr

            bitmask = xgr.allocate_token_bitmask(len(batch), logits.shape[-1])
            for r in constrained:
                batch[r].matcher.fill_next_token_bitmask(bitmask, r)
            xgr.apply_token_bitmask_inplace(logits, bitmask, indices=constrained)
            for r in constrained:
                if batch[r].banned is not None and torch.isneginf(logits[r]).all():
                    # The grammar allows only the end, min_tokens forbids it: the grammar wins.
                    logits[r, sorted(self.eos_ids)] = 0.0

    @staticmethod
    def _penalize(logits: torch.Tensor, seqs: list[_Sequence], idx: torch.Tensor) -> None:
        """vLLM's penalties, vectorised over the rows that have them: repetition over prompt and output tokens,
        presence and frequency over output tokens."""
        x = logits[idx]
        counts = torch.stack([s.counts for s in seqs])  # type: ignore[misc]
        seen = torch.stack([s.seen for s in seqs])  # type: ignore[misc]
        rep = torch.tensor([s.req.repetition_penalty or 1.0 for s in seqs]).unsqueeze(1)
        freq = torch.tensor([s.req.frequency_penalty for s in seqs]).unsqueeze(1)
        presence = torch.tensor([s.req.presence_penalty for s in seqs]).unsqueeze(1)
        x = torch.where(seen, torch.where(x > 0, x / rep, x * rep), x)
        x = x - freq * counts - presence * (counts > 0)
        logits[idx] = x

    @staticmethod
    def _draw(logits: torch.Tensor, seq: _Sequence) -> int:
        r = seq.req
        x = logits / r.temperature
        if r.top_k is not None and 0 < r.top_k < x.numel():
            x = x.masked_fill(x < x.topk(r.top_k).values[-1], NEG_INF)
        probs = torch.softmax(x, dim=-1)
        if r.min_p:
            probs = probs.masked_fill(probs < r.min_p * probs.max(), 0.0)
        if r.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > r.top_p  # keep the smallest prefix reaching top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=seq.generator).item())

    def _logprobs(self, logits: torch.Tensor, batch: list[_Sequence], tokens: list[int]) -> list[TokenLogprob | None]:
        """Log-softmax of the processed logits (before temperature): the sampled token and the likeliest ones."""
        rows = [r for r, seq in enumerate(batch) if seq.req.logprobs is not None]
        lp = torch.log_softmax(logits[rows], dim=-1)
        picked = lp[torch.arange(len(rows)), torch.tensor([tokens[r] for r in rows])].tolist()
        k = max(batch[r].req.logprobs or 0 for r in rows)
        top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        out: list[TokenLogprob | None] = [None] * len(batch)
        for j, r in enumerate(rows):
            n = batch[r].req.logprobs or 0
            top = tuple((i, self.token_text(i), v) for i, v in zip(top_ids[j, :n].tolist(), top_lp[j, :n].tolist(),
                                                                  strict=True))
            out[r] = TokenLogprob(token_id=tokens[r], token=self.token_text(tokens[r]), logprob=picked[j], top=top)
        return out

    def _prompt_logprobs(self, logits: torch.Tensor, req: GenerationRequest) -> tuple[RankedLogprob | None, ...]:
        """Each prompt token's logprob given the tokens before it (the first has none), with the top candidates."""
        ids = torch.tensor(req.prompt_token_ids[1:], dtype=torch.long)
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        picked = lp.gather(1, ids.unsqueeze(1)).squeeze(1)
        ranks = ((lp > picked.unsqueeze(1)).sum(dim=1) + 1).tolist()
        k = getattr(req, "prompt_logprobs", 0) or 0
        top_lp, top_ids = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
        out: list[RankedLogprob | None] = [None]
        for j, (tok, value, rank) in enumerate(zip(ids.tolist(), picked.tolist(), ranks, strict=True)):
            top = tuple((i, self.token_text(i), v) for i, v in zip(top_ids[j].tolist(), top_lp[j].tolist(),
                                                                  strict=True))
            out.append(RankedLogprob(token_id=tok, token=self.token_text(tok), logprob=value, top=top, rank=rank))
        return tuple(out)

    def token_text(self, token_id: int) -> str:
        """One token decoded on its own (special tokens included), as vLLM names tokens in logprobs."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    # --- finishing and streaming ----------------------------------------------------------------------------

    def _advance(self, seq: _Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Add a token to a sequence and stream it (and any new text); True when the sequence is finished."""
        r = seq.req
        seq.generated.append(token)
        n = len(seq.generated)
        if seq.counts is not None:
            seq.counts[token] += 1
            seq.seen[token] = True  # type: ignore[index]
        finish, stop_reason, drop_last = self._finish(seq, token, n)
        if self.metrics is not None:
            seq.last_token_s = self.metrics.token(seq.arrived_s, seq.last_token_s)
        text = self.tokenizer.decode(seq.generated[:-1] if drop_last else seq.generated, skip_special_tokens=True)
        if r.stop and n > r.min_tokens:
            hits = [(i, s) for s in r.stop if (i := text.find(s, max(0, seq.emitted_chars - len(s)))) >= 0]
            if hits:
                cut, stop_reason = min(hits)
                text, finish = text[:cut], "stop"
        if finish is not None and self.metrics is not None:
            self.metrics.finished(seq.arrived_s, finish)
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
        first = n == 1 and seq.prompt_logprobs is not None
        seq.put(EngineDelta(text=delta, completion_tokens=n, finish_reason=finish, token_ids=(token,),  # type: ignore[arg-type]
                            logprobs=(logprob,) if logprob is not None else (), stop_reason=stop_reason,
                            prompt_logprobs=seq.prompt_logprobs if first else None))
        return finish is not None

    def _finish(self, seq: _Sequence, token: int, n: int) -> tuple[str | None, int | None, bool]:
        """(finish reason, stop token id, whether the token's text is left out), in vLLM's order of checks."""
        r = seq.req
        ended = False
        if seq.matcher is not None and not seq.matcher.is_terminated():
            if not seq.matcher.accept_token(token):
                log.warning("request %s: token %d is outside its grammar", r.request_id, token)
                ended = True
            ended = ended or seq.matcher.is_terminated()
        if n >= r.min_tokens:
            if token in self.eos_ids and not r.ignore_eos:
                return "stop", None, True
            if token in r.stop_token_ids:
                return "stop", token, True
        if ended:
            return "stop", None, token in self.eos_ids
        if n >= r.max_tokens or len(r.prompt_token_ids) + n >= self.max_model_len:
            return "length", None, False
        return None, None, False
