"""Builds the tiny demo Llama model (tokenizer + weights) deterministically and offline, cached on disk."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, PreTrainedTokenizerBase

__all__ = [
    "BOS_TOKEN",
    "BUILDER_VERSION",
    "CHAT_TEMPLATE",
    "CORPUS_DIR",
    "DEFAULT_CACHE_DIR",
    "DEMO_MODEL_SPEC",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "DemoModelSpec",
    "ProgressCallback",
    "build_demo_model",
    "demo_model_path",
    "is_complete_build",
    "load_chat_pairs",
    "load_corpus_texts",
]

# Bump whenever the build recipe changes in a way the spec below does not capture.
BUILDER_VERSION = 1

DEFAULT_CACHE_DIR = Path(os.environ.get("ELO_CACHE_DIR", "~/.cache/elo")).expanduser()
CORPUS_DIR = Path(__file__).with_name("corpus")
BUILD_INFO_FILE = "build-info.json"
MODEL_NAME_PREFIX = "elo-demo-"

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|bos|>"
EOS_TOKEN = "<|end|>"
# Order fixes the ids: pad=0, bos=1, eos=2, then the role markers.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, "<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

ProgressCallback = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoModelSpec:
    """Architecture and training recipe of the demo model; every field feeds the fingerprint."""

    # Tokenizer: byte-level BPE trained on the corpus (the trainer stops early if merges run out).
    tokenizer_vocab_size: int = 4096
    # Llama architecture (head_dim = 256 / 4 = 64: vLLM's CPU attention rejects smaller heads).
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    # Training recipe.
    seed: int = 1234
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 192  # longer than every chat example, so each is also seen whole
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Fraction of training windows that start exactly at a paragraph or chat example start.
    aligned_fraction: float = 0.5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def llama_config(self, vocab_size: int) -> LlamaConfig:
        """The transformers config of the model for a tokenizer of ``vocab_size`` tokens."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=SPECIAL_TOKENS.index(BOS_TOKEN),
            eos_token_id=SPECIAL_TOKENS.index(EOS_TOKEN),
            pad_token_id=SPECIAL_TOKENS.index(PAD_TOKEN),
            dtype="float32",
            architectures=["LlamaForCausalLM"],
        )


DEMO_MODEL_SPEC = DemoModelSpec()


def load_corpus_texts() -> dict[str, str]:
    """The plain-text documents of the corpus, by file name, in a fixed order."""
    return {p.name: p.read_text(encoding="utf-8").strip() for p in sorted(CORPUS_DIR.glob("*.txt"))}


