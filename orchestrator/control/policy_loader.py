"""Loading a policy file above the policy registry: the models' checks, then the policy name and its knobs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from deployments.configfile import ConfigError, Problem, describe, load_model
from orchestrator.control.config import PolicyFile
from orchestrator.control.policies.registry import DEFAULT_REGISTRY, UnknownPolicyError, resolve_policy

__all__ = ["ConfigError", "check_policy_choice", "load_policy_file"]


def load_policy_file(path: str | Path, registry: Mapping[str, Any] | None = None) -> PolicyFile:
    """Read and validate a policy file; the policy name and its knobs are checked against ``registry``
    (default: the built-ins). Profile paths are relative to the file. Raises ConfigError naming the file, the line
    and the field."""
    path = Path(path)
    return load_model(path, PolicyFile, "policy file", context={"base_dir": path.parent},
                      check=lambda cfg: check_policy_choice(cfg, registry))


def check_policy_choice(cfg: PolicyFile, registry: Mapping[str, Any] | None = None) -> list[Problem]:
    """Problems with ``policy.name`` (not registered, not importable) or ``policy.knobs`` (against the factory's
    ``Knobs`` model, when it has one)."""
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
        return [(("policy", "knobs", *loc), msg) for loc, msg in (describe(err, knobs_model) for err in e.errors())]
    return []
