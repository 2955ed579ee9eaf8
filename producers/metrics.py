"""Metrics of the web process (Prometheus).

`ProducerMetrics` holds the request counters, one registry per app so tests stay independent.
The enqueue counter and timing live in the default registry (`observe_enqueue`), as the worker's
metrics do (`worker/metrics.py`); the shared primitives are in `slackq/metrics.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from slackq.metrics import FAST_BUCKETS, labelled

JOBS_ENQUEUED = Counter("slackq_jobs_enqueued", "Jobs stored on the queue by the webhook",
                        ["job_name"])
ENQUEUE_SECONDS = Histogram("slackq_enqueue_duration_seconds",
                            "Time the webhook took to store a job in Redis", ["job_name"],
                            buckets=FAST_BUCKETS)


def observe_enqueue(job_name: str, seconds: float) -> None:
    """The webhook stored a job of `job_name` in `seconds`."""
    labelled(JOBS_ENQUEUED, job_name).inc()
    labelled(ENQUEUE_SECONDS, job_name).observe(seconds)


@dataclass
class ProducerMetrics:
    """What the webhook counts. `registry` is what a `/metrics` endpoint would expose."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "slackq_webhook_requests", "Slack requests by kind and outcome",
            ["kind", "outcome"], registry=self.registry,
        )
        self.app_rate_limited = Counter(
            "slackq_app_rate_limited",
            "app_rate_limited notices from Slack (events Slack dropped for this app)",
            registry=self.registry,
        )
        self._children: dict[tuple[str, str], Any] = {}

    def count(self, kind: str, outcome: str) -> None:
        """`requests.labels(kind, outcome).inc()`, each labelled child looked up once (the
        labels come from fixed sets: request kinds and `RequestRejected` reasons)."""
        child = self._children.get((kind, outcome))
        if child is None:
            child = self._children[(kind, outcome)] = self.requests.labels(kind, outcome)
        child.inc()
