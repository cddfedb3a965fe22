"""The scaling policy YAML as models (the ground floor of the control plane): pools, prices and service profiles,
SLO, policy choice, guardrails. Loading with the policy-name check lives above the registry, in
:mod:`orchestrator.control.policy_loader`."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from deployments.configfile import ConfigError, StrictModel, load_model
from deployments.configfile import conflict as _conflict
from orchestrator.control.capacity import ReplicaProfile

__all__ = [
    "DEFAULT_POLICY_PATH",
    "PROFILES_DIR",
    "ConfigError",
    "Guardrails",
    "PolicyChoice",
    "PolicyFile",
    "PoolPolicy",
    "Slo",
    "StrictModel",
    "load_profile",
    "policy_json_schema",
    "resolve_profile",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")
PROFILES_DIR = Path(__file__).parent.parent / "profiles"  # shipped replica profiles, by file stem

# A registry name ("cost_aware") or an import path ("mypkg.policies:my_policy").
_POLICY_NAME = re.compile(r"^[A-Za-z_][\w]*$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def load_profile(path: str | Path, error: type[ConfigError] = ConfigError) -> ReplicaProfile:
    """Read a replica profile YAML; ``error`` names the file, line and field."""
    return load_model(path, ReplicaProfile, "replica profile", error=error)


def resolve_profile(value: Any, base_dir: Path | None, error: type[ConfigError] = ConfigError) -> Any:
    """A profile field's value: a shipped profile's name (``demo_edge_transformers``), a YAML path (relative to
    ``base_dir``), or anything else unchanged (an inline mapping, validated by the model)."""
    if not isinstance(value, str | Path):
        return value
    text = str(value)
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        shipped = PROFILES_DIR / f"{text}.yaml"
        if not shipped.exists():
            known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
            raise ValueError(f"no shipped profile named {text!r} (shipped: {known}); give a path to a YAML file")
        return load_profile(shipped, error)
    return load_profile((base_dir or Path(".")) / text, error)


class PoolPolicy(StrictModel):
    """What the controller must know about one pool to size it and price it."""

    engine: Literal["vllm", "transformers"] = Field(
        description="Engine of the pool's replicas: vllm (cloud GPU, or the CPU build) or transformers (edge CPU)."
    )
    cost_per_hour_usd: float = Field(ge=0, description="Price of one replica for one hour, in US dollars.")
    replicas_per_node: int = Field(1, ge=1, description="Replicas that fit on one node of the pool.")
    min_replicas: int = Field(0, ge=0, description="Never fewer replicas (0 allows scale to zero).")
    max_replicas: int = Field(ge=0, description="Never more replicas: the pool's capacity cap.")
    startup_s: float = Field(
        gt=0,
        description="Expected seconds from asking for a replica to it serving, node start included; "
        "used as the forecast horizon until the controller has measured one.",
    )
    target_ongoing_requests_per_replica: float = Field(
        gt=0,
        description="Running + queued requests one replica should carry: its capacity in the cost model "
        "(Ray Serve's target_ongoing_requests).",
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Largest prompt (tokens) the pool takes; null: no limit."
    )
    max_output_tokens: int | None = Field(
        None, ge=1, description="Largest max_tokens the pool takes; null: no limit."
    )
    profile: ReplicaProfile | None = Field(
        None,
        description="Calibrated service model of one replica (`elo bench profile`): the prior of the capacity at the "
        "SLO the controller learns from the router's observations. A shipped profile's name, a YAML path relative to "
        "this file, or inline; null: target_ongoing_requests_per_replica requests at a time until measured.",
        json_schema_extra=lambda schema: schema.setdefault("anyOf", []).insert(
            0, {"type": "string", "description": "A shipped profile's name or a YAML path relative to this file."}),
    )

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_reference(cls, v: Any, info: ValidationInfo) -> Any:
        base = (info.context or {}).get("base_dir")
        return resolve_profile(v, Path(base) if base else None)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> PoolPolicy:
        if self.min_replicas > self.max_replicas:
            raise _conflict(
                "min_replicas {min_replicas} is greater than max_replicas {max_replicas}",
                ("max_replicas",), min_replicas=self.min_replicas, max_replicas=self.max_replicas,
            )
        return self

    @property
    def cost_per_request_slot_usd_per_hour(self) -> float:
        """Price of one unit of target capacity: what orders pools cheapest-first."""
        return self.cost_per_hour_usd / self.target_ongoing_requests_per_replica


class Slo(StrictModel):
    """Latency objectives, as 95th percentiles over the metrics window."""

    ttft_p95_s: float = Field(2.0, gt=0, description="Time to first token, 95th percentile, seconds.")
    e2e_p95_s: float = Field(20.0, gt=0, description="Request end to end, 95th percentile, seconds.")


class PolicyChoice(StrictModel):
    """Which decision function runs each tick, and its tuning."""

    name: str = Field(
        "cost_aware",
        description='A built-in policy ("cost_aware", "queue_target", "kpa") or an import path "package.module:function" '
        "to a factory taking the PolicyFile and returning decide(snapshot, state, now).",
    )
    knobs: dict[str, Any] = Field(
        default_factory=dict, description="Policy-specific settings; each policy validates its own."
    )

    @field_validator("name")
    @classmethod
    def _name_shape(cls, v: str) -> str:
        if not _POLICY_NAME.match(v):
            raise ValueError(f'{v!r} is neither a policy name nor "package.module:function"')
        return v


class Guardrails(StrictModel):
    """Limits applied to every policy's plan, whatever the policy."""

    max_step_per_tick: int = Field(
        2, ge=1, description="Most replicas one pool may gain or lose in one tick (every pool)."
    )
    max_step_per_tick_by_pool: dict[str, int] = Field(
        default_factory=dict, description="Per-pool override of max_step_per_tick (replicas per tick)."
    )
    upscale_delay_s: float = Field(
        15.0, ge=0, description="An increase must be wanted continuously this long before it is applied."
    )
    downscale_delay_s: float = Field(
        120.0, ge=0, description="A decrease must be wanted continuously this long before it is applied."
    )
    cooldown_s: float = Field(20.0, ge=0, description="After a pool is resized, leave it alone this long.")
    budget_usd_per_hour: float | None = Field(
        None, gt=0, description="Never plan a fleet costing more per hour; the most expensive capacity goes first. "
        "null: no cap.",
    )
    stale_after_s: float = Field(
        30.0, gt=0, description="Metrics older than this (or a pool missing from them) make the controller hold."
    )

    @field_validator("max_step_per_tick_by_pool")
    @classmethod
    def _steps_positive(cls, v: dict[str, int]) -> dict[str, int]:
        for pool, step in v.items():
            if step < 1:
                raise ValueError(f"max step for pool {pool!r} must be >= 1, got {step}")
        return v


