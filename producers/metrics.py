"""Counters of the web process (Prometheus), one registry per app so tests stay independent."""

from __future__ import annotations

from dataclasses import dataclass, field

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
