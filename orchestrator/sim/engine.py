"""Discrete-event replay of a trace: production routing (``deployments.routing.route``) and the production ``Controller`` over
the simulated cluster, on a fake clock (a heap of timed events; nothing sleeps).

Per request, exactly what the router does: the context check (400), then the one routing entry point
(``deployments.routing.route``) over the simulated pools' ``PoolView``s with the controller's routing plan applied
(``deployments.contract.with_plan`` and ``fill_order``); ROUTE sends it to the pool (the least busy replica with a
slot, else the pool's queue), a refusal is answered with its status and counted as rejected demand of the first
pool of its order. A request that no replica can take at once but that ``route`` tells to WAIT is held,
re-routed whenever room may have appeared, and refused once it waited ``router.cold_start_wait_s`` — as the
router's dispatcher does. A request whose first token has not come ``router.request_timeout_s`` after it arrived
is dropped with the sim-only status 504.

Pools on a shared machine (``SimConfig.machines``, the embedded default's local nodes) share its cores: a request
admitted while the replicas serving and starting there ask for more cores than it has runs slower than its
profile by ``demand / cores`` (prefill and decode, frozen at admission like the concurrency), and a replica's
start stretches the same way (see :mod:`orchestrator.control.machine`).

Metrics windows are the router's own :class:`deployments.window.PoolWindow`, fed at the same moments (arrival
and first token at the first token, completion and its service sample at the end, refusals at once), and read by
the controller through the same producer and reader of the router's statistics, so it sees the signals it sees
live. The controller ticks every ``tick_interval_s`` of the policy file.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deployments.contract import fill_order, with_plan
from deployments.routing import Outcome, RequestFeatures, RouteDecision, route
from deployments.window import ServiceSample
from orchestrator.bench.trace import TraceRequest
from orchestrator.control.capacity import mean_context
from orchestrator.control.config import PolicyFile, Slo
from orchestrator.control.loop import Controller
from orchestrator.control.policies import Policy
from orchestrator.sim.cluster import (
    NODE_READY,
    READY,
    REPLICA_READY,
    PoolAccount,
    SimCluster,
    SimPool,
    SimReplica,
    account,
)
from orchestrator.sim.model import SimConfig
from orchestrator.sim.profile import ServiceCurve

STATUS_TIMEOUT = 504  # sim-only: no first token within router.request_timeout_s
STATUS_LABELS = {200: "ok", 400: "400 ineligible/too long", 429: "429 busy", 503: "503 unavailable",
                 504: "timeout"}

_FIRST_TOKEN, _FINISH, _WAIT_TIMEOUT, _TICK = 2, 3, 4, 5  # NODE_READY=0 and REPLICA_READY=1 come from the cluster


@dataclass(frozen=True)
class Workload:
    """The requests a run replays, after time compression, rate scaling and clamps."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    clamped_prompts: int = 0
    clamped_outputs: int = 0

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0


