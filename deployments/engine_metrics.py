"""vLLM's own metric names for engines that are not vLLM (the edge pool), and the pools' engine metrics gathered
for the router's /metrics: every replica's ``vllm:`` families, labelled with its pool and replica.

Tools that key on vLLM's names (KEDA triggers, llm-d's endpoint picker and variant autoscaler, production-stack's
dashboards) then read both pools the same way: ``sum by (pool) (vllm:num_requests_waiting)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

PREFIX = "vllm:"

# vLLM 0.32's buckets (vllm/v1/metrics/loggers.py), so both pools' histograms aggregate together.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)


class EngineMetrics:
    """The subset of vLLM's engine metrics whose meaning holds for the batched CPU engine, same names and labels
    (``model_name``, ``engine``). No ``vllm:kv_cache_usage_perc``: the engine has no paged KV cache."""

    def __init__(self, model_name: str, running: Callable[[], int], waiting: Callable[[], int],
                 clock: Callable[[], float] = time.monotonic):
        self.registry = CollectorRegistry()
        self.clock = clock
        labels, values = ["model_name", "engine"], [model_name, "0"]
        r = self.registry
        Gauge("vllm:num_requests_running", "Number of requests in model execution batches.", labels,
              registry=r).labels(*values).set_function(running)
        Gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", labels,
              registry=r).labels(*values).set_function(waiting)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", labels,
                                     registry=r).labels(*values)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", labels,
                                         registry=r).labels(*values)
        self._success = Counter("vllm:request_success", "Count of successfully processed requests.",
                                [*labels, "finished_reason"], registry=r)
        self._values = values
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              labels, buckets=TTFT_BUCKETS, registry=r).labels(*values)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             labels, buckets=ITL_BUCKETS, registry=r).labels(*values)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             labels, buckets=REQUEST_LATENCY_BUCKETS, registry=r).labels(*values)
        self.queue_time = Histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.", labels,
                                    buckets=REQUEST_LATENCY_BUCKETS, registry=r).labels(*values)

    def scheduled(self, arrived_s: float, prompt_tokens: int) -> None:
        """A sequence entered a batch (its prefill runs now)."""
        self.queue_time.observe(max(0.0, self.clock() - arrived_s))
        self.prompt_tokens.inc(prompt_tokens)

    def token(self, arrived_s: float, last_token_s: float | None) -> float:
        """A sequence produced a token; returns the time, the sequence's next ``last_token_s``."""
        now = self.clock()
        if last_token_s is None:
            self.ttft.observe(max(0.0, now - arrived_s))
        else:
            self.itl.observe(max(0.0, now - last_token_s))
        self.generation_tokens.inc()
        return now

    def finished(self, arrived_s: float, finish_reason: str) -> None:
        self.e2e.observe(max(0.0, self.clock() - arrived_s))
        self._success.labels(*self._values, finish_reason).inc()


# --- the router's side: every replica's families, relabelled ---------------------------------------------------


@dataclass(frozen=True)
class Scraped:
    """One replica's /metrics text (None: it did not answer)."""

    pool: str
    replica: str
    text: str | None


def relabelled(scrapes: Iterable[Scraped]) -> list[Metric]:
    """The ``vllm:`` families of every replica that answered, merged by name, each sample labelled with its pool
    and replica; ``elo_replica_metrics_up`` says which replicas answered."""
    families: dict[str, Metric] = {}
    up = Metric("elo_replica_metrics_up", "1 when the replica's engine metrics were read at this scrape.", "gauge")
    for s in scrapes:
        parsed = _families(s.text)
        up.add_sample("elo_replica_metrics_up", {"pool": s.pool, "replica": s.replica}, 1.0 if parsed else 0.0)
        for family in parsed or ():
            merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                merged.add_sample(sample.name, {**sample.labels, "pool": s.pool, "replica": s.replica},
                                  sample.value, sample.timestamp)
    return [up, *families.values()]


def _families(text: str | None) -> list[Metric] | None:
    """The engine families of one replica's text; None when there is none, or it is not the exposition format."""
    if not text:
        return None
    try:
        return [f for f in text_string_to_metric_families(text) if f.name.startswith(PREFIX)]
    except ValueError:
        return None


class Exposition:
    """What ``generate_latest`` renders: the router's registry, then the pools' engine families."""

    def __init__(self, registry: CollectorRegistry, engine_families: list[Metric]):
        self.registry, self.engine_families = registry, engine_families

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.engine_families