def load_chat_pairs() -> list[list[dict[str, str]]]:
    """The chat examples of the corpus, each as a list of messages ending with the assistant's answer."""
    conversations: list[list[dict[str, str]]] = []
    for line in (CORPUS_DIR / "chat.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        pair = json.loads(line)
        messages = [{"role": "system", "content": pair["system"]}] if "system" in pair else []
        messages += [
            {"role": "user", "content": pair["user"]},
            {"role": "assistant", "content": pair["assistant"]},
        ]
        conversations.append(messages)
    return conversations


def _spec_for(steps: int | None) -> DemoModelSpec:
    if steps is None or steps == DEMO_MODEL_SPEC.steps:
        return DEMO_MODEL_SPEC
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    return replace(DEMO_MODEL_SPEC, steps=steps)


def _fingerprint(spec: DemoModelSpec) -> str:
    digest = hashlib.sha256()
    digest.update(f"builder={BUILDER_VERSION}\n".encode())
    digest.update(json.dumps(asdict(spec), sort_keys=True).encode())
    for path in [*sorted(CORPUS_DIR.glob("*.txt")), CORPUS_DIR / "chat.jsonl"]:
        digest.update(f"\n{path.name}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def demo_model_path(cache_dir: Path | None = None, *, steps: int | None = None) -> Path:
    """Where the demo model built with this corpus and recipe lives (it may not be built yet)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else DEFAULT_CACHE_DIR
    return root / "models" / f"{MODEL_NAME_PREFIX}{_fingerprint(_spec_for(steps))[:12]}"


def is_complete_build(path: Path) -> bool:
    """True if ``path`` holds a finished build (its marker is written last, before the atomic rename)."""
    try:
        info = json.loads((path / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    required = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
    return (
        isinstance(info, dict)
        and path.name.endswith(str(info.get("fingerprint", ""))[:12])
        and all((path / name).is_file() for name in required)
    )


def build_demo_model(
    cache_dir: Path | None = None,
    *,
    steps: int | None = None,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> Path:
    """Build the demo model into the cache (or reuse a complete build) and return its folder.

    ``progress(stage, done, total)`` is called with the stages "tokenizer", "train" and "save" while
    building, and "wait" (0 of 1) first if another process is building the same model.
    The model is built in a temporary folder next to the target and renamed into place, under a
    file lock, so a crashed or concurrent build never leaves a half-written model behind.
    """
    spec = _spec_for(steps)
    target = demo_model_path(cache_dir, steps=steps)
    report = progress or _no_progress
    if not force and is_complete_build(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{target.name}.lock", on_wait=lambda: report("wait", 0, 1)):
        if not force and is_complete_build(target):
            return target  # another process finished it while we waited
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed build (we hold the lock)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _build_into(tmp, target.name, spec, _fingerprint(spec), report)
            if target.exists():
                trash = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


@contextlib.contextmanager
def _exclusive_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    # flock is released by the kernel if the holder dies, so a crash never leaves the cache stuck.
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _train_tokenizer(spec: DemoModelSpec) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.tokenizer_vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(load_corpus_texts().values())
    texts += [m["content"] for conversation in load_chat_pairs() for m in conversation]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for index, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise RuntimeError(f"special token {token} did not get id {index}")
    return tokenizer


def _training_units(tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """Token ids of each document and chat example (each ending with EOS), with the offsets where
    its paragraphs start (windows aligned there teach the model to continue any paragraph)."""
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    units: list[tuple[list[int], list[int]]] = []
    for text in load_corpus_texts().values():
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        paragraph_chars = {0} | {i + 2 for i in range(len(text)) if text.startswith("\n\n", i)}
        starts = [i for i, (begin, _) in enumerate(encoded["offset_mapping"]) if begin in paragraph_chars]
        units.append((list(encoded["input_ids"]) + [eos_id], starts))
    for conversation in load_chat_pairs():
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False).removesuffix("\n")
        units.append((tokenizer.encode(rendered, add_special_tokens=False), [0]))
    return units


def _build_into(out: Path, name: str, spec: DemoModelSpec, fingerprint: str, progress: ProgressCallback) -> None:
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    started = time.monotonic()
    progress("tokenizer", 0, 1)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(spec),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)],
        model_max_length=spec.max_position_embeddings,
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    progress("tokenizer", 1, 1)

    config = spec.llama_config(vocab_size=len(tokenizer))
    units = _training_units(tokenizer)
    stream_ids: list[int] = []
    aligned_starts: list[int] = []
    for unit_ids, unit_starts in units:
        aligned_starts += [len(stream_ids) + start for start in unit_starts]
        stream_ids += unit_ids
    stream = torch.tensor(stream_ids, dtype=torch.long)
    starts = torch.tensor(aligned_starts, dtype=torch.long)
    window = spec.seq_len + 1
    # Pad the stream cyclically so a window may start anywhere.
    stream = torch.cat([stream, stream[:window]])

    # One thread: the same weights whatever the core count, and no collapse when other processes hold
    # cores (OpenMP threads waiting for a descheduled peer made training 8x slower on a busy 2-core box).
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            torch.manual_seed(spec.seed)
            model = LlamaForCausalLM(config).to(torch.float32)
        loss_value = _train(model, stream, starts, spec, progress)
    finally:
        torch.set_num_threads(previous_threads)

    progress("save", 0, 1)
    model.eval()
    bars_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the caller draws its own progress
    try:
        model.save_pretrained(out)
    finally:
        if bars_enabled:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out)
    out.chmod(0o755)  # mkdtemp makes it private
    for file in out.iterdir():
        file.chmod(0o644)
    info = {
        "name": name,
        "fingerprint": fingerprint,
        "builder_version": BUILDER_VERSION,
        "steps": spec.steps,
        "final_loss": round(loss_value, 6),
        "seconds": round(time.monotonic() - started, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "training_tokens_per_epoch": len(stream_ids),
        "size_bytes": sum(f.stat().st_size for f in out.iterdir() if f.is_file()),
        "spec": asdict(spec),
    }
    # Written last: its presence marks the build as complete.
    (out / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    progress("save", 1, 1)


def _train(
    model: torch.nn.Module, stream: torch.Tensor, starts: torch.Tensor, spec: DemoModelSpec, progress: ProgressCallback
) -> float:
    """AdamW on windows of ``stream``, part of them aligned on ``starts``; returns the last step's loss."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=spec.weight_decay
    )
    generator = torch.Generator().manual_seed(spec.seed)
    window = spec.seq_len + 1
    offsets = torch.arange(window)
    n_aligned = round(spec.batch_size * spec.aligned_fraction)
    loss_value = math.nan
    progress("train", 0, spec.steps)
    for step in range(spec.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(spec, step)
        aligned = starts[torch.randint(len(starts), (n_aligned,), generator=generator)]
        anywhere = torch.randint(len(stream) - window, (spec.batch_size - n_aligned,), generator=generator)
        batch = stream[torch.cat([aligned, anywhere])[:, None] + offsets]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        loss_value = float(loss.detach())
        progress("train", step + 1, spec.steps)
    return loss_value


def _learning_rate(spec: DemoModelSpec, step: int) -> float:
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return spec.min_learning_rate + (spec.learning_rate - spec.min_learning_rate) * cosine
