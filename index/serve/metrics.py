"""What `avfeat serve` answers at ``/metrics``: request counts, a latency histogram, error counts
and the index's sizes, in Prometheus' text format (prometheus_client).

Each app has its own registry (not prometheus_client's global one), so several apps in one
process count apart. Endpoints are route templates (``/media/{video_id}``): one label per
route, not per video.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency histogram buckets, seconds: from a cached-vector search to a long video's sync.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format ``generate_latest`` writes


class Metrics:
    """The service's metrics in a registry of their own; ``render`` is what ``/metrics`` returns.

    Args:
        counts: windows in the index, by modality.
        videos: videos in the index.
        started: when the service started (``time.time()``), for the uptime.
    """

    def __init__(self, counts: dict[str, int], videos: int, started: float):
        self.registry = CollectorRegistry()
        self.requests = Counter("avfeat_requests_total", "HTTP requests answered, by endpoint, method and status.",
                                ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("avfeat_request_duration_seconds", "Time to answer a request, by endpoint.",
                                 ["endpoint"], buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("avfeat_errors_total", "Requests that failed, by endpoint and kind of error.",
                              ["endpoint", "type"], registry=self.registry)
        windows = Gauge("avfeat_index_windows", "Windows in the index, by modality.", ["modality"], registry=self.registry)
        for modality, count in counts.items():
            windows.labels(modality).set(count)
        Gauge("avfeat_index_videos", "Videos in the index.", registry=self.registry).set(videos)
        Gauge("avfeat_uptime_seconds", "Seconds since the service started.", registry=self.registry).set_function(lambda: time.time() - started)

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One answered request."""
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def error(self, endpoint: str, kind: str) -> None:
        """One failed request; ``kind`` names the error (``QueryError``, ``HTTP404``...)."""
        self.errors.labels(endpoint, kind).inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format (served as ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
