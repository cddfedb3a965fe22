"""Capacity at the SLO: a replica's service profile (the calibrated prior), its online correction from what the
router observed, and the largest per-replica concurrency at which a pool still meets the latency objectives for
the current request mix, with the requests per second that concurrency serves.

The service model (shared with the simulator, fitted by ``elo bench profile``), per replica and concurrency ``n``
(requests running on the replica, the new one included):

* TTFT = prompt tokens / prefill rate + ``ttft_overhead_s(n)``; the prefill rate is the point's own
  ``prefill_tokens_per_s`` where its runs measured one, else the profile's;
* every further output token takes ``tpot_s(n) + tpot_s_per_context_token(n) x context``, the context being the
  prompt plus the output so far (attention reads the whole KV cache at every step; a profile without the slope
  has a TPOT flat in the context);
* ``ttft_overhead_s``, ``tpot_s`` and the slope are measured points over concurrency, interpolated linearly between
  points, flat below the first and extrapolated along the last segment (never downward) above the last.

What the router observed corrects the prior by two factors (TTFT and TPOT, observed / predicted at the concurrency
each request was admitted at), learned with the prior as pseudo-observations, so an unmeasured pool keeps its
profile and a measured one converges to what it really does. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from deployments.configfile import StrictModel

__all__ = [
    "Capacity",
    "Correction",
    "ProfilePoint",
    "ReplicaProfile",
    "RequestMix",
    "capacity_at_slo",
    "erlang_b",
    "mean_context",
    "slots_for",
]


class ProfilePoint(StrictModel):
    """One measured concurrency level."""

    concurrency: int = Field(ge=1, description="Requests running on the replica at once (closed-loop clients).")
    ttft_overhead_s: float = Field(ge=0, description="Median TTFT minus the prefill time of the prompt, seconds.")
    tpot_s: float = Field(gt=0, description="Median time per output token after the first, seconds; with "
                          "tpot_s_per_context_token, the time at an empty context (the line's intercept).")
    tpot_s_per_context_token: float | None = Field(
        None, ge=0, description="Seconds each token of context (the prompt plus the output so far) adds to an output "
        "token's time, when the runs' prompt lengths varied; null: TPOT does not depend on the context.")
    prefill_tokens_per_s: float | None = Field(
        None, gt=0, description="This concurrency's own prefill rate, when its runs measured it apart (prompt "
        "lengths varied); null: the profile's. A batching engine prefills faster alone than into a busy batch.")


class ReplicaProfile(StrictModel):
    """How fast one replica of a pool serves, as a function of its concurrency and the prompt length."""

    name: str = Field(description="What was measured, e.g. 'vLLM, Llama-3.1-8B, 1x H100'.")
    source: str = Field(description="Where the numbers come from: a bench run, a publication (with its URL).")
    placeholder: bool = Field(
        False, description="True for numbers not measured on the hardware they describe; reports flag them."
    )
    max_concurrency: int = Field(
        ge=1, description="Sequences the engine runs at once (vLLM max_num_seqs, transformers max_batch_size); "
        "the router's max_ongoing_requests caps it further.",
    )
    prefill_tokens_per_s: float = Field(gt=0, description="Prompt tokens the replica prefills per second.")
    points: list[ProfilePoint] = Field(min_length=1, description="Measurements, by increasing concurrency.")

    @field_validator("points")
    @classmethod
    def _increasing(cls, v: list[ProfilePoint]) -> list[ProfilePoint]:
        for a, b in zip(v, v[1:], strict=False):
            if b.concurrency <= a.concurrency:
                raise ValueError(f"concurrency must increase from point to point, got {a.concurrency} then "
                                 f"{b.concurrency}")
        return v

    @model_validator(mode="after")
    def _points_within_limit(self) -> ReplicaProfile:
        if self.points[0].concurrency > self.max_concurrency:
            raise ValueError(f"the first point's concurrency {self.points[0].concurrency} is above max_concurrency "
                             f"{self.max_concurrency}")
        return self

    def ttft_overhead_s(self, n: float) -> float:
        return _interp(n, [p.concurrency for p in self.points], [p.ttft_overhead_s for p in self.points])

    def tpot_s(self, n: float, context_tokens: Any = 0.0) -> Any:
        """Seconds per output token at concurrency ``n`` with ``context_tokens`` of context (prompt + output so far;
        a number or an array)."""
        base = _interp(n, [p.concurrency for p in self.points], [p.tpot_s for p in self.points])
        return base + context_tokens * self.tpot_s_per_context_token(n)

    def tpot_s_per_context_token(self, n: float) -> float:
        return _interp(n, [p.concurrency for p in self.points],
                       [p.tpot_s_per_context_token or 0.0 for p in self.points])

    def decode_s(self, prompt_tokens: Any, output_tokens: Any, n: float) -> Any:
        """Seconds to decode the output tokens after the first at concurrency ``n`` (numbers or arrays)."""
        rest = np.maximum(np.asarray(output_tokens, float) - 1.0, 0.0)
        return rest * self.tpot_s(n, mean_context(prompt_tokens, output_tokens))

    def prefill_s_per_token(self, n: float) -> float:
        """Seconds per prompt token at concurrency ``n``: the points' own rates where given, else the profile's,
        interpolated like the other tables."""
        own = [p.prefill_tokens_per_s or self.prefill_tokens_per_s for p in self.points]
        return _interp(n, [p.concurrency for p in self.points], [1.0 / r for r in own])

    @property
    def prefill_throughput_s_per_token(self) -> float:
        """Seconds per prompt token of the engine's prefill throughput: its fastest rate. A slower rate at a higher
        concurrency is latency (a prompt joining a busy batch waits for it), not less throughput: the batch's
        prompts are prefilled together."""
        return min(1.0 / (p.prefill_tokens_per_s or self.prefill_tokens_per_s) for p in self.points)

    def ttft_s(self, prompt_tokens: float, n: float) -> float:
        """Predicted TTFT of a prompt at concurrency ``n`` (no prefill queue)."""
        return prompt_tokens * self.prefill_s_per_token(n) + self.ttft_overhead_s(n)


def mean_context(prompt_tokens: Any, output_tokens: Any) -> Any:
    """The mean context of a request's decode steps: output token j (2..out) reads the prompt and j - 1 outputs."""
    return prompt_tokens + output_tokens / 2


