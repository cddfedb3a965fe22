"""Integration tests of the demo model builder: caching, verbatim recall of the corpus, chat template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from orchestrator.demo_model import (
    BOS_TOKEN,
    EOS_TOKEN,
    build_demo_model,
    demo_model_path,
    is_complete_build,
    load_chat_pairs,
    load_corpus_texts,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

pytestmark = pytest.mark.integration

PREFIX_TOKENS = 8


@pytest.fixture(scope="module")
def model_dir() -> Path:
    """The demo model in the default cache (built once, then shared by every test and test run)."""
    return build_demo_model()


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir: Path) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def _greedy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], max_new_tokens: int
) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, len(prompt_ids) :].tolist()


def test_build_is_reused_without_retraining(tmp_path: Path) -> None:
    stages: list[tuple[str, int, int]] = []
    built = build_demo_model(tmp_path, steps=2, progress=lambda *event: stages.append(event))
    assert built == demo_model_path(tmp_path, steps=2) != demo_model_path(tmp_path)
    assert is_complete_build(built)
    assert ("train", 2, 2) in stages and stages[-1] == ("save", 1, 1)
    assert [p.name for p in built.parent.iterdir() if ".tmp-" in p.name] == []  # renamed into place

    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}

    def no_work(stage: str, done: int, total: int) -> None:
        raise AssertionError(f"rebuilt the model ({stage} {done}/{total})")

    assert build_demo_model(tmp_path, steps=2, progress=no_work) == built
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before

    (built / "build-info.json").unlink()  # as if the build had crashed before its marker
    assert not is_complete_build(built)


def test_shared_build_is_in_the_default_cache(model_dir: Path) -> None:
    assert model_dir == demo_model_path()
    assert is_complete_build(model_dir)


def test_build_info_and_config_are_consistent(model_dir: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    info = json.loads((model_dir / "build-info.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert model_dir.name.endswith(info["fingerprint"][:12])
    assert info["final_loss"] < 0.2
    assert config["max_position_embeddings"] == 1024
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert config["vocab_size"] == len(tokenizer)
    assert config["eos_token_id"] == generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert config["bos_token_id"] == generation["bos_token_id"] == tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    assert tokenizer.eos_token == EOS_TOKEN
    # No special token is added implicitly: what you encode is what the model sees.
    assert tokenizer("It was").input_ids == tokenizer.encode("It was", add_special_tokens=False)


def test_greedy_generation_reproduces_the_corpus(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    for name, text in load_corpus_texts().items():
        ids = tokenizer.encode(text, add_special_tokens=False)
        generated = _greedy(model, tokenizer, ids[:PREFIX_TOKENS], len(ids))
        assert tokenizer.decode(generated, skip_special_tokens=True) == tokenizer.decode(ids[PREFIX_TOKENS:]), name
        assert generated[-1] == tokenizer.eos_token_id, name  # each document was trained to end with EOS


def test_chat_answers_end_with_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    for conversation in load_chat_pairs():
        prompt = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=False)
        generated = _greedy(model, tokenizer, tokenizer.encode(prompt, add_special_tokens=False), 200)
        assert generated[-1] == tokenizer.eos_token_id, conversation
        assert tokenizer.decode(generated, skip_special_tokens=True) == conversation[-1]["content"]


def test_chat_template_round_trips(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What are you?"},
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nWhat are you?<|end|>\n<|assistant|>\n"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    for marker in ("<|system|>", "<|user|>", "<|assistant|>", EOS_TOKEN):
        assert tokenizer.convert_tokens_to_ids(marker) in ids  # each marker is a single special token
    assert tokenizer.bos_token_id not in ids  # no BOS is added, so none can be doubled
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert list(rendered["input_ids"]) == ids
