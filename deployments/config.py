"""Validated configuration of the Serve application: the model, the two pools and the router."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PoolName = str
Engine = Literal["vllm", "transformers"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    source: str = Field(
        "demo",
        description='"demo" builds the embedded demo model offline; anything else is a Hugging Face '
        "model id or a local folder, loaded by vLLM and transformers as they are.",
    )
    served_name: str = Field("elo-demo", description="Model name clients put in the `model` field.")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length in tokens; default: the model's max_position_embeddings."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype for both engines (float32 on CPU keeps both pools identical)."
    )


class Eligibility(_Strict):
    """Which requests a pool may take (request size and SLO class)."""

    max_prompt_tokens: int | None = Field(None, ge=1, description="Largest prompt the pool takes.")
    max_output_tokens: int | None = Field(None, ge=1, description="Largest max_tokens the pool takes.")
    slo_classes: list[str] | None = Field(
        None, description="SLO classes (request header) the pool serves; null serves every class."
    )


class PoolConfig(_Strict):
    engine: Engine = Field(description="vllm (VLLMReplica) or transformers (CPUReplica).")
    replicas: int = Field(1, ge=0, description="Replicas to start with.")
    max_ongoing_requests: int = Field(
        16, ge=1, description="Requests one replica works on at once (Serve's per-replica limit)."
    )
    max_queued_requests: int = Field(
        16, ge=0, description="Requests the router lets wait per ready replica once all slots are busy."
    )
    eligibility: Eligibility = Field(default_factory=Eligibility)
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="vllm: extra AsyncEngineArgs (e.g. enforce_eager, max_num_seqs)."
    )
    quantization: Literal["none", "int8"] = Field(
        "none", description="transformers: int8 dynamic quantization of the Linear layers."
    )
    max_batch_size: int = Field(8, ge=1, description="transformers: sequences decoded together.")
    num_threads: int | None = Field(None, ge=1, description="transformers: torch threads (default: torch's).")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0}, description="Ray actor options of each replica."
    )
    stream_interval_ms: float = Field(
        30.0, ge=0, description="Stream at most one merged delta per this many ms after the first token (0: per token)."
    )
    health_check_period_s: float = Field(5.0, gt=0)


class RouterConfig(_Strict):
    default_pool: PoolName = Field("cloud", description="Pool a request prefers when its SLO class says nothing.")
    slo_class_header: str = Field("x-slo-class", description="Request header carrying the SLO class.")
    slo_class_preferences: dict[str, PoolName] = Field(
        default_factory=dict, description="SLO class -> preferred pool (overrides default_pool)."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429/503.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upper bound on one request's life.")
    readiness_poll_s: float = Field(1.0, gt=0, description="How often the router refreshes replica readiness.")
    cold_start_wait_s: float = Field(
        180.0, ge=0,
        description="A request no ready replica can take waits up to this long for starting replicas (cold start) "
        "instead of getting 429/503 at once; 0 disables waiting.",
    )
    max_waiting_at_zero: int = Field(
        64, ge=0,
        description="Requests that may wait for a pool with no replica at all (scaled to zero); they are the demand "
        "the controller scales it up for.",
    )
    metrics_window_s: float = Field(30.0, gt=0, description="Window of the load statistics the controller reads.")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray actor options of the router replica; elastic clusters pin it to the head node "
        "(resource elo-head) so that no pool node hosts it and every pool node can be drained.",
    )


class AppConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    pools: dict[PoolName, PoolConfig] = Field(
        default_factory=lambda: {
            "cloud": PoolConfig(
                engine="vllm",
                engine_args={"enforce_eager": True},
                # Ignored by GPU builds; the CPU build reserves this many GiB for its KV cache.
                ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}},
            ),
            "edge": PoolConfig(engine="transformers", max_ongoing_requests=8, max_queued_requests=8),
        }
    )
    router: RouterConfig = Field(default_factory=RouterConfig)

    @model_validator(mode="after")
    def _pools_are_known(self) -> AppConfig:
        if not self.pools:
            raise ValueError("pools: at least one pool is required")
        names = set(self.pools)
        if self.router.default_pool not in names:
            raise ValueError(f"router.default_pool {self.router.default_pool!r} is not one of the pools {sorted(names)}")
        for cls, pool in self.router.slo_class_preferences.items():
            if pool not in names:
                raise ValueError(f"router.slo_class_preferences.{cls}: {pool!r} is not one of the pools {sorted(names)}")
        return self


class ConfigError(ValueError):
    """A configuration file that cannot be used, with the file and field named."""


def load_app_config(path: str | Path) -> AppConfig:
    """Read an AppConfig from YAML, naming the file and the field on error."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    try:
        return AppConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{path}: invalid configuration:"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from e