class PolicyFile(StrictModel):
    """The whole policy file: ``elo policy validate`` checks it, the controller runs it."""

    pools: dict[str, PoolPolicy] = Field(min_length=1, description="Pools the controller sizes, by name.")
    slo: Slo = Field(default_factory=Slo, description="Latency objectives the pool mix must meet.")
    policy: PolicyChoice = Field(default_factory=PolicyChoice, description="The decision function and its knobs.")
    guardrails: Guardrails = Field(default_factory=Guardrails, description="Limits applied around every policy.")
    tick_interval_s: float = Field(5.0, gt=0, description="Seconds between two controller ticks.")

    @model_validator(mode="after")
    def _cross_checks(self) -> PolicyFile:
        g = self.guardrails
        for pool in g.max_step_per_tick_by_pool:
            if pool not in self.pools:
                raise _conflict(
                    "max_step_per_tick_by_pool names pool {pool}, which is not one of the pools {pools}",
                    ("guardrails", "max_step_per_tick_by_pool", pool), pool=repr(pool), pools=str(sorted(self.pools)),
                )
        floor = self.min_fleet_cost_usd_per_hour
        if g.budget_usd_per_hour is not None and floor > g.budget_usd_per_hour:
            raise _conflict(
                "budget_usd_per_hour {budget} is below the cost of the minimum fleet ({floor} $/h from min_replicas)",
                ("guardrails", "budget_usd_per_hour"), budget=g.budget_usd_per_hour, floor=round(floor, 4),
            )
        return self

    @property
    def min_fleet_cost_usd_per_hour(self) -> float:
        return sum(p.min_replicas * p.cost_per_hour_usd for p in self.pools.values())

    @property
    def max_fleet_cost_usd_per_hour(self) -> float:
        return sum(p.max_replicas * p.cost_per_hour_usd for p in self.pools.values())

    def max_step(self, pool: str) -> int:
        return self.guardrails.max_step_per_tick_by_pool.get(pool, self.guardrails.max_step_per_tick)

    @classmethod
    def default(cls) -> PolicyFile:
        """The embedded default (``default_policy.yaml``): cheap edge first, GPU cloud burst and scale to zero."""
        return _default_policy_file()


@functools.cache
def _default_policy_file() -> PolicyFile:
    return load_model(DEFAULT_POLICY_PATH, PolicyFile, "policy file", context={"base_dir": DEFAULT_POLICY_PATH.parent})


def policy_json_schema() -> dict[str, Any]:
    """JSON schema of the policy file (for editors, the Helm chart and CI), generated from the models."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Elastic LLM orchestrator scaling policy"
    return schema
