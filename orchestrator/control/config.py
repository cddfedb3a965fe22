"""The scaling policy YAML, validated once at the edge: pools and prices, SLO, policy choice, guardrails."""

from __future__ import annotations

import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from deployments.config import ConfigError

__all__ = [
    "DEFAULT_POLICY_PATH",
    "ConfigError",
    "Guardrails",
    "PolicyChoice",
    "PolicyFile",
    "PoolPolicy",
    "Slo",
    "StrictModel",
    "line_of",
    "load_policy_file",
    "policy_json_schema",
    "read_yaml",
]

DEFAULT_POLICY_PATH = Path(__file__).with_name("default_policy.yaml")

# A registry name ("cost_aware") or an import path ("mypkg.policies:my_policy").
_POLICY_NAME = re.compile(r"^[A-Za-z_][\w]*$|^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class StrictModel(BaseModel):
    """Base of every policy-file model: unknown fields are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _conflict(message: str, at: tuple[str, ...], **values: Any) -> PydanticCustomError:
    """A cross-field error; ``at`` is the field path (relative to the model) the loader points the line at."""
    return PydanticCustomError("conflict", message, {**values, "at": at})


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
    return load_policy_file(DEFAULT_POLICY_PATH)


def policy_json_schema() -> dict[str, Any]:
    """JSON schema of the policy file (for editors, the Helm chart and CI), generated from the models."""
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Elastic LLM orchestrator scaling policy"
    return schema


# --- loading, with errors that name the file, the line and the field ---------------------------------------------


def load_policy_file(path: str | Path, registry: Mapping[str, Any] | None = None) -> PolicyFile:
    """Read and validate a policy file; the policy name and its knobs are checked against ``registry``
    (default: the built-ins). Raises ConfigError naming the file, the line and the field."""
    path = Path(path)
    data, root = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of policy settings, got {type(data).__name__}")
    problems = _duplicate_keys(root, ())
    if problems:
        raise _config_error(path, root, problems)
    try:
        cfg = PolicyFile.model_validate(data)
    except ValidationError as e:
        raise _config_error(path, root, [_describe(err) for err in e.errors()]) from e
    problems = _check_policy_choice(cfg, registry)
    if problems:
        raise _config_error(path, root, problems)
    return cfg


def read_yaml(path: Path, what: str = "", error: type[ConfigError] = ConfigError) -> tuple[Any, yaml.Node | None]:
    """The parsed document and its node tree (for :func:`line_of`); ``error`` naming the file (and the line)
    when it cannot be read or is not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read{' ' + what if what else ''}: {e.strerror or e}") from e
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise error(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from e


Problem = tuple[tuple[Any, ...], str]  # (field path, message)


def _check_policy_choice(cfg: PolicyFile, registry: Mapping[str, Any] | None) -> list[Problem]:
    # Imported here: the policies import this module for PolicyFile.
    from orchestrator.control.policies.registry import DEFAULT_REGISTRY, UnknownPolicyError, resolve_policy

    try:
        factory = resolve_policy(cfg.policy.name, DEFAULT_REGISTRY if registry is None else registry)
    except UnknownPolicyError as e:
        return [(("policy", "name"), str(e))]
    knobs_model = getattr(factory, "Knobs", None)
    if not (isinstance(knobs_model, type) and issubclass(knobs_model, BaseModel)):
        return []
    try:
        knobs_model.model_validate(cfg.policy.knobs)
    except ValidationError as e:
        return [(("policy", "knobs", *loc), msg) for loc, msg in (_describe(err, knobs_model) for err in e.errors())]
    return []


def _describe(err: Mapping[str, Any], model: type[BaseModel] = PolicyFile) -> Problem:
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == "conflict":
        return (*loc, *ctx["at"]), err["msg"]
    if err["type"] == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        msg = f"unknown field {loc[-1]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
        return loc, msg + (f"; known fields: {', '.join(known)}" if known else "")
    if err["type"] == "missing":
        return loc, "required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return loc, msg


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Fields of the model found at ``loc`` below ``model`` (through dict values and optionals)."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return []
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _unwrap(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _duplicate_keys(node: yaml.Node | None, loc: tuple[Any, ...]) -> list[Problem]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        out: list[Problem] = []
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key is not None and key in seen:
                out.append(((*loc, key), f"duplicate key {key!r} (YAML would silently keep the last one)"))
            if key is not None:
                seen.add(key)
            out += _duplicate_keys(v, (*loc, key))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [p for i, v in enumerate(node.value) for p in _duplicate_keys(v, (*loc, i))]
    return []


def line_of(root: yaml.Node | None, loc: tuple[Any, ...], last: bool = False) -> int:
    """1-based line of the deepest node of ``loc`` present in the YAML tree (the key's line for mapping entries);
    with ``last``, the last occurrence of a key (duplicate keys)."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)]
            if not hits:
                return line
            k, node = hits[-1] if last else hits[0]
            line = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _config_error(path: Path, root: yaml.Node | None, problems: list[Problem]) -> ConfigError:
    located = sorted(
        ((line_of(root, loc, last=msg.startswith("duplicate key")), loc, msg) for loc, msg in problems),
        key=lambda x: x[0],
    )
    lines = [f"{path}: invalid policy file ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"]
    for line, loc, msg in located:
        where = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"  {path}:{line}: {where}: {msg}")
    return ConfigError("\n".join(lines))
