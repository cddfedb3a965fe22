"""Ray Serve replica deployments, each serving the OpenAI API over its own HTTP server: VLLMReplica (cloud pool:
vLLM's own OpenAI server, in-process) and CPUReplica (edge pool: transformers on CPU behind deployments.edge_api).

Serve owns their lifecycle (placement, health checks, scaling, graceful shutdown); the router sends requests to the
URL each replica publishes with ``record_replica_metadata`` and passes the bytes through. On shutdown a replica
drains: it stays up until the requests it is serving are done (up to the deployment's graceful shutdown timeout).
"""

from __future__ import annotations

import json
import logging
import os
import types
from typing import Any

from ray import serve

from deployments.replica_server import ReplicaServer

log = logging.getLogger("ray.serve")


def vllm_cli_args(model_path: str, served_name: str, dtype: str, max_model_len: int,
                  engine_args: dict[str, Any]) -> list[str]:
    """``vllm serve`` flags for the replica: the model, then every engine/server option of the pool config
    (``{"max_num_seqs": 16, "enforce_eager": true}`` -> ``--max-num-seqs 16 --enforce-eager``)."""
    flags = ["--model", model_path, "--served-model-name", served_name, "--dtype", dtype,
             "--max-model-len", str(max_model_len)]
    for key, value in engine_args.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False:
            flags.append("--no-" + key.replace("_", "-"))
        elif value is None:
            continue
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list | tuple):
            flags += [flag, *(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


class _Served:
    """What both replicas share: the HTTP server, its address, draining on shutdown."""

    server: ReplicaServer
    drain_timeout_s: float

    def record_replica_metadata(self) -> dict[str, Any]:
        return {"url": self.server.url, "pid": os.getpid()}

    async def _drain(self) -> None:
        left = await self.server.drain(self.drain_timeout_s)
        log.info("replica drained (%d requests cut)", left)


CPU_KV_CACHE_GIB = "1"


def _default_cpu_kv_cache() -> None:
    """On vLLM's CPU build, a KV cache of 1 GiB unless the pool's env sets ``VLLM_CPU_KVCACHE_SPACE``: unset, vLLM
    claims 92% of the machine's memory, which a machine shared with other replicas (elo run) never has free."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = CPU_KV_CACHE_GIB
        log.info("vLLM CPU build: VLLM_CPU_KVCACHE_SPACE unset, using %s GiB", CPU_KV_CACHE_GIB)


@serve.deployment
class VLLMReplica(_Served):
    """vLLM's AsyncLLM engine and its OpenAI server app (``vllm serve``'s, in this process); the ``vllm`` package on
    GPU machines, ``vllm-cpu`` elsewhere (same code)."""

    async def __init__(self, model_path: str, served_name: str, dtype: str, max_model_len: int,
                       engine_args: dict[str, Any], drain_timeout_s: float = 600.0):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        _default_cpu_kv_cache()
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(
            vllm_cli_args(model_path, served_name, dtype, max_model_len, engine_args))
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs.from_cli_args(args),
                                                usage_context=UsageContext.OPENAI_API_SERVER)
        tasks = await self.engine.get_supported_tasks()
        app = build_app(args, tasks, self.engine.model_config)
        await init_app_state(self.engine, app.state, args, tasks)
        app.state.server = types.SimpleNamespace(should_exit=False)  # read by vLLM's engine-error handler
        self.drain_timeout_s = drain_timeout_s
        self.server = ReplicaServer(app)
        await self.server.start()
        await self._warm_up(served_name)
        log.info("VLLMReplica ready at %s (pid %d)", self.server.url, os.getpid())

    async def _warm_up(self, served_name: str) -> None:
        """One request with logprobs before the replica counts as ready: vLLM's first logprobs request compiles
        for seconds, which no client should wait for."""
        import httpx

        body = {"model": served_name, "prompt": [1, 2, 3], "max_tokens": 2, "logprobs": 1}
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{self.server.url}/v1/completions", json=body)
            if r.status_code != 200:  # a replica that cannot answer must not count as ready
                raise RuntimeError(f"vLLM warm-up answered {r.status_code}: {r.text[:300]}")

    async def check_health(self) -> None:
        await self.engine.check_health()
        if not self.server.alive:
            raise RuntimeError("the replica's HTTP server stopped")

    async def __del__(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            await self._drain()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


@serve.deployment
class CPUReplica(_Served):
    """transformers on torch CPU, batching concurrent requests; optional int8 dynamic quantization."""

    async def __init__(self, model_path: str, served_name: str, dtype: str, max_model_len: int,
                       quantization: str = "none", max_batch_size: int = 8, num_threads: int | None = None,
                       drain_timeout_s: float = 600.0):
        import torch

        from deployments.cpu_engine import BatchedCPUEngine, load_causal_lm
        from deployments.edge_api import build_edge_app
        from deployments.engine_metrics import EngineMetrics

        if num_threads:
            torch.set_num_threads(num_threads)
        model, tokenizer = load_causal_lm(model_path, dtype, quantization)
        self.engine = BatchedCPUEngine(model, tokenizer, max_batch_size=max_batch_size, max_model_len=max_model_len)
        engine = self.engine
        engine.metrics = EngineMetrics(served_name, running=lambda: engine.running, waiting=lambda: engine.waiting)
        self.drain_timeout_s = drain_timeout_s
        self.server = ReplicaServer(build_edge_app(self.engine, tokenizer, served_name, max_model_len))
        await self.server.start()
        log.info("CPUReplica ready at %s: %s (%s, quantization=%s, pid %d)", self.server.url, model_path, dtype,
                 quantization, os.getpid())

    async def check_health(self) -> None:
        if not self.server.alive:
            raise RuntimeError("the replica's HTTP server stopped")

    async def __del__(self) -> None:
        if getattr(self, "server", None) is not None:
            await self._drain()
