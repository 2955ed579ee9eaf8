"""Counters of the web process (Prometheus), one registry per app so tests stay independent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter


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
