"""Search policy knobs against a trace: grid or seeded random candidates from a SPACE.yaml, each simulated; the
cost vs SLO-attainment Pareto front; the cheapest policy meeting a target attainment, as a valid policy file.

SPACE.yaml::

    method: random            # or grid
    samples: 20               # random: candidates besides the unmodified policy
    seed: 0
    target_attainment: 0.95   # optional; --target-attainment overrides it
    knobs:                    # dotted paths into the policy file
      policy.knobs.slo_margin: [0.6, 0.8, 1.0]                   # a list: pick one of these
      guardrails.downscale_delay_s: {low: 30, high: 600}          # a range: uniform (random), or num points (grid)
      guardrails.max_step_per_tick: {low: 1, high: 4, integer: true}
      tick_interval_s: {low: 2, high: 20, log: true, num: 3}

A path must name an existing setting of the policy file, or a knob of the file's policy.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from orchestrator.control.config import PolicyFile, StrictModel
from orchestrator.control.policies import build_policy, resolve_policy
from orchestrator.control.policy_loader import load_policy_file
from orchestrator.sim._yaml import SimConfigError, line_of, load_model, read_yaml
from orchestrator.sim.engine import Workload, simulate
from orchestrator.sim.model import SimConfig
from orchestrator.sim.report import RunSummary, save_figure, summarize

MAX_GRID = 2000


class Range(StrictModel):
    low: float
    high: float
    integer: bool = Field(False, description="Draw whole numbers.")
    log: bool = Field(False, description="Draw uniformly in log space (low must be > 0).")
    num: int | None = Field(None, ge=2, description="Grid: this many points from low to high (default 3).")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        if self.log and self.low <= 0:
            raise ValueError(f"log ranges need low > 0, got {self.low}")
        return self

    def draw(self, rng: random.Random) -> float | int:
        if self.log:
            x = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            x = rng.uniform(self.low, self.high)
        return round(x) if self.integer else round(x, 6)

    def grid(self) -> list[float | int]:
        n = self.num or 3
        if self.log:
            pts = [math.exp(math.log(self.low) + (math.log(self.high) - math.log(self.low)) * i / (n - 1))
                   for i in range(n)]
        else:
            pts = [self.low + (self.high - self.low) * i / (n - 1) for i in range(n)]
        out: list[float | int] = [round(x) if self.integer else round(x, 6) for x in pts]
        return list(dict.fromkeys(out))


class SearchSpace(StrictModel):
    method: Literal["grid", "random"] = "random"
    samples: int = Field(20, ge=1, description="Random search: candidates besides the unmodified policy.")
    seed: int = 0
    target_attainment: float | None = Field(None, gt=0, le=1)
    knobs: dict[str, list[Any] | Range] = Field(min_length=1, description="Dotted policy-file path -> values.")

    @model_validator(mode="after")
    def _lists_not_empty(self) -> SearchSpace:
        for path, v in self.knobs.items():
            if isinstance(v, list) and not v:
                raise ValueError(f"knobs.{path}: an empty list of values")
        return self

    def candidates(self) -> list[dict[str, Any]]:
        """Knob assignments, deterministic for a seed (the unmodified policy is not among them)."""
        if self.method == "grid":
            axes = [(p, v if isinstance(v, list) else v.grid()) for p, v in self.knobs.items()]
            size = math.prod(len(vals) for _, vals in axes)
            if size > MAX_GRID:
                raise ValueError(f"the grid has {size} points (more than {MAX_GRID}); use method: random")
            return [dict(zip([p for p, _ in axes], combo, strict=True))
                    for combo in itertools.product(*(vals for _, vals in axes))]
        rng = random.Random(self.seed)
        return [{p: (rng.choice(v) if isinstance(v, list) else v.draw(rng)) for p, v in self.knobs.items()}
                for _ in range(self.samples)]


def load_space(path: str | Path, policy_file: PolicyFile) -> SearchSpace:
    """Read SPACE.yaml; every path must exist in the policy file (or be a knob of its policy)."""
    space = load_model(path, SearchSpace, "search space")
    _, root = read_yaml(path, "search space")
    doc = policy_file.model_dump(mode="json")
    problems = []
    for knob_path in space.knobs:
        msg = _check_path(doc, knob_path, policy_file)
        if msg:
            problems.append(f"  {path}:{line_of(root, ('knobs', knob_path))}: knobs.{knob_path}: {msg}")
    if problems:
        raise SimConfigError(f"{path}: invalid search space:\n" + "\n".join(problems))
    return space


def _check_path(doc: dict[str, Any], path: str, pf: PolicyFile) -> str | None:
    parts = path.split(".")
    if parts[:2] == ["policy", "knobs"] and len(parts) == 3:
        knobs_model = getattr(resolve_policy(pf.policy.name), "Knobs", None)
        known = list(knobs_model.model_fields) if isinstance(knobs_model, type) and issubclass(
            knobs_model, BaseModel) else list(doc["policy"]["knobs"])
        if parts[2] in known or parts[2] in doc["policy"]["knobs"]:
            return None
        return _unknown(parts[2], known, f"policy {pf.policy.name!r} has no knob")
    node: Any = doc
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = list(node) if isinstance(node, dict) else []
            where = ".".join(parts[:i]) or "the policy file"
            return _unknown(part, known, f"{where} has no setting")
        node = node[part]
    if isinstance(node, dict):
        return "names a section, not a setting"
    return None


def _unknown(name: str, known: Sequence[str], what: str) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    return f"{what} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def apply_knobs(policy_file: PolicyFile, values: dict[str, Any]) -> PolicyFile:
    """A validated policy file with ``values`` set at their dotted paths (ValueError if invalid)."""
    doc = copy.deepcopy(policy_file.model_dump(mode="json"))
    for path, value in values.items():
        node = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    try:
        pf = PolicyFile.model_validate(doc)
        build_policy(pf)
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from e
    return pf


@dataclass(frozen=True)
class Candidate:
    index: int  # 0: the unmodified policy
    values: dict[str, Any]
    summary: RunSummary | None
    policy_file: PolicyFile | None
    error: str | None = None
    on_front: bool = False


def pareto_front(cands: Sequence[Candidate]) -> list[Candidate]:
    """Candidates no other beats on both cost (lower) and attainment (higher), cheapest first."""
    ok = sorted((c for c in cands if c.summary is not None),
                key=lambda c: (c.summary.cost_usd, -c.summary.slo_attainment, c.index))  # type: ignore[union-attr]
    front, best = [], -1.0
    for c in ok:
        att = c.summary.slo_attainment  # type: ignore[union-attr]
        if att > best + 1e-12:
            front.append(c)
            best = att
    return front


@dataclass(frozen=True)
class TuneResult:
    candidates: list[Candidate]
    front: list[Candidate]
    best: Candidate | None
    target_attainment: float


def tune(workload: Workload, policy_file: PolicyFile, sim: SimConfig, space: SearchSpace, *,
         target_attainment: float, seed: int | None = None,
         progress: Callable[[Candidate], None] | None = None) -> TuneResult:
    """Simulate the unmodified policy and every candidate; the best is the cheapest meeting the target."""
    cands: list[Candidate] = []
    for i, values in enumerate([{}, *space.candidates()]):
        try:
            pf = apply_knobs(policy_file, values) if values else policy_file
        except ValueError as e:
            c = Candidate(i, values, None, None, error=str(e))
        else:
            result = simulate(workload, pf, sim, seed=seed, label="base" if i == 0 else f"#{i}")
            c = Candidate(i, values, summarize(result), pf)
        cands.append(c)
        if progress:
            progress(c)
    front = pareto_front(cands)
    ids = {c.index for c in front}
    cands = [Candidate(c.index, c.values, c.summary, c.policy_file, c.error, c.index in ids) for c in cands]
    front = [c for c in cands if c.on_front]
    front.sort(key=lambda c: c.summary.cost_usd)  # type: ignore[union-attr]
    meeting = [c for c in cands if c.summary is not None and c.summary.slo_attainment >= target_attainment]
    best = min(meeting, key=lambda c: (c.summary.cost_usd, -c.summary.slo_attainment, c.index),  # type: ignore
               default=None)
    return TuneResult(cands, front, best, target_attainment)


def write_policy(path: str | Path, policy_file: PolicyFile, header: str) -> Path:
    """Write a policy file YAML and check it loads as `elo policy validate` loads it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = yaml.safe_dump(policy_file.model_dump(mode="json"), sort_keys=False, width=120)
    p.write_text("".join(f"# {line}\n" for line in header.splitlines()) + body, encoding="utf-8")
    load_policy_file(p)
    return p


