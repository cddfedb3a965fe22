"""The simulation config (YAML): per pool its replica profile, startup delays, router limits and eligibility; the
router settings; workload clamps. Validated once, at the edge."""

from __future__ import annotations

import functools
import math
import random
import statistics
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from deployments.config import AppConfig, Eligibility, PoolConfig, RouterConfig
from orchestrator.control.config import PolicyFile, StrictModel
from orchestrator.control.machine import SharedCores
from orchestrator.sim._yaml import SimConfigError, load_model
from orchestrator.sim.profile import ReplicaProfile, load_profile

DEFAULT_SIM_CONFIG_PATH = Path(__file__).with_name("default_sim.yaml")


class ConstantDelay(StrictModel):
    dist: Literal["constant"] = "constant"
    value: float = Field(ge=0, description="Seconds, every time.")

    def sample(self, rng: random.Random) -> float:
        return self.value

    def quantile(self, q: float) -> float:
        return self.value


class UniformDelay(StrictModel):
    dist: Literal["uniform"]
    low: float = Field(ge=0, description="Shortest delay, seconds.")
    high: float = Field(ge=0, description="Longest delay, seconds.")

    @model_validator(mode="after")
    def _ordered(self) -> UniformDelay:
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        return self

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def quantile(self, q: float) -> float:
        return self.low + q * (self.high - self.low)


class LogNormalDelay(StrictModel):
    dist: Literal["lognormal"]
    median: float = Field(gt=0, description="Median delay, seconds.")
    sigma: float = Field(ge=0, description="Standard deviation of log(delay): 0.25 puts 95% within about x0.6..x1.6.")
    max: float | None = Field(None, gt=0, description="Cap on a sample, seconds (a timeout); null: none.")

    def sample(self, rng: random.Random) -> float:
        x = self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return min(x, self.max) if self.max is not None else x

    def quantile(self, q: float) -> float:
        x = self.median * math.exp(self.sigma * statistics.NormalDist().inv_cdf(min(max(q, 1e-9), 1 - 1e-9)))
        return min(x, self.max) if self.max is not None else x


def _number_is_constant(v: Any) -> Any:
    return {"dist": "constant", "value": v} if isinstance(v, int | float) and not isinstance(v, bool) else v


Delay = Annotated[ConstantDelay | UniformDelay | LogNormalDelay, Field(discriminator="dist"),
                  BeforeValidator(_number_is_constant)]


class PoolSim(StrictModel):
    """One simulated pool: how its replicas serve, start, and are limited by the router."""

    engine: Literal["vllm", "transformers"] = Field(description="Engine of the pool (as in the app config).")
    profile: ReplicaProfile = Field(
        description="Service model of one replica: a path to a profile YAML (relative to this file) or inline."
    )
    initial_replicas: int = Field(1, ge=0, description="Replicas ready at time 0 (the app config's replicas).")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests one replica works on at once (router slots).")
    max_queued_requests: int = Field(16, ge=0, description="Requests the router lets wait per ready replica.")
    eligibility: Eligibility = Field(default_factory=Eligibility, description="Which requests the pool may take.")
    node_startup_s: Delay = Field(default_factory=lambda: ConstantDelay(value=0.0),
                                  description="Ask for a node -> node joined: a number or a distribution.")
    replica_startup_s: Delay = Field(default_factory=lambda: ConstantDelay(value=0.0),
                                     description="Replica placed on a ready node -> serving (image, weights, warm-up).")
    max_nodes: int | None = Field(None, ge=0, description="Nodes the backend can provide at most; null: no cap.")
    batching: Literal["continuous", "waves"] | None = Field(
        None, description="How a replica batches: 'continuous' (vLLM: a request joins the running batch at its next "
        "step), 'waves' (the edge engine, deployments/cpu_engine.py: requests that arrive while a batch decodes "
        "wait for it to end, then start together); null: the engine's own. In waves the profile's TTFT overhead at "
        "concurrency 1 and its TPOT per batch size are used; the wait for the running batch is simulated.")

    @property
    def batches_in_waves(self) -> bool:
        return (self.batching or ("waves" if self.engine == "transformers" else "continuous")) == "waves"

    @field_validator("profile", mode="before")
    @classmethod
    def _profile_path(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str | Path):
            base = Path((info.context or {}).get("base_dir", "."))
            return load_profile(base / v)
        return v