def prepare_workload(trace: Sequence[TraceRequest], *, speedup: float = 1.0, rate_scale: float = 1.0,
                     seed: int = 0, max_prompt_tokens: int | None = None,
                     max_output_tokens: int | None = None) -> Workload:
    """Trace rows as simulator requests.

    ``speedup`` divides arrival times (2.0: the same requests in half the time). ``rate_scale`` changes the
    number of requests over the same duration: each row is kept ``floor(k)`` times and once more with
    probability ``frac(k)`` (seeded); copies after the first are shifted by a uniform jitter of up to the mean
    gap between arrivals, so scaling up does not stack identical bursts. Sizes are clamped like
    ``elo bench serve`` (to the maxima given and to >= 1; clamps are counted).
    """
    if not speedup > 0 or not math.isfinite(speedup):
        raise ValueError(f"speedup must be a positive number, got {speedup}")
    if not rate_scale > 0 or not math.isfinite(rate_scale):
        raise ValueError(f"rate_scale must be a positive number, got {rate_scale}")
    n = len(trace)
    arr = np.fromiter((r.arrival_s for r in trace), float, n) / speedup
    p = np.fromiter((r.prompt_tokens for r in trace), np.int64, n)
    o = np.fromiter((r.output_tokens for r in trace), np.int64, n)
    if rate_scale != 1.0 and n:
        rng = np.random.default_rng(seed)
        whole, frac = int(rate_scale), rate_scale - int(rate_scale)
        gap = (arr[-1] - arr[0]) / max(1, n - 1)
        parts_a, parts_p, parts_o = [], [], []
        for copy in range(whole + (1 if frac > 0 else 0)):
            keep = np.ones(n, bool) if copy < whole else rng.random(n) < frac
            shift = 0.0 if copy == 0 else rng.uniform(0.0, gap, n)[keep]
            parts_a.append(arr[keep] + shift)
            parts_p.append(p[keep])
            parts_o.append(o[keep])
        arr, p, o = np.concatenate(parts_a), np.concatenate(parts_p), np.concatenate(parts_o)
        order = np.argsort(arr, kind="stable")
        arr, p, o = arr[order], p[order], o[order]
        if len(arr):
            arr = arr - arr[0]
    clamped_p = clamped_o = 0
    if max_prompt_tokens is not None:
        clamped_p = int((p > max_prompt_tokens).sum())
        p = np.minimum(p, max_prompt_tokens)
    if max_output_tokens is not None:
        clamped_o = int((o > max_output_tokens).sum())
        o = np.minimum(o, max_output_tokens)
    return Workload(arr, np.maximum(p, 1), np.maximum(o, 1), clamped_p, clamped_o)


@dataclass
class SimResult:
    """Everything a report needs from one run: per-request outcomes, the timeline, per-pool accounts."""

    label: str
    policy_name: str
    slo: Slo
    pool_names: tuple[str, ...]
    workload: Workload
    pool: np.ndarray  # index into pool_names of the pool that served each request; -1: none
    status: np.ndarray  # 200, 400, 429, 503, 504 (timeout)
    ttft_s: np.ndarray  # from arrival; NaN unless a first token came
    e2e_s: np.ndarray  # from arrival; NaN unless it completed
    end_s: float
    timeline: dict[str, np.ndarray]
    accounts: dict[str, PoolAccount]
    decisions: list[dict[str, Any]]
    wall_s: float
    ready_spans: dict[str, list[tuple[float, float | None]]] = field(default_factory=dict)
    placeholder_profiles: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def ready_replica_seconds(self, pool: str, until_s: float) -> float:
        """Seconds replicas of ``pool`` were serving during [0, until_s]."""
        return sum(max(0.0, min(until_s, stop if stop is not None else until_s) - start)
                   for start, stop in self.ready_spans.get(pool, []) if start < until_s)


