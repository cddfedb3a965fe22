"""The edge pool's engine on the real demo model, without Ray: batching, streaming, stops, int8."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from deployments.cpu_engine import BatchedCPUEngine, load_causal_lm
from deployments.protocol import GenerationDelta, GenerationRequest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fp32(demo_model_path: Path):
    return load_causal_lm(str(demo_model_path))


def _req(ids: list[int], i: int = 0, **kw) -> GenerationRequest:
    return GenerationRequest(request_id=f"r{i}", prompt_token_ids=ids, **{"max_tokens": 16, "temperature": 0, **kw})


async def _collect(engine: BatchedCPUEngine, req: GenerationRequest) -> list[GenerationDelta]:
    return [d async for d in engine.generate(req)]


def _run(engine: BatchedCPUEngine, reqs: list[GenerationRequest]) -> list[list[GenerationDelta]]:
    async def main():
        return await asyncio.gather(*(_collect(engine, r) for r in reqs))

    return asyncio.run(main())


def test_concurrent_requests_are_decoded_in_one_batch(fp32):
    model, tok = fp32
    engine = BatchedCPUEngine(model, tok, max_batch_size=8)
    prompts = [tok(p)["input_ids"] for p in ("It was the best", "It is a truth", "The cloud pool", "Hello")]
    outs = _run(engine, [_req(p, i, ignore_eos=True) for i, p in enumerate(prompts)])
    assert [o[-1].completion_tokens for o in outs] == [16] * 4
    assert [o[-1].finish_reason for o in outs] == ["length"] * 4
    # One forward pass per step for the whole batch: 15 decode steps after the prefill, not 4 x 15.
    assert engine.steps == 15


def test_batched_output_equals_each_request_alone(fp32):
    model, tok = fp32
    prompts = [tok(p)["input_ids"] for p in ("It was the best of times,", "What")]  # different lengths: left padding
    together = _run(BatchedCPUEngine(model, tok), [_req(p, i) for i, p in enumerate(prompts)])
    alone = [_run(BatchedCPUEngine(model, tok), [_req(p)])[0] for p in prompts]
    text = lambda deltas: "".join(d.text for d in deltas)  # noqa: E731
    assert [text(o) for o in together] == [text(o) for o in alone]


def test_requests_beyond_the_batch_size_wait_for_the_next_batch(fp32):
    model, tok = fp32
    engine = BatchedCPUEngine(model, tok, max_batch_size=2)
    ids = tok("It was")["input_ids"]
    outs = _run(engine, [_req(ids, i, max_tokens=4, ignore_eos=True) for i in range(5)])
    assert all(o[-1].completion_tokens == 4 for o in outs)
    assert engine.steps == 3 * 3  # three batches (2 + 2 + 1) of 3 decode steps


def test_greedy_output_streams_in_pieces_that_join_to_the_decoded_text(fp32):
    model, tok = fp32
    (deltas,) = _run(BatchedCPUEngine(model, tok), [_req(tok("It was the best of times,")["input_ids"], max_tokens=24)])
    assert len(deltas) > 1
    assert "worst of times" in "".join(d.text for d in deltas)


def test_stop_string_truncates_and_finishes_with_stop(fp32):
    model, tok = fp32
    ids = tok("It was the best of times,")["input_ids"]
    (full,) = _run(BatchedCPUEngine(model, tok), [_req(ids, max_tokens=24)])
    text = "".join(d.text for d in full)
    (cut,) = _run(BatchedCPUEngine(model, tok), [_req(ids, max_tokens=24, stop=["worst"])])
    assert "".join(d.text for d in cut) == text[: text.index("worst")]
    assert cut[-1].finish_reason == "stop"


def test_eos_ends_a_chat_answer_unless_ignore_eos(fp32):
    model, tok = fp32
    prompt = tok.apply_chat_template([{"role": "user", "content": "What are you?"}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    (answer,) = _run(BatchedCPUEngine(model, tok), [_req(ids, max_tokens=200)])
    assert answer[-1].finish_reason == "stop" and answer[-1].completion_tokens < 200
    (forced,) = _run(BatchedCPUEngine(model, tok), [_req(ids, max_tokens=200, ignore_eos=True)])
    assert forced[-1].finish_reason == "length" and forced[-1].completion_tokens == 200


def test_int8_quantization_replaces_linear_layers_and_still_generates(demo_model_path: Path, fp32):
    model, tok = load_causal_lm(str(demo_model_path), quantization="int8")
    quantized = [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert quantized and not any(type(m) is torch.nn.Linear for m in model.modules())
    (deltas,) = _run(BatchedCPUEngine(model, tok), [_req(tok("It was the best of times,")["input_ids"], max_tokens=16)])
    assert deltas[-1].completion_tokens > 0 and "".join(d.text for d in deltas)


def test_seeded_sampling_is_reproducible_and_differs_across_seeds(fp32):
    model, tok = fp32
    ids = tok("The")["input_ids"]
    kw = dict(max_tokens=16, temperature=1.5, top_p=1.0, ignore_eos=True)  # the tiny model is peaked: no top_p cut
    texts = ["".join(d.text for d in _run(BatchedCPUEngine(model, tok), [_req(ids, seed=s, **kw)])[0])
             for s in (1, 1, 2, 3, 4, 5)]
    assert texts[0] == texts[1]
    assert len(set(texts)) > 1
