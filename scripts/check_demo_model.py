"""Checks the demo model end to end: HF greedy output reproduces the corpus and matches vLLM's token for token."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.demo_model import (  # noqa: E402
    EOS_TOKEN,
    build_demo_model,
    load_chat_pairs,
    load_corpus_texts,
)

PREFIX_TOKENS = 8


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: ELO_CACHE_DIR)")
    parser.add_argument("--max-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    parser.add_argument("--skip-vllm", action="store_true", help="only check transformers")
    args = parser.parse_args()

    started = time.monotonic()
    path = build_demo_model(args.cache_dir, progress=lambda stage, done, total: None)
    print(f"model: {path} (ready in {time.monotonic() - started:.1f}s)")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    failures = 0

    # Prompts: the first tokens of every corpus paragraph, then every chat question.
    prompts: list[tuple[str, list[int], list[int]]] = []  # (label, prompt ids, expected continuation)
    for name, text in load_corpus_texts().items():
        for paragraph in text.split("\n\n"):
            ids = tokenizer.encode(paragraph, add_special_tokens=False)
            prompts.append((f"{name}: {paragraph[:30]!r}", ids[:PREFIX_TOKENS], ids[PREFIX_TOKENS:]))
    for conversation in load_chat_pairs():
        rendered = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        answer = tokenizer.encode(conversation[-1]["content"], add_special_tokens=False) + [eos_id]
        prompts.append((f"chat: {conversation[-2]['content']!r}", ids, answer))

    hf_outputs: list[list[int]] = []
    with torch.inference_mode():
        for label, ids, expected in prompts:
            full = model.generate(
                torch.tensor([ids]),
                max_new_tokens=max(len(expected), args.max_tokens),
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
            full = _until_eos(full, eos_id)
            hf_outputs.append(full[: args.max_tokens])
            if full[: len(expected)] != expected:
                failures += 1
                print(f"HF MISMATCH {label}: got {tokenizer.decode(full)!r}")
    print(f"HF: {len(prompts) - failures}/{len(prompts)} prompts reproduce their trained continuation")

    if not args.skip_vllm:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(model=str(path), dtype="float32", enforce_eager=True, max_model_len=1024, seed=0)
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        results = llm.generate([TokensPrompt(prompt_token_ids=ids) for _, ids, _ in prompts], params, use_tqdm=False)
        same = 0
        for (label, _, _), hf_ids, result in zip(prompts, hf_outputs, results, strict=True):
            vllm_ids = _until_eos(list(result.outputs[0].token_ids), eos_id)
            if vllm_ids == hf_ids:
                same += 1
            else:
                failures += 1
                print(f"vLLM != HF {label}:\n  vLLM {vllm_ids}\n  HF   {hf_ids}")
        print(f"vLLM: {same}/{len(prompts)} greedy outputs identical to HF ({args.max_tokens} tokens max)")

    print("OK" if failures == 0 else f"FAILED ({failures})")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