class SharedPoolSim(StrictModel):
    """What one replica of a pool draws from a shared machine's cores."""

    busy_cores: float = Field(gt=0, description="Cores one serving replica keeps busy (its engine's threads).")
    startup_cores: float = Field(1.0, ge=0, description="Cores one starting replica keeps busy (loading, warm-up).")


class MachineSim(StrictModel):
    """A machine whose cores the replicas of several pools share (the embedded default's local nodes): beyond
    its cores, every replica on it slows in proportion, and starting replicas slow the serving ones."""

    cores: float = Field(gt=0, description="Cores of the machine.")
    pools: dict[str, SharedPoolSim] = Field(min_length=1, description="Pools whose replicas run on it.")

    def shared(self, name: str) -> SharedCores:
        return SharedCores(self.cores, {p: s.busy_cores for p, s in self.pools.items()},
                           {p: s.startup_cores for p, s in self.pools.items()}, name=name)


class Workload(StrictModel):
    """How trace rows become requests (the same clamps as ``elo bench serve``)."""

    max_prompt_tokens: int | None = Field(None, ge=1, description="Clamp prompt lengths (e.g. to a demo context).")
    max_output_tokens: int | None = Field(None, ge=1, description="Clamp output lengths (max_tokens).")


class SimConfig(StrictModel):
    """The simulated deployment: pools, router and workload."""

    pools: dict[str, PoolSim] = Field(min_length=1, description="Simulated pools by name (the policy's pools).")
    router: RouterConfig = Field(default_factory=RouterConfig, description="The app config's router section.")
    max_model_len: int | None = Field(
        None, ge=16, description="Context length: prompt + output tokens above it get 400, as the router answers.")
    workload: Workload = Field(default_factory=Workload)
    machines: dict[str, MachineSim] = Field(
        default_factory=dict, description="Machines whose cores pools share (none: every replica is independent).")
    drain_s: float = Field(120.0, ge=0, description="Keep ticking this long after the last arrival (scale-down).")
    seed: int = Field(0, description="Seed of the startup-delay samples.")

    @model_validator(mode="after")
    def _router_pools_known(self) -> SimConfig:
        self.app_config()  # the same checks as the app config (default pool, class preferences)
        placed: dict[str, str] = {}
        for m, machine in self.machines.items():
            for pool in machine.pools:
                if pool not in self.pools:
                    raise ValueError(f"machines.{m}: unknown pool {pool!r}; pools are {sorted(self.pools)}")
                if pool in placed:
                    raise ValueError(f"pool {pool!r} is on machines {placed[pool]!r} and {m!r}: one at most")
                placed[pool] = m
        return self

    def shared(self) -> tuple[SharedCores, ...]:
        """The shared machines, as the controller's snapshot carries them."""
        return tuple(m.shared(name) for name, m in self.machines.items())

    def app_config(self) -> AppConfig:
        """The app config the router would run with (what `deployments.routing.route` and `fill_order` read)."""
        pools = {name: PoolConfig(engine=p.engine, replicas=p.initial_replicas,
                                  max_ongoing_requests=p.max_ongoing_requests,
                                  max_queued_requests=p.max_queued_requests, eligibility=p.eligibility)
                 for name, p in self.pools.items()}
        return AppConfig(pools=pools, router=self.router)

    def check_matches(self, policy: PolicyFile, where: str = "sim config") -> None:
        """The policy must size exactly the simulated pools."""
        if set(policy.pools) != set(self.pools):
            raise SimConfigError(f"{where}: its pools {sorted(self.pools)} differ from the policy's pools "
                                 f"{sorted(policy.pools)}")


def load_sim_config(path: str | Path | None = None) -> SimConfig:
    """Read a sim config (default: the shipped ``default_sim.yaml``); profile paths are relative to the file."""
    p = Path(path) if path is not None else DEFAULT_SIM_CONFIG_PATH
    return load_model(p, SimConfig, "sim config", context={"base_dir": p.parent})


@functools.cache
def default_sim_config() -> SimConfig:
    return load_sim_config(DEFAULT_SIM_CONFIG_PATH)


__all__ = [
    "DEFAULT_SIM_CONFIG_PATH",
    "ConstantDelay",
    "Delay",
    "LogNormalDelay",
    "MachineSim",
    "PoolSim",
    "SharedPoolSim",
    "SimConfig",
    "UniformDelay",
    "Workload",
    "default_sim_config",
    "load_sim_config",
]
