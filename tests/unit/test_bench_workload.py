"""Unit tests for orchestrator.bench.workload: seeded plans, Poisson arrivals, trace sizes, exact-length prompts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from orchestrator.bench.trace import TraceRequest
from orchestrator.bench.workload import (
    TokenizerPromptFactory,
    WordPromptFactory,
    build_plan,
    load_prompt_factory,
    poisson_arrivals,
)


def test_plan_is_identical_for_the_same_seed_and_differs_for_another() -> None:
    a = build_plan(num_requests=5, prompt_tokens=20, output_tokens=8, rate_per_s=3.0, seed=7)
    b = build_plan(num_requests=5, prompt_tokens=20, output_tokens=8, rate_per_s=3.0, seed=7)
    c = build_plan(num_requests=5, prompt_tokens=20, output_tokens=8, rate_per_s=3.0, seed=8)
    assert a == b
    assert [r.prompt for r in a.requests] != [r.prompt for r in c.requests]
    assert [r.send_at_s for r in a.requests] != [r.send_at_s for r in c.requests]


def test_concurrency_plan_has_no_send_times_and_the_requested_sizes() -> None:
    plan = build_plan(num_requests=4, prompt_tokens=30, output_tokens=12, concurrency=2)
    assert plan.mode == "concurrency" and plan.concurrency == 2
    assert [r.index for r in plan.requests] == [0, 1, 2, 3]
    assert all(r.send_at_s is None and r.max_tokens == 12 and r.prompt_tokens == 30 for r in plan.requests)
    assert all(len(r.prompt.split()) == 30 for r in plan.requests)
    assert len({r.prompt for r in plan.requests}) == 4  # distinct prompts: no accidental prefix-cache hits


def test_poisson_arrivals_have_roughly_the_requested_mean_rate() -> None:
    arrivals = poisson_arrivals(4000, 20.0, random.Random(1))
    assert arrivals[0] == 0.0
    assert all(a <= b for a, b in zip(arrivals, arrivals[1:], strict=False))
    observed_rate = (len(arrivals) - 1) / arrivals[-1]
    assert observed_rate == pytest.approx(20.0, rel=0.06)


def test_trace_plan_takes_arrivals_and_sizes_from_the_trace_and_clamps_with_counts() -> None:
    trace = [TraceRequest(0.0, 5000, 10), TraceRequest(0.5, 100, 900), TraceRequest(1.25, 0, 0), TraceRequest(2.0, 7, 7)]
    plan = build_plan(trace=trace, num_requests=3, max_prompt_tokens=2048, max_output_tokens=512)
    assert plan.mode == "trace"
    assert [r.send_at_s for r in plan.requests] == [0.0, 0.5, 1.25]
    assert [r.prompt_tokens for r in plan.requests] == [2048, 100, 1]  # zero-length prompts become 1 token
    assert [r.max_tokens for r in plan.requests] == [10, 512, 1]
    assert (plan.clamped_prompts, plan.clamped_outputs) == (1, 1)


def test_trace_sizes_can_be_replayed_at_a_fixed_concurrency() -> None:
    plan = build_plan(trace=[TraceRequest(0.0, 3, 4), TraceRequest(9.0, 5, 6)], concurrency=1)
    assert plan.mode == "concurrency"
    assert [(r.send_at_s, r.prompt_tokens, r.max_tokens) for r in plan.requests] == [(None, 3, 4), (None, 5, 6)]


def test_plan_rejects_both_concurrency_and_rate() -> None:
    with pytest.raises(ValueError, match="either concurrency or rate_per_s"):
        build_plan(num_requests=1, concurrency=1, rate_per_s=1.0)


def test_without_a_tokenizer_prompts_are_approximated_with_words() -> None:
    factory = load_prompt_factory(None)
    assert isinstance(factory, WordPromptFactory)
    text, n = factory.make(50, random.Random(0))
    assert n == 50 and len(text.split()) == 50


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A byte-level BPE tokenizer trained in a tmp dir (no downloads), loaded through transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["the quick brown fox jumps over the lazy dog", "language models stream tokens to clients"] * 100
    tok.train_from_iterator(corpus, trainer)
    path = Path(tmp_path_factory.mktemp("tok"))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(
        path
    )
    # AutoTokenizer (what load_prompt_factory uses) imports torch, which is slow; the fast class loads the same files.
    return PreTrainedTokenizerFast.from_pretrained(path)


def test_tokenizer_prompts_have_exactly_the_requested_token_count(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    factory = TokenizerPromptFactory(tiny_tokenizer)
    rng = random.Random(3)
    for n in [1, 2, 3, 5, 17, 64, 300, 1500]:
        text, actual = factory.make(n, rng)
        assert actual == n
        assert len(tiny_tokenizer.encode(text, add_special_tokens=False)) == n
        assert "<s>" not in text and "<pad>" not in text


def test_tokenizer_plans_are_deterministic_and_exact(tiny_tokenizer) -> None:  # type: ignore[no-untyped-def]
    factory = TokenizerPromptFactory(tiny_tokenizer)
    a = build_plan(num_requests=3, prompt_tokens=40, output_tokens=4, concurrency=1, prompt_factory=factory, seed=5)
    b = build_plan(num_requests=3, prompt_tokens=40, output_tokens=4, concurrency=1, prompt_factory=factory, seed=5)
    assert a == b and a.exact_prompt_tokens
    assert all(len(tiny_tokenizer.encode(r.prompt, add_special_tokens=False)) == 40 for r in a.requests)
