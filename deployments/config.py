"""Validated configuration of the Serve application: the model, the two pools and the router."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.configfile import ConfigError as ConfigError  # re-exported: the app config's error
from deployments.configfile import load_model

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
        default_factory=dict, description="vllm: any `vllm serve` option, engine or server (e.g. enforce_eager, "
        "max_num_seqs, tool_call_parser); true/false are flags, dicts are JSON."
    )
    quantization: Literal["none", "int8"] = Field(
        "none", description="transformers: int8 dynamic quantization of the Linear layers."
    )
    max_batch_size: int = Field(8, ge=1, description="transformers: sequences decoded together.")
    num_threads: int | None = Field(None, ge=1, description="transformers: torch threads (default: torch's).")
    busy_cores: float | None = Field(
        None, gt=0, description="On a shared machine (elo run's local pools; not KubeRay nodes): the cores one serving "
        "replica keeps busy, as scripts/bench_shared_cores.py fits them (e.g. 1.41 edge, 1.89 cloud on a 2-vCPU "
        "Xeon VM); null: its threads (every CPU, or num_threads).")
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0}, description="Ray actor options of each replica."
    )
    health_check_period_s: float = Field(5.0, gt=0)
    graceful_shutdown_timeout_s: float = Field(
        600.0, gt=0, description="A replica being stopped (scale-down, redeploy, shutdown) finishes the requests it "
        "is serving for up to this long before it is killed.")


# vLLM options of the default cloud pool: eager mode (no graph capture on CPU); tool calls forced through
# structured output (the xlam parser's JSON path) and "auto" tool choice; JSON without free whitespace, which a small
# model would otherwise fill forever.
DEFAULT_VLLM_ARGS: dict[str, Any] = {
    "enforce_eager": True,
    "tool_call_parser": "xlam",
    "enable_auto_tool_choice": True,
    "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
}


class ApiKey(_Strict):
    """One client key: a bearer token and what it may do."""

    key: str = Field(min_length=8, description="The bearer token (a secret: give it from a Secret or ELO_API_KEYS).")
    name: str = Field("key", description="Shown in logs; never the key itself.")
    admin: bool = Field(False, description="May call the control endpoints (/elo/*): the controller's key.")
    requests_per_minute: int | None = Field(None, ge=1, description="Beyond it: 429 with Retry-After; null: no limit.")
    tokens_per_minute: int | None = Field(
        None, ge=1, description="Prompt + max_tokens charged at admission; beyond it: 429 with Retry-After.")
    slo_classes: list[str] | None = Field(
        None, description="SLO classes (x-slo-class) this key may send; null: any; another class gets 403.")
    allow_ignore_eos: bool = Field(True, description="May send vLLM's ignore_eos (it makes a request run to "
                                   "max_tokens); false: 403.")


class AuthConfig(_Strict):
    keys: list[ApiKey] = Field(
        default_factory=list,
        description="Client keys; none: the endpoint is open (fine on 127.0.0.1, not on a network). Keys from "
        "ELO_API_KEYS / ELO_ADMIN_KEYS (comma-separated) in the router's environment are added.")
    open_metrics: bool = Field(True, description="/metrics without a key (Prometheus scrapes); /healthz is always open.")


class RouterConfig(_Strict):
    auth: AuthConfig = Field(default_factory=AuthConfig)
    fill_order: list[PoolName] | None = Field(
        None,
        description="Pools in the order the router fills them (cheapest first) until the controller sends its plan; "
        "null: the CPU (transformers) pools first, then the others in configuration order.",
    )
    slo_class_header: str = Field("x-slo-class", description="Request header carrying the SLO class.")
    slo_class_preferences: dict[str, PoolName] = Field(
        default_factory=dict, description="SLO class -> the pool it fills first (the rest keep the fill order)."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 429/503.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger request bodies get 413.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upper bound on one request's life.")
    stream_resumes: int = Field(
        2, ge=0, description="A stream whose replica fails mid-stream goes on from the text already sent on "
        "another replica, up to this many times (0: the client gets an SSE error event).")
    drain_timeout_s: float = Field(
        600.0, ge=0,
        description="On shutdown (elo run stopped, the router replica replaced) the router stops admitting new "
        "requests (503 with Retry-After) and lets those in flight finish, up to this long.")
    readiness_poll_s: float = Field(1.0, gt=0, description="How often the router refreshes replica readiness.")
    engine_metrics_timeout_s: float = Field(
        2.0, gt=0, description="How long /metrics waits for each replica's engine metrics (vllm:*); a replica "
        "slower than this is left out of that scrape (elo_replica_metrics_up 0).")
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
    probe_every_s: float | None = Field(
        60.0, gt=0,
        description="A ready pool that got no request for this long gets the next one it can take within its "
        "SLO-safe concurrency, so its capacity estimate stays measured; null: never probe.",
    )
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
                engine_args=DEFAULT_VLLM_ARGS,
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
        for pool in self.router.fill_order or []:
            if pool not in names:
                raise ValueError(f"router.fill_order: {pool!r} is not one of the pools {sorted(names)}")
        for cls, pool in self.router.slo_class_preferences.items():
            if pool not in names:
                raise ValueError(f"router.slo_class_preferences.{cls}: {pool!r} is not one of the pools {sorted(names)}")
        return self


def load_app_config(path: str | Path) -> AppConfig:
    """Read an AppConfig from YAML, naming the file, the line and the field on error."""
    return load_model(path, AppConfig, "app config")
