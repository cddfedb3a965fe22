"""Build the benchmark's request plan (prompts, token budgets, send times); pure and seeded, no I/O besides loading a tokenizer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from orchestrator.bench.trace import TraceRequest

PlanMode = Literal["concurrency", "rate", "trace"]

# Short, common English words: each is a single token (with its leading space)
# in the usual BPE vocabularies (GPT-2, Llama, Qwen), so N words ≈ N tokens.
_WORDS: tuple[str, ...] = tuple(
    """the of and to in is that it was for on are as with his they at be this from have or by
    one had not but what all were when we there can an your which their said if do will each
    about how up out them then she many some so these would other into has more her two like
    him see time could no make than first been its who now people my made over did down only
    way find use may water long little very after words called just where most know get through
    back much go good new write our me man too any day same right look think also around another
    came come work three word must because does part even place well such here take why things
    help put years different away again off went old number great tell men say small every found
    still between name should home big give air line set own under read last never us left end
    along while might next sound below saw something thought both few those always looked show
    large often together asked house world going want school important until form food keep
    children feet land side without boy once animals life enough took sometimes four head above
    kind began almost live page got earth need far hand high year mother light parts country
    father let night following picture being study second eyes soon times story boys since white
    days ever paper hard near sentence better best across during today others sure means knew""".split()
)


class PromptFactory(Protocol):
    """Makes a prompt text of (about) ``n_tokens`` tokens; returns the text and its actual token count."""

    def make(self, n_tokens: int, rng: random.Random) -> tuple[str, int]: ...


class WordPromptFactory:
    """Approximates token counts with random common English words (~1 token each); no tokenizer needed."""

    exact = False

    def make(self, n_tokens: int, rng: random.Random) -> tuple[str, int]:
        return " ".join(rng.choices(_WORDS, k=n_tokens)), n_tokens


class TokenizerPromptFactory:
    """Exact-length prompts like vLLM's random dataset: sample non-special ids, decode, re-encode, adjust.

    Ids whose text alone decodes to nothing or to U+FFFD (partial UTF-8 bytes) are
    not sampled, so re-encoding rarely drifts; the remaining drift from merges at
    token boundaries is fixed by trimming or appending, with fresh samples as a
    last resort. ``make`` returns the actual token count if exactness still fails.
    """

    exact = True

    def __init__(self, tokenizer: Any, max_attempts: int = 32) -> None:
        self._tok = tokenizer
        self._max_attempts = max_attempts
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
        candidates = [i for i in range(len(tokenizer)) if i not in special]
        texts = tokenizer.batch_decode([[i] for i in candidates])
        self._ids = [i for i, t in zip(candidates, texts, strict=True) if t.strip() and "\ufffd" not in t]
        if not self._ids:
            raise ValueError("tokenizer has no non-special, printable tokens to sample from")

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def make(self, n_tokens: int, rng: random.Random) -> tuple[str, int]:
        if n_tokens <= 0:
            return "", 0
        ids = rng.choices(self._ids, k=n_tokens)
        best: tuple[int, str, int] | None = None
        for attempt in range(1, self._max_attempts + 1):
            text = self._tok.decode(ids, skip_special_tokens=True)
            actual = self._encode(text)
            diff = abs(len(actual) - n_tokens)
            if best is None or diff < best[0]:
                best = (diff, text, len(actual))
            if diff == 0:
                return text, n_tokens
            if attempt % 8 == 0:  # stuck oscillating at a boundary: start over
                ids = rng.choices(self._ids, k=n_tokens)
            elif len(actual) > n_tokens:
                ids = actual[:n_tokens]
            else:
                ids = actual + rng.choices(self._ids, k=n_tokens - len(actual))
        assert best is not None
        return best[1], best[2]


def load_prompt_factory(tokenizer_path: str | None) -> PromptFactory:
    """A tokenizer-backed factory for ``transformers.AutoTokenizer.from_pretrained(path)``, else the word one."""
    if not tokenizer_path:
        return WordPromptFactory()
    from transformers import AutoTokenizer  # heavy import: only when asked for

    return TokenizerPromptFactory(AutoTokenizer.from_pretrained(tokenizer_path))


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request to send: ``send_at_s`` is relative to the run start, or None for closed-loop workers."""

    index: int
    send_at_s: float | None
    prompt: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class WorkloadPlan:
    """The full plan plus how it was made (mode, concurrency/rate) and how many sizes were clamped."""

    requests: tuple[PlannedRequest, ...]
    mode: PlanMode
    concurrency: int | None
    rate_per_s: float | None
    clamped_prompts: int
    clamped_outputs: int
    exact_prompt_tokens: bool


def poisson_arrivals(n: int, rate_per_s: float, rng: random.Random) -> list[float]:
    """``n`` arrival times of a Poisson process at ``rate_per_s``; the first request is sent at 0."""
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    t, out = 0.0, []
    for i in range(n):
        if i:
            t += rng.expovariate(rate_per_s)
        out.append(t)
    return out


def build_plan(
    *,
    num_requests: int | None = None,
    prompt_tokens: int = 128,
    output_tokens: int = 128,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
    trace: Sequence[TraceRequest] | None = None,
    prompt_factory: PromptFactory | None = None,
    max_prompt_tokens: int | None = None,
    max_output_tokens: int | None = None,
    seed: int = 0,
) -> WorkloadPlan:
    """Build a deterministic plan.

    Mode: ``concurrency`` if given (closed loop, ``send_at_s`` None), else ``rate_per_s``
    (Poisson arrivals), else the trace's arrivals. With a trace, sizes come from the
    trace in every mode and ``num_requests`` (if given) keeps the first N rows.
    Sizes are clamped to ``max_prompt_tokens`` / ``max_output_tokens`` (counted) and to >= 1.
    """
    if concurrency is not None and rate_per_s is not None:
        raise ValueError("give either concurrency or rate_per_s, not both")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    rng = random.Random(seed)
    factory = prompt_factory or WordPromptFactory()

    if trace is not None:
        rows = list(trace if num_requests is None else trace[:num_requests])
        sizes = [(r.prompt_tokens, r.output_tokens) for r in rows]
    else:
        if num_requests is None:
            raise ValueError("num_requests is required without a trace")
        sizes = [(prompt_tokens, output_tokens)] * num_requests

    mode: PlanMode
    if concurrency is not None:
        mode, arrivals = "concurrency", [None] * len(sizes)
    elif rate_per_s is not None:
        mode, arrivals = "rate", list(poisson_arrivals(len(sizes), rate_per_s, rng))
    elif trace is not None:
        mode, arrivals = "trace", [r.arrival_s for r in rows]
    else:
        raise ValueError("give concurrency, rate_per_s or a trace")

    clamped_p = clamped_o = 0
    planned: list[PlannedRequest] = []
    for i, ((p_tok, o_tok), at) in enumerate(zip(sizes, arrivals, strict=True)):
        if max_prompt_tokens is not None and p_tok > max_prompt_tokens:
            p_tok, clamped_p = max_prompt_tokens, clamped_p + 1
        if max_output_tokens is not None and o_tok > max_output_tokens:
            o_tok, clamped_o = max_output_tokens, clamped_o + 1
        text, actual = factory.make(max(1, p_tok), rng)
        planned.append(PlannedRequest(i, at, text, actual, max(1, o_tok)))
    return WorkloadPlan(
        requests=tuple(planned),
        mode=mode,
        concurrency=concurrency,
        rate_per_s=rate_per_s,
        clamped_prompts=clamped_p,
        clamped_outputs=clamped_o,
        exact_prompt_tokens=bool(getattr(factory, "exact", False)),
    )
