"""Prometheus metrics of one engine, served over HTTP with the standard client library.

`pipeline worker --metrics-port N` and `pipeline run --metrics-port N` serve them at
http://host:N/metrics. Every name starts with `pipeline_`; counters count since the process started.

    pipeline_requests_total{outcome}         requests done here: succeeded, failed, cancelled, released
    pipeline_attempts_total{status}          HTTP attempts by status code ("none": timeout, connection error)
    pipeline_rate_limited_total              attempts answered 429
    pipeline_tokens_total{kind}              tokens reported: prompt, cached (part of prompt), completion,
                                             reasoning (part of completion)
    pipeline_audio_seconds_total             audio seconds the API reported (whisper-1)
    pipeline_cost_usd_total{model}           USD the API charged, at the price table in force
    pipeline_in_flight                       requests on the wire now
    pipeline_request_latency_seconds         histogram of attempt latencies (send to answer read)
    pipeline_limiter_wait_seconds            histogram of the time attempts waited for rate-limit budget
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Latency buckets, seconds: from a local fake's milliseconds to a long completion's minutes.
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)
#: Limiter wait buckets, seconds: no wait, pacing, cooldowns after a 429.
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 120)


class Metrics:
    """The engine's metrics, in a registry of their own (several engines in one process never clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pipeline_requests", "Requests finished, by outcome", ["outcome"], registry=r)
        self.attempts = Counter("pipeline_attempts", "HTTP attempts, by status code", ["status"], registry=r)
        self.rate_limited = Counter("pipeline_rate_limited", "Attempts answered 429", registry=r)
        self.tokens = Counter("pipeline_tokens", "Tokens the API reported, by kind", ["kind"], registry=r)
        self.audio_seconds = Counter("pipeline_audio_seconds", "Audio seconds the API reported", registry=r)
        self.cost = Counter("pipeline_cost_usd", "USD the API charged, by model", ["model"], registry=r)
        self.in_flight = Gauge("pipeline_in_flight", "Requests on the wire now", registry=r)
        self.latency = Histogram(
            "pipeline_request_latency_seconds", "Attempt latency", buckets=LATENCY_BUCKETS, registry=r
        )
        self.limiter_wait = Histogram(
            "pipeline_limiter_wait_seconds",
            "Time waiting for rate-limit budget",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on `port` in a background thread until `close`."""
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
