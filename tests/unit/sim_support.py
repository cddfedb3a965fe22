"""Builders shared by the simulator's unit tests: a small two-pool deployment with round-number service times."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.control.config import PolicyFile
from orchestrator.sim.model import SimConfig

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AZURE_CODE_TRACE = PROJECT_ROOT / ".." / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"


def profile(overhead_s: float = 0.05, tpot_s: float = 0.02, prefill: float = 1e6, max_concurrency: int = 8,
            slowdown: float = 0.0) -> dict[str, Any]:
    """A profile whose TPOT grows by ``slowdown`` per extra request (0: flat)."""
    points = [{"concurrency": 1, "ttft_overhead_s": overhead_s, "tpot_s": tpot_s}]
    if slowdown:
        points.append({"concurrency": max_concurrency, "ttft_overhead_s": overhead_s,
                       "tpot_s": tpot_s + slowdown * (max_concurrency - 1)})
    return {"name": "test replica", "source": "unit test", "max_concurrency": max_concurrency,
            "prefill_tokens_per_s": prefill, "points": points}


def sim_config(*, cloud_startup: float | dict = 20.0, edge_startup: float | dict = 5.0, node_startup: float = 5.0,
               cloud_initial: int = 1, edge_initial: int = 1, cloud_profile: dict | None = None,
               edge_profile: dict | None = None, seed: int = 0, drain_s: float = 60.0,
               router: dict | None = None, machines: dict | None = None, **pool_changes: dict) -> SimConfig:
    pools = {
        "cloud": {"engine": "vllm", "profile": cloud_profile or profile(), "initial_replicas": cloud_initial,
                  "max_ongoing_requests": 8, "max_queued_requests": 8, "node_startup_s": node_startup,
                  "replica_startup_s": cloud_startup},
        "edge": {"engine": "transformers", "profile": edge_profile or profile(tpot_s=0.04, max_concurrency=4),
                 "initial_replicas": edge_initial, "max_ongoing_requests": 4, "max_queued_requests": 4,
                 "node_startup_s": node_startup, "replica_startup_s": edge_startup,
                 "batching": "continuous"},  # the synthetic profiles describe continuous batching
    }
    for name, changes in pool_changes.items():
        pools[name].update(changes)
    return SimConfig.model_validate({"pools": pools, "router": router or {"fill_order": ["cloud", "edge"]},
                                     "drain_s": drain_s, "seed": seed, "machines": machines or {}})


def policy_file(*, name: str = "queue_target", knobs: dict | None = None, cloud: dict | None = None,
                edge: dict | None = None, guardrails: dict | None = None, tick_interval_s: float = 5.0,
                slo: dict | None = None) -> PolicyFile:
    pools = {
        "cloud": {"engine": "vllm", "cost_per_hour_usd": 2.5, "min_replicas": 0, "max_replicas": 6,
                  "startup_s": 25, "target_ongoing_requests_per_replica": 4, **(cloud or {})},
        "edge": {"engine": "transformers", "cost_per_hour_usd": 0.1, "min_replicas": 1, "max_replicas": 3,
                 "startup_s": 10, "target_ongoing_requests_per_replica": 2, **(edge or {})},
    }
    g = {"max_step_per_tick": 10, "upscale_delay_s": 15, "downscale_delay_s": 60, "cooldown_s": 0,
         **(guardrails or {})}
    return PolicyFile.model_validate({"pools": pools, "policy": {"name": name, "knobs": knobs or {}},
                                      "guardrails": g, "tick_interval_s": tick_interval_s,
                                      "slo": slo or {"ttft_p95_s": 2.0, "e2e_p95_s": 20.0}})
