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


def build_app(config: AppConfig, model: ResolvedModel | None = None, host: str = "127.0.0.1",
              port: int = 8000) -> Application:
    """The router (serving HTTP on ``host:port`` itself) and one replica deployment per pool."""
    model = model or resolve_model(config.model)
    pools: dict[str, Any] = {}
    name = config.model.served_name
    for pool_name, pool in config.pools.items():
        options = dict(
            name=pool_deployment_name(pool_name),
            # Serve cannot deploy zero replicas; a pool that starts at zero is deployed with one and scaled
            # to zero by the controller's actuator right away (orchestrator.elastic.apply_initial_replicas).
            num_replicas=max(1, pool.replicas),
            max_ongoing_requests=pool.max_ongoing_requests,
            ray_actor_options=pool.ray_actor_options,
            health_check_period_s=pool.health_check_period_s,
            # Requests reach replicas over their own HTTP servers; a stopping replica drains them itself (__del__)
            # within this budget.
            graceful_shutdown_timeout_s=pool.graceful_shutdown_timeout_s,
        )
        drain_s = max(1.0, pool.graceful_shutdown_timeout_s - 5.0)
        if pool.engine == "vllm":
            pools[pool_name] = VLLMReplica.options(**options).bind(
                model.path, name, config.model.dtype, model.max_model_len, pool.engine_args, drain_s)
        else:
            pools[pool_name] = CPUReplica.options(**options).bind(
                model.path, name, config.model.dtype, model.max_model_len,
                pool.quantization, pool.max_batch_size, pool.num_threads, drain_s,
            )
    return Router.options(name="router", ray_actor_options=config.router.ray_actor_options,
                          graceful_shutdown_timeout_s=config.router.drain_timeout_s + 10).bind(
        config.model_dump(mode="json"), model.path, model.max_model_len, pools, host, port)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files (`import_path: deployments.app:app_builder`)."""
    return build_app(AppConfig.model_validate(args.get("config", {})))