def plot_front(result: TuneResult, path: str | Path) -> Path:
    """Cost vs SLO attainment of every candidate; the front joined; the target and the best marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in result.candidates if c.summary is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    ax.scatter([c.summary.cost_usd for c in ok], [c.summary.slo_attainment * 100 for c in ok],  # type: ignore
               s=18, color="tab:grey", alpha=0.6, label="candidates")
    fx = [c.summary.cost_usd for c in result.front]  # type: ignore[union-attr]
    fy = [c.summary.slo_attainment * 100 for c in result.front]  # type: ignore[union-attr]
    ax.plot(fx, fy, "-o", color="tab:blue", ms=5, label="Pareto front")
    base = next((c for c in ok if c.index == 0), None)
    if base is not None:
        ax.scatter([base.summary.cost_usd], [base.summary.slo_attainment * 100], marker="s", s=60,  # type: ignore
                   color="black", label="policy as given", zorder=3)
    if result.best is not None and result.best.summary is not None:
        ax.scatter([result.best.summary.cost_usd], [result.best.summary.slo_attainment * 100], marker="*", s=200,
                   color="tab:red", label=f"best meeting {result.target_attainment:.0%}", zorder=4)
    ax.axhline(result.target_attainment * 100, color="tab:red", ls=":", lw=1)
    for c in result.front:
        ax.annotate(f"#{c.index}", (c.summary.cost_usd, c.summary.slo_attainment * 100),  # type: ignore
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("cost ($)")
    ax.set_ylabel("SLO attainment (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


__all__ = ["Candidate", "Range", "SearchSpace", "TuneResult", "apply_knobs", "load_space", "pareto_front",
           "plot_front", "tune", "write_policy"]