def _interp(n: float, xs: Sequence[int], ys: Sequence[float]) -> float:
    if n <= xs[0] or len(xs) == 1:
        return ys[0]
    if n >= xs[-1]:
        slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        return ys[-1] + slope * (n - xs[-1])
    return float(np.interp(n, xs, ys))


@dataclass(frozen=True)
class RequestMix:
    """Sizes of recent requests (prompt and output tokens, one pair per completed request)."""

    prompt_tokens: tuple[int, ...] = ()
    output_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.prompt_tokens) != len(self.output_tokens):
            raise ValueError("a request mix needs one output length per prompt length")

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    @classmethod
    def of(cls, pairs: Sequence[tuple[int, int]]) -> RequestMix:
        """From (prompt tokens, output tokens) pairs, e.g. the router's ``recent_requests``."""
        return cls(tuple(int(p) for p, _ in pairs), tuple(int(o) for _, o in pairs))

    def within(self, max_prompt_tokens: int | None) -> RequestMix:
        """The requests whose prompt is at most ``max_prompt_tokens`` (None: all)."""
        if max_prompt_tokens is None:
            return self
        keep = [i for i, p in enumerate(self.prompt_tokens) if p <= max_prompt_tokens]
        return RequestMix(tuple(self.prompt_tokens[i] for i in keep), tuple(self.output_tokens[i] for i in keep))

    def share_within(self, max_prompt_tokens: int | None) -> float:
        if max_prompt_tokens is None or not self.prompt_tokens:
            return 1.0
        return sum(1 for p in self.prompt_tokens if p <= max_prompt_tokens) / len(self.prompt_tokens)


DEFAULT_MIX = RequestMix((256,), (64,))  # before any request was seen: a short chat turn


