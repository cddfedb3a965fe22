"""Autoscaling controller, decision layer: snapshot (observe) → policy + guardrails (decide) → plan (to act on).

Everything in this package is pure: no Ray, no HTTP, no Kubernetes, no clock. Time comes in as ``now``
(seconds, any epoch) and the world comes in as a :class:`ClusterSnapshot`, so the same code runs in the
live control loop, in the trace-replay simulator and in unit tests with a fake clock.
"""

from orchestrator.control.config import ConfigError, PolicyFile, policy_json_schema
from orchestrator.control.plan import PoolChange, PoolTarget, ScalePlan
from orchestrator.control.policies import (
    DEFAULT_REGISTRY,
    Policy,
    PolicyState,
    UnknownPolicyError,
    apply_guardrails,
    build_policy,
    resolve_policy,
)
from orchestrator.control.policy_loader import load_policy_file
from orchestrator.control.snapshot import ClusterSnapshot, PoolSnapshot

__all__ = [
    "DEFAULT_REGISTRY",
    "ClusterSnapshot",
    "ConfigError",
    "Policy",
    "PolicyFile",
    "PolicyState",
    "PoolChange",
    "PoolSnapshot",
    "PoolTarget",
    "ScalePlan",
    "UnknownPolicyError",
    "apply_guardrails",
    "build_policy",
    "load_policy_file",
    "policy_json_schema",
    "resolve_policy",
]