class _DecisionSink:
    """Keeps the controller's decision records that changed something, failed, or refused a replica on shared cores
    (what `elo status` shows)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, record: Mapping[str, Any]) -> None:
        refused = record.get("refused") or {}
        if record.get("changes") or record.get("errors") or refused:
            self.records.append({"at_s": record["at_s"], "changes": record["changes"], "errors": record["errors"],
                                 "reason": record["reason"], "cost_usd_per_hour": record["cost_usd_per_hour"],
                                 "refused": refused})


class Simulator:
    """One replay; build it, call :meth:`run` once."""

    def __init__(self, workload: Workload, policy_file: PolicyFile, sim: SimConfig, *, seed: int | None = None,
                 label: str | None = None, policy: Policy | None = None,
                 initial_replicas: Mapping[str, int] | None = None) -> None:
        sim.check_matches(policy_file)
        self.workload, self.policy_file, self.sim = workload, policy_file, sim
        self.label = label or policy_file.policy.name
        self.app = sim.app_config()
        self.names = tuple(sim.pools)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Any, Any]] = []
        self._seq = 0
        curves = {n: ServiceCurve.of(p.profile, p.max_ongoing_requests) for n, p in sim.pools.items()}
        self.cluster = SimCluster(sim, policy_file, curves, lambda: self.now, self._schedule,
                                  sim.seed if seed is None else seed, initial_replicas)
        self._sink = _DecisionSink()
        self.controller = Controller(policy_file, self.cluster, self.cluster, self.cluster, self.cluster,
                                     clock=lambda: self.now, decisions=self._sink, wall_clock=lambda: self.now,
                                     policy=policy, hold_log_every_s=math.inf)
        n = len(workload)
        self._arr = array("d", workload.arrival_s.tolist())
        self._p = array("q", workload.prompt_tokens.tolist())
        self._o = array("q", workload.output_tokens.tolist())
        self._pool = array("b", [-1]) * n
        self._status = array("h", [0]) * n
        self._ttft = array("d", [math.nan]) * n
        self._e2e = array("d", [math.nan]) * n
        self._sent = array("d", [math.nan]) * n  # when it was sent to a replica
        self._conc = array("h", [0]) * n  # the replica's concurrency it was admitted at
        self._pool_index = {name: i for i, name in enumerate(self.names)}
        self._waiters: dict[int, SimPool] = {}  # request -> pool it waits for, in arrival order
        self._active = 0  # requests routed or waiting, not finished
        r = sim.router
        self._timeout_s = r.request_timeout_s
        self._wait_s = float(r.cold_start_wait_s)
        self._timeline: dict[str, list[float]] = {"t_s": [], "arrival_rps": [], "cost_usd_per_hour": []}
        for name in self.names:
            for key in ("ready", "starting", "nodes", "in_flight", "queued"):
                self._timeline[f"{name}.{key}"] = []
        self._arrivals_since_tick = 0

    # --- event plumbing ----------------------------------------------------------------------------------------

    def _schedule(self, t: float, kind: int, a: Any, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b))

    def run(self) -> SimResult:
        started = time.perf_counter()
        arr, n = self._arr, len(self._arr)
        last_arrival = arr[n - 1] if n else 0.0
        tick_s = self.policy_file.tick_interval_s
        tick_until = last_arrival + self.sim.drain_s
        hard_stop = tick_until + self._timeout_s
        self._schedule(0.0, _TICK, None)
        heap, i = self._heap, 0
        ticking = True
        while True:
            next_arrival = arr[i] if i < n else math.inf
            if heap and heap[0][0] <= next_arrival:
                t, _, kind, a, b = heapq.heappop(heap)
                if kind == _TICK:
                    if not ticking:
                        continue
                    self.now = t
                    self._tick()
                    if t + tick_s <= tick_until or (self._active and t + tick_s <= hard_stop):
                        self._schedule(t + tick_s, _TICK, None)
                    else:
                        ticking = False
                    continue
                if not ticking and self._active == 0 and i >= n:
                    break
                self.now = t
                if kind == _FINISH:
                    self._finish(a, b)
                elif kind == _FIRST_TOKEN:
                    self._first_token(a, b)
                elif kind == REPLICA_READY:
                    if self.cluster.replica_ready(a, t):
                        self._fill(a.pool)
                        self._wake()
                elif kind == NODE_READY:
                    self.cluster.node_ready(a, b, t)
                elif kind == _WAIT_TIMEOUT:
                    self._wait_timeout(a)
            elif i < n:
                self.now = next_arrival
                self._arrive(i)
                i += 1
            else:
                break
        end_s = max(self.now, last_arrival)
        for pool in self.cluster.pools.values():  # never served: dropped as timeouts
            for idx in pool.queue:
                self._status[idx] = STATUS_TIMEOUT
        for idx in self._waiters:
            self._status[idx] = STATUS_TIMEOUT
        return SimResult(
            label=self.label, policy_name=self.policy_file.policy.name, slo=self.policy_file.slo,
            pool_names=self.names, workload=self.workload,
            pool=np.frombuffer(self._pool, dtype=np.int8).astype(np.int16),
            status=np.frombuffer(self._status, dtype=np.int16).copy(),
            ttft_s=np.frombuffer(self._ttft, dtype=float).copy(),
            e2e_s=np.frombuffer(self._e2e, dtype=float).copy(),
            end_s=end_s,
            timeline={k: np.asarray(v, dtype=float) for k, v in self._timeline.items()},
            accounts={name: account(p, end_s) for name, p in self.cluster.pools.items()},
            decisions=self._sink.records,
            wall_s=time.perf_counter() - started,
            ready_spans={name: [(r.ready_s, r.stop_s if r.stop_s is not None else r.gone_s)
                                for r in p.all_replicas if r.ready_s is not None]
                         for name, p in self.cluster.pools.items()},
            placeholder_profiles=tuple(n for n, p in self.sim.pools.items() if p.profile.placeholder),
        )

    # --- controller tick ---------------------------------------------------------------------------------------

    def _tick(self) -> None:
        self.controller.tick()
        tl, now = self._timeline, self.now
        tick_s = self.policy_file.tick_interval_s
        tl["t_s"].append(now)
        tl["arrival_rps"].append(self._arrivals_since_tick / tick_s)
        self._arrivals_since_tick = 0
        cost = 0.0
        for name, p in self.cluster.pools.items():
            tl[f"{name}.ready"].append(len(p.ready))
            tl[f"{name}.starting"].append(p.starting())
            tl[f"{name}.nodes"].append(len(p.nodes))
            tl[f"{name}.in_flight"].append(p.in_flight)
            tl[f"{name}.queued"].append(len(p.queue) + p.waiting)
            cost += len(p.nodes) * p.policy.replicas_per_node * p.policy.cost_per_hour_usd
        tl["cost_usd_per_hour"].append(cost)
        self._wake()  # a tick may have changed readiness or preferences

    # --- the request path --------------------------------------------------------------------------------------

    def _decide(self, idx: int) -> tuple[RouteDecision, list[str]]:
        features = RequestFeatures(prompt_tokens=self._p[idx], max_tokens=self._o[idx])
        plan = self.cluster.routing
        order = fill_order(plan, self.app).for_class(None)
        views = with_plan(self.cluster.views(self.now), plan)
        return route(features, views, order, waited_s=self.now - self._arr[idx], max_wait_s=self._wait_s), order

    def _arrive(self, idx: int) -> None:
        self._arrivals_since_tick += 1
        limit = self.sim.max_model_len
        if limit is not None and (self._p[idx] >= limit or self._p[idx] + self._o[idx] > limit):
            self._status[idx] = 400  # the router's context_length_exceeded, before routing
            return
        decision, order = self._decide(idx)
        self._act_on(idx, decision, order)

    def _act_on(self, idx: int, decision: RouteDecision, order: list[str]) -> None:
        if decision.outcome is Outcome.ROUTE:
            self._route(idx, self.cluster.pools[decision.pool])
            return
        if decision.outcome is Outcome.WAIT:
            pool = self.cluster.pools[decision.pool]
            pool.waiting += 1
            if idx not in self._waiters:
                self._active += 1
                self._schedule(self._arr[idx] + self._wait_s, _WAIT_TIMEOUT, idx)
            self._waiters[idx] = pool
            return
        self._status[idx] = decision.status or 429
        # As the router: every refusal of the dispatcher (400 included) is demand of the first pool of its order.
        self.cluster.pools[order[0]].window.rejected(self.now)

    def _route(self, idx: int, pool: SimPool) -> None:
        pool.in_flight += 1
        pool.last_routed_s = self.now
        self._active += 1
        self._pool[idx] = self._pool_index[pool.name]
        rep = self._free_replica(pool)
        if rep is None:
            pool.queue.append(idx)
        else:
            self._start(idx, rep)

    def _free_replica(self, pool: SimPool) -> SimReplica | None:
        limit = pool.curve.limit
        best = None
        for rep in pool.ready:
            if rep.running < limit and (best is None or rep.running < best.running):
                best = rep
        return best

    def _start(self, idx: int, rep: SimReplica) -> None:
        """Admit a request on a replica: prefill FIFO, then TTFT overhead and decode at the admission concurrency;
        on an engine that batches in waves, it joins the next wave."""
        curve, now = rep.pool.curve, self.now
        rep.running += 1
        n = rep.running
        self._sent[idx], self._conc[idx] = now, n
        if rep.pool.waves:
            rep.pending.append(idx)
            if rep.running == len(rep.pending):  # no batch decoding: this one starts it
                self._wave(rep)
            return
        # Shared cores (the embedded default): every replica serving or starting there slows this one down.
        slow = self.cluster.slowdown(rep.pool) if rep.pool.machine is not None else 1.0
        begin = rep.prefill_free_s if rep.prefill_free_s > now else now
        # The prefill server is busy for the prompt at the engine's throughput; a slower rate at this concurrency
        # (a prompt joining a busy batch) is latency on top, not more of the server's time.
        busy = self._p[idx] * curve.prefill_busy_s_per_token
        done = begin + busy * slow
        rep.prefill_free_s = done
        first = done + (self._p[idx] * curve.prefill_s_per_token[n] - busy + curve.overhead_s[n]) * slow
        out = self._o[idx]
        end = first + curve.decode_s(out - 1, mean_context(self._p[idx], out), n) * slow if out > 1 else first
        self._schedule(first, _FIRST_TOKEN, idx, rep.pool)
        self._schedule(end, _FINISH, idx, rep)

    def _wave(self, rep: SimReplica) -> None:
        """Start a batch of every request waiting on the replica (the edge engine, `deployments.cpu_engine`): their
        prompts are prefilled together at the engine's throughput, then one decode step per token for the whole
        batch; a row leaves when its output is done and the steps speed up as the batch shrinks. Requests that
        arrive meanwhile wait for the batch to end."""
        curve, now = rep.pool.curve, self.now
        batch, rep.pending = rep.pending, []
        slow = self.cluster.slowdown(rep.pool) if rep.pool.machine is not None else 1.0
        longest = max(self._p[i] for i in batch)  # every row is padded to the longest prompt
        first = now + (len(batch) * longest * curve.prefill_busy_s_per_token + curve.overhead_s[1]) * slow
        t, done, size = first, 1, len(batch)
        for i in sorted(batch, key=lambda i: self._o[i]):
            out = max(1, self._o[i])
            t += curve.decode_s(out - done, longest + (out + done - 1) / 2, min(size, curve.limit)) * slow
            done, size = out, size - 1
            self._schedule(first, _FIRST_TOKEN, i, rep.pool)
            self._schedule(t, _FINISH, i, rep)

    def _first_token(self, idx: int, pool: SimPool) -> None:
        arrival = self._arr[idx]
        ttft = self.now - arrival
        self._ttft[idx] = ttft
        pool.window.arrived(arrival)
        pool.window.first_token(self.now, ttft)

    def _finish(self, idx: int, rep: SimReplica) -> None:
        pool, now = rep.pool, self.now
        rep.running -= 1
        if pool.waves and rep.pending and rep.running == len(rep.pending):  # its batch is done: the next starts
            self._wave(rep)
        pool.in_flight -= 1
        self._active -= 1
        e2e = now - self._arr[idx]
        self._e2e[idx] = e2e
        self._status[idx] = 200
        out = self._o[idx]
        pool.window.finished(now, e2e, out)
        first = self._arr[idx] + self._ttft[idx]
        pool.window.served(ServiceSample(now, self._conc[idx], self._p[idx], out, first - self._sent[idx],
                                         (now - first) / (out - 1) if out > 1 else None))
        if rep.state == READY:
            self._fill(pool)
        else:
            self.cluster.replica_idle(rep, now)
        if self._waiters:
            self._wake()

    def _fill(self, pool: SimPool) -> None:
        """Start queued requests while a ready replica has a free slot; drop those past the request timeout."""
        queue, now = pool.queue, self.now
        while queue:
            rep = self._free_replica(pool)
            if rep is None:
                return
            idx = queue.popleft()
            if now - self._arr[idx] > self._timeout_s:
                self._status[idx] = STATUS_TIMEOUT
                pool.in_flight -= 1
                self._active -= 1
                continue
            self._start(idx, rep)

    def _wake(self) -> None:
        """Room may have appeared: every waiting request asks the routing policy again, in arrival order."""
        if not self._waiters:
            return
        for idx in list(self._waiters):
            pool = self._waiters.pop(idx)
            pool.waiting -= 1
            decision, order = self._decide(idx)
            if decision.outcome is Outcome.WAIT:
                target = self.cluster.pools[decision.pool]
                target.waiting += 1
                self._waiters[idx] = target
                continue
            self._active -= 1  # _route counts it again; a refusal ends it
            self._act_on(idx, decision, order)

    def _wait_timeout(self, idx: int) -> None:
        pool = self._waiters.pop(idx, None)
        if pool is None:
            return  # routed or refused meanwhile
        pool.waiting -= 1
        self._active -= 1
        decision, order = self._decide(idx)  # it has waited cold_start_wait_s: routed now, or refused
        self._act_on(idx, decision, order)


def simulate(workload: Workload | Sequence[TraceRequest], policy_file: PolicyFile, sim: SimConfig, *,
             seed: int | None = None, label: str | None = None, policy: Policy | None = None,
             initial_replicas: Mapping[str, int] | None = None) -> SimResult:
    """Replay ``workload`` (or trace rows, with the sim config's clamps) under ``policy_file`` on ``sim``."""
    if not isinstance(workload, Workload):
        workload = prepare_workload(workload, max_prompt_tokens=sim.workload.max_prompt_tokens,
                                    max_output_tokens=sim.workload.max_output_tokens)
    return Simulator(workload, policy_file, sim, seed=seed, label=label, policy=policy,
                     initial_replicas=initial_replicas).run()


def synthetic_trace(rate_rps: float | Sequence[tuple[float, float]], duration_s: float, *, prompt_tokens: int = 256,
                    output_tokens: int = 64, seed: int = 0, poisson: bool = True) -> list[TraceRequest]:
    """A trace for tests and benchmarks: Poisson (or evenly spaced) arrivals at a constant rate, or piecewise
    constant rates given as ``[(from_s, rps), ...]``; fixed sizes."""
    steps = [(0.0, float(rate_rps))] if isinstance(rate_rps, int | float) else sorted(rate_rps)
    rng = random.Random(seed)
    out: list[TraceRequest] = []
    for k, (start, rps) in enumerate(steps):
        stop = steps[k + 1][0] if k + 1 < len(steps) else duration_s
        if rps <= 0:
            continue
        t = start
        while True:
            t += rng.expovariate(rps) if poisson else 1.0 / rps
            if t >= stop:
                break
            out.append(TraceRequest(t, prompt_tokens, output_tokens))
    return out


@dataclass(frozen=True)
class RunSpec:
    """A named policy run of a comparison: the policy file, the sim config and optional overrides."""

    label: str
    policy_file: PolicyFile
    sim: SimConfig
    policy: Policy | None = None
    initial_replicas: Mapping[str, int] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def run(self, workload: Workload, seed: int | None = None) -> SimResult:
        result = Simulator(workload, self.policy_file, self.sim, seed=seed, label=self.label, policy=self.policy,
                           initial_replicas=self.initial_replicas).run()
        result.notes = self.notes
        return result


__all__ = ["STATUS_LABELS", "STATUS_TIMEOUT", "RunSpec", "SimResult", "Simulator", "Workload",
           "prepare_workload", "simulate", "synthetic_trace"]