@dataclass(frozen=True)
class Correction:
    """What the router's observations say about a pool's profile: observed / predicted TTFT and TPOT.

    ``weight`` is the (decayed) number of requests behind the TPOT factor, ``ttft_weight`` the number behind the
    TTFT one; ``prior_weight`` pseudo-requests at 1.0 stand for the calibrated profile, so ``factor = exp(sum of log
    ratios / (weight + prior_weight))``.

    TTFT is learned only from requests admitted to an otherwise idle replica (concurrency 1). One that joins a busy
    replica may wait behind other prompts' prefill: a queue a burst builds and the profile does not model, which
    replicas started after the burst would not shorten. Learned from those, a burst would read as a slower profile,
    size the pool up for minutes after it, then down again.
    """

    log_ttft_sum: float = 0.0
    log_tpot_sum: float = 0.0
    weight: float = 0.0
    ttft_weight: float = 0.0

    def ttft_scale(self, prior_weight: float) -> float:
        return math.exp(self.log_ttft_sum / (self.ttft_weight + prior_weight)) if self.ttft_weight > 0 else 1.0

    def tpot_scale(self, prior_weight: float) -> float:
        return math.exp(self.log_tpot_sum / (self.weight + prior_weight)) if self.weight > 0 else 1.0

    def decayed(self, factor: float) -> Correction:
        return Correction(self.log_ttft_sum * factor, self.log_tpot_sum * factor, self.weight * factor,
                          self.ttft_weight * factor)

    def observe(self, profile: ReplicaProfile, concurrency: int, requests: float, ttft_mean_s: float | None,
                tpot_mean_s: float | None, prompt_mean: float) -> Correction:
        """Add ``requests`` observations made at ``concurrency`` (their mean TTFT, TPOT and prompt length; the TPOT
        is compared at the mean prompt's context)."""
        if requests <= 0:
            return self
        out = self
        if ttft_mean_s is not None and ttft_mean_s > 0 and concurrency == 1:
            predicted = profile.ttft_s(prompt_mean, concurrency)
            if predicted > 0:
                out = replace(out, log_ttft_sum=out.log_ttft_sum + requests * math.log(ttft_mean_s / predicted),
                              ttft_weight=out.ttft_weight + requests)
        if tpot_mean_s is not None and tpot_mean_s > 0:
            out = replace(out, log_tpot_sum=out.log_tpot_sum
                          + requests * math.log(tpot_mean_s / profile.tpot_s(concurrency, prompt_mean)))
        return replace(out, weight=out.weight + requests)


@dataclass(frozen=True)
class Capacity:
    """What one replica of a pool can carry within the SLO for a mix: its SLO-safe concurrency and the requests
    per second it serves there. ``concurrency`` 0: the pool cannot meet the SLO for this mix even alone."""

    concurrency: int
    rps: float
    service_s: float  # mean seconds a request holds its slot at that concurrency
    ttft_p95_s: float
    e2e_p95_s: float
    limited_by: str  # "ttft", "e2e", "prefill" or "slots": what stops one more request per replica
    ttft_scale: float = 1.0
    tpot_scale: float = 1.0
    samples: float = 0.0

    def describe(self) -> str:
        learned = (f"learned from {self.samples:.0f} req (TTFT x{self.ttft_scale:.2f}, TPOT x{self.tpot_scale:.2f})"
                   if self.samples >= 1 else "profile prior")
        if self.concurrency == 0:
            return f"meets no SLO for this mix (p95 TTFT {self.ttft_p95_s:.2f}s at 1), {learned}"
        return (f"{self.concurrency}/replica at the SLO = {self.rps:.2f} rps/replica (service {self.service_s:.2f}s, "
                f"p95 TTFT {self.ttft_p95_s:.2f}s, E2E {self.e2e_p95_s:.2f}s; next limited by {self.limited_by}), "
                f"{learned}")


