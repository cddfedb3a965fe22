"""Shared cores: pools whose replicas run on one machine's cores, and what one replica more is worth there.

On the embedded default every local pool's replicas run on the same few cores. A serving replica keeps its
threads busy (``busy_cores``), a starting one keeps loading and warming up (``startup_cores``). While the cores
they ask for stay within the machine's, every replica runs at its measured (isolated) speed; beyond that the
cores are shared in proportion (processor sharing), so every replica slows by ``cores / demand``. Adding a
replica to saturated cores then adds no capacity: it only takes CPU from the others, and while it starts it
slows them down. The simulator and the controller use this one model (``SimConfig.machines``, and the local
pool backend's :meth:`LocalPoolBackend.shared_cores`); remote pools (KubeRay nodes) have none: independent capacity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SharedCores:
    """A machine's core budget and the cores each pool's replicas draw from it."""

    cores: float
    busy_cores: Mapping[str, float]  # per pool: cores one serving replica keeps busy (its threads)
    startup_cores: Mapping[str, float] = field(default_factory=dict)  # per pool: cores one starting replica uses
    name: str = "machine"

    def __post_init__(self) -> None:
        if not self.cores > 0:
            raise ValueError(f"{self.name}: cores must be > 0, got {self.cores}")
        for what, table in (("busy_cores", self.busy_cores), ("startup_cores", self.startup_cores)):
            for pool, c in table.items():
                if c < 0:
                    raise ValueError(f"{self.name}: {what}[{pool!r}] must be >= 0, got {c}")
        extra = set(self.startup_cores) - set(self.busy_cores)
        if extra:
            raise ValueError(f"{self.name}: startup_cores names pools without busy_cores: {sorted(extra)}")

    @property
    def pools(self) -> frozenset[str]:
        return frozenset(self.busy_cores)

    def demand(self, busy: Mapping[str, int], starting: Mapping[str, int] | None = None) -> float:
        """Cores asked for by ``busy[pool]`` serving and ``starting[pool]`` starting replicas of the pools here."""
        out = sum(self.busy_cores[p] * n for p, n in busy.items() if p in self.busy_cores)
        for p, n in (starting or {}).items():
            out += self.startup_cores.get(p, 0.0) * n
        return out

    def speed(self, busy: Mapping[str, int], starting: Mapping[str, int] | None = None) -> float:
        """Share of its isolated speed every replica here runs at (1.0 while the cores suffice)."""
        d = self.demand(busy, starting)
        return 1.0 if d <= self.cores else self.cores / d

    def capacity_rps(self, replicas: Mapping[str, int], rps_per_replica: Mapping[str, float]) -> float:
        """Requests/s the pools here serve with ``replicas`` all busy, each at ``rps_per_replica`` when alone."""
        here = {p: n for p, n in replicas.items() if p in self.busy_cores}
        return sum(n * rps_per_replica.get(p, 0.0) for p, n in here.items()) * self.speed(here)

    def describe(self, replicas: Mapping[str, int]) -> str:
        here = {p: n for p, n in replicas.items() if p in self.busy_cores}
        count = sum(here.values())
        return (f"{self.cores:g} cores shared by {count} replica{'s' if count != 1 else ''} "
                f"({self.demand(here):g} cores busy)")


__all__ = ["SharedCores"]
