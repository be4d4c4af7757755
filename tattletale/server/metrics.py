"""Prometheus metrics: latencies the server measures from the arrival times of the engine's Outputs,
and the engine's own state, read from `engine.metrics()` at each scrape.

Each app has its own registry, so several servers (or tests) in one process do not share counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5,
                    0.75, 1.0, 2.5, 5.0, 10.0)
_TTFT_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                 40.0, 80.0)
_E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0, 600.0)


class _EngineCollector(Collector):
    """The engine's snapshot as gauges and counters; nothing while no engine is loaded."""

    def __init__(self, snapshot: Callable[[], object | None]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        m = self.snapshot()
        if m is None:
            return
        gauges = [("requests_running", "Requests being generated", m.requests_running),
                  ("requests_waiting", "Requests waiting to be scheduled", m.requests_waiting),
                  ("kv_pages_total", "KV cache pages", m.kv_pages_total),
                  ("kv_pages_used", "KV cache pages in use", m.kv_pages_used),
                  ("kv_pages_free", "KV cache pages free", m.kv_pages_free),
                  ("batch_tokens", "Tokens in the engine's last step", m.batch_tokens_last),
                  ("batch_sequences", "Sequences in the engine's last step", m.batch_seqs_last),
                  ("prefix_cache_pages", "KV cache pages held by the prefix cache", m.prefix_cache_pages)]
        for name, doc, value in gauges:
            yield GaugeMetricFamily(f"tattletale_{name}", doc, value=value)
        rate = m.prefix_cache_hits / m.prefix_cache_queries if m.prefix_cache_queries else 0.0
        yield GaugeMetricFamily("tattletale_prefix_cache_hit_rate",
                                "Share of looked-up prompt tokens found in the prefix cache", value=rate)
        counters = [("prefix_cache_queries", "Prompt tokens looked up in the prefix cache",
                     m.prefix_cache_queries),
                    ("prefix_cache_hits", "Prompt tokens found in the prefix cache", m.prefix_cache_hits),
                    ("prompt_tokens", "Prompt tokens processed", m.prompt_tokens_total),
                    ("generation_tokens", "Tokens generated", m.generation_tokens_total),
                    ("engine_steps", "Engine steps run", m.steps_total),
                    ("preemptions", "Requests preempted to free KV pages", m.preemptions)]
        for name, doc, value in counters:
            yield CounterMetricFamily(f"tattletale_{name}", doc, value=value)


class ServerMetrics:
    """What the server observes per engine request (one per choice)."""

    def __init__(self, snapshot: Callable[[], object | None]):
        self.registry = CollectorRegistry()
        self.requests = Counter("tattletale_requests", "Finished requests (one per choice)",
                                ["finish_reason"], registry=self.registry)
        self.ttft = Histogram("tattletale_time_to_first_token_seconds",
                              "From submission to the first generated token", buckets=_TTFT_BUCKETS,
                              registry=self.registry)
        self.itl = Histogram("tattletale_inter_token_latency_seconds",
                             "Between consecutive generated tokens", buckets=_LATENCY_BUCKETS,
                             registry=self.registry)
        self.e2e = Histogram("tattletale_e2e_request_latency_seconds",
                             "From submission to the final output", buckets=_E2E_BUCKETS,
                             registry=self.registry)
        self.registry.register(_EngineCollector(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Feeds one engine request's Output arrival times into the latency histograms."""

    def __init__(self, metrics: ServerMetrics, submitted: float):
        self.m = metrics
        self.submitted = submitted
        self.last: float | None = None  # arrival of the latest tokens

    def tokens(self, count: int, at: float) -> None:
        if count <= 0:
            return
        if self.last is None:
            self.m.ttft.observe(at - self.submitted)
            count -= 1  # the first token has no predecessor
        else:
            gap = (at - self.last) / count
            for _ in range(count):
                self.m.itl.observe(gap)
        self.last = at

    def finished(self, reason: str, at: float) -> None:
        self.m.requests.labels(finish_reason=reason).inc()
        self.m.e2e.observe(at - self.submitted)