def capacity_at_slo(profile: ReplicaProfile, mix: RequestMix, *, ttft_slo_s: float, e2e_slo_s: float,
                    max_concurrency: int, correction: Correction | None = None, prior_weight: float = 20.0,
                    margin: float = 0.8, prefill_utilisation: float = 0.7, quantile: float = 0.95) -> Capacity:
    """The largest concurrency ``n <= max_concurrency`` at which the ``quantile`` of the mix's predicted TTFT and
    E2E stay within ``margin`` x the objectives, and the requests per second it serves: ``n / service(n)``
    (Little's law), capped so that prefill is busy at most ``prefill_utilisation`` of the time.
    """
    mix = mix if len(mix) else DEFAULT_MIX
    corr = correction or Correction()
    ts, ps = corr.ttft_scale(prior_weight), corr.tpot_scale(prior_weight)
    prompts = np.asarray(mix.prompt_tokens, float)
    outputs = np.asarray(mix.output_tokens, float)
    limit = max(1, min(max_concurrency, profile.max_concurrency))

    def at(n: int) -> tuple[float, float, float]:
        ttft = (prompts * profile.prefill_s_per_token(n) + profile.ttft_overhead_s(n)) * ts
        e2e = ttft + profile.decode_s(prompts, outputs, n) * ps
        return float(np.quantile(ttft, quantile)), float(np.quantile(e2e, quantile)), float(e2e.mean())

    best: tuple[int, float, float, float] | None = None
    limited_by = "slots"
    for n in range(1, limit + 1):
        ttft_q, e2e_q, service = at(n)
        if ttft_q > margin * ttft_slo_s:
            limited_by = "ttft"
            break
        if e2e_q > margin * e2e_slo_s:
            limited_by = "e2e"
            break
        best = (n, ttft_q, e2e_q, service)
    if best is None:
        ttft_q, e2e_q, service = at(1)
        return Capacity(0, 0.0, service, ttft_q, e2e_q, limited_by, ts, ps, corr.weight)
    n, ttft_q, e2e_q, service = best
    rps = n / service if service > 0 else math.inf
    prefill_mean_s = float(prompts.mean()) * profile.prefill_throughput_s_per_token * ts
    if prefill_mean_s > 0 and rps * prefill_mean_s > prefill_utilisation:
        rps = prefill_utilisation / prefill_mean_s
        # The concurrency that rate needs (Little), so the router does not admit more than prefill keeps up with.
        n = max(1, min(n, math.ceil(rps * service)))
        limited_by = "prefill"
    return Capacity(n, rps, service, ttft_q, e2e_q, limited_by, ts, ps, corr.weight)


def erlang_b(servers: int, offered_erlangs: float) -> float:
    """Probability that a request finds all ``servers`` busy (Erlang's loss formula) at ``offered_erlangs`` of
    load: the share of requests a pool of that many SLO-safe slots passes on to the next pool."""
    if offered_erlangs <= 0:
        return 0.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_erlangs * b / (k + offered_erlangs * b)
    return b


def slots_for(offered_erlangs: float, overflow: float, max_slots: int) -> int:
    """Fewest slots (at most ``max_slots``) that pass on at most ``overflow`` of the requests (Erlang B)."""
    if offered_erlangs <= 0:
        return 0
    b = 1.0
    for k in range(1, max_slots + 1):
        b = offered_erlangs * b / (k + offered_erlangs * b)
        if b <= overflow:
            return k
    return max_slots


def late_share(servers: int, offered_erlangs: float, wait_s: float, service_s: float) -> float:
    """Share of requests that would wait longer than ``wait_s`` for one of ``servers`` slots (M/M/c: Erlang C
    times the tail of the wait): what a pool cannot serve within its SLO slack and must pass on."""
    if offered_erlangs <= 0:
        return 0.0
    if servers <= offered_erlangs:
        return 1.0
    b = erlang_b(servers, offered_erlangs)
    c = b / (1.0 - (offered_erlangs / servers) * (1.0 - b))
    return c * math.exp(-(servers - offered_erlangs) * max(0.0, wait_s) / max(service_s, 1e-9))


def slots_within(offered_erlangs: float, overflow: float, max_slots: int, wait_s: float, service_s: float) -> int:
    """Fewest slots (at most ``max_slots``) with at most ``overflow`` of the requests waiting beyond ``wait_s``."""
    if offered_erlangs <= 0:
        return 0
    for k in range(1, max_slots + 1):
        if late_share(k, offered_erlangs, wait_s, service_s) <= overflow:
            return k
    return max_slots
