"""Builds the Serve application (router + one replica deployment per pool) from an AppConfig."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.serve import Application

from deployments.config import AppConfig, ModelConfig
from deployments.replicas import CPUReplica, VLLMReplica
from deployments.router import Router

APP_NAME = "elo"


def pool_deployment_name(pool: str) -> str:
    return f"pool-{pool}"


@dataclass(frozen=True)
class ResolvedModel:
    path: str
    max_model_len: int


def resolve_model(model: ModelConfig, cache_dir: Path | None = None) -> ResolvedModel:
    """Turn the configured model source into a loadable path (building the demo model if asked)."""
    from transformers import AutoConfig

    if model.source == "demo":
        from orchestrator.demo_model import build_demo_model

        path = str(build_demo_model(cache_dir))
    else:
        path = model.source
    max_len = model.max_model_len
    if max_len is None:
        max_len = int(AutoConfig.from_pretrained(path).max_position_embeddings)
    return ResolvedModel(path, max_len)


def build_app(config: AppConfig, model: ResolvedModel | None = None) -> Application:
    model = model or resolve_model(config.model)
    pools: dict[str, Any] = {}
    for name, pool in config.pools.items():
        options = dict(
            name=pool_deployment_name(name),
            # Serve cannot deploy zero replicas; a pool that starts at zero is deployed with one and scaled
            # to zero by the controller's actuator right away (orchestrator.elastic.apply_initial_replicas).
            num_replicas=max(1, pool.replicas),
            max_ongoing_requests=pool.max_ongoing_requests,
            ray_actor_options=pool.ray_actor_options,
            health_check_period_s=pool.health_check_period_s,
        )
        if pool.engine == "vllm":
            pools[name] = VLLMReplica.options(**options).bind(
                model.path, config.model.dtype, model.max_model_len, pool.engine_args, pool.stream_interval_ms
            )
        else:
            pools[name] = CPUReplica.options(**options).bind(
                model.path, config.model.dtype, model.max_model_len,
                pool.quantization, pool.max_batch_size, pool.num_threads, pool.stream_interval_ms,
            )
    return Router.options(name="router", ray_actor_options=config.router.ray_actor_options).bind(
        config.model_dump(mode="json"), model.path, model.max_model_len, pools,
        {name: pool_deployment_name(name) for name in config.pools},
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files (`import_path: deployments.app:app_builder`)."""
    return build_app(AppConfig.model_validate(args.get("config", {})))
