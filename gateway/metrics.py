"""Prometheus metrics of one gateway process, on a registry of its own (no global state).

Counters and histograms are updated where things happen; gauges that describe stored state
(conversations by state) are read from the store when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from gateway.model import State


class Metrics:
    def __init__(self) -> None:
        # No `<name>_created` series beside every counter and histogram: in the text format
        # Prometheus reads they are one more gauge per label set, doubling what is stored for
        # a start time it already knows from the counter's resets.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # (unannotated upstream)
        self.registry = CollectorRegistry(auto_describe=True)
        self.webhooks = Counter(
            "gateway_webhooks_total",
            "Webhook requests by channel and outcome",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.ingested = Counter(
            "gateway_ingested_messages_total",
            "Inbound messages by channel and outcome (stored, duplicate)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.ingest_latency = Histogram(
            "gateway_ingest_seconds",
            "Time from handing a message to ingest until it is durably stored",
            ["channel"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.conversations = Gauge(
            "gateway_conversations",
            "Conversations by state and queue",
            ["state", "queue"],
            registry=self.registry,
        )
        self.timer_lag = Histogram(
            "gateway_timer_lag_seconds",
            "How late deadlines fired after they were due",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.outbound = Counter(
            "gateway_outbound_messages_total",
            "Outbound messages by channel and how their send ended: the status the channel"
            " took them in (queued: a provider that reports delivery later), or failed;"
            " delivery reports after that are in gateway_delivery_reports_total",
            ["channel", "status"],
            registry=self.registry,
        )
        self.outbound_retries = Counter(
            "gateway_outbound_retries_total",
            "Send attempts retried after a transient channel error (429, 5xx, time-out)",
            ["channel"],
            registry=self.registry,
        )
        self.delivery_reports = Counter(
            "gateway_delivery_reports_total",
            "Delivery reports received, by channel, reported status and outcome (applied;"
            " early: came before its send was recorded, kept and applied with it; stale: the"
            " message had moved past it; unknown_message; inbound_message)",
            ["channel", "status", "outcome"],
            registry=self.registry,
        )
        self.channel_up = Gauge(
            "gateway_channel_up",
            "1 while a channel adapter reports itself healthy, 0 while degraded",
            ["channel"],
            registry=self.registry,
        )
        self.agents_online = Gauge(
            "gateway_agents_online", "Agents with a live connection", registry=self.registry
        )
        self.store_up = Gauge(
            "gateway_store_up",
            "1 when the store answered this scrape, 0 when it was unreachable or too slow",
            registry=self.registry,
        )
        # Label children of the per-webhook series, found once: `labels()` validates and
        # locks on every call, which is most of what counting costs.
        self._webhooks: dict[tuple[str, ...], Any] = {}
        self._ingested: dict[tuple[str, ...], Any] = {}
        self._ingest_latency: dict[tuple[str, ...], Any] = {}

    def observe_ingest(self, channel: str, outcome: str, seconds: float) -> None:
        _child(self._ingested, self.ingested, channel, outcome).inc()
        _child(self._ingest_latency, self.ingest_latency, channel).observe(seconds)

    def count_webhook(self, channel: str, outcome: str) -> None:
        _child(self._webhooks, self.webhooks, channel, outcome).inc()

    def observe_outbound(self, channel: str, status: str) -> None:
        self.outbound.labels(channel, status).inc()

    def observe_retry(self, channel: str) -> None:
        self.outbound_retries.labels(channel).inc()

    def observe_status(self, channel: str, status: str, outcome: str) -> None:
        self.delivery_reports.labels(channel, status, outcome).inc()

    def observe_lag(self, seconds: float) -> None:
        self.timer_lag.observe(max(0.0, seconds))

    def set_conversations(
        self, counts: Mapping[tuple[str, str], int], queues: Iterable[str]
    ) -> None:
        """Set `gateway_conversations` from the store's counts by (state, queue).

        Every state of every configured queue has a series, 0 when nothing is there: a series
        that vanished when its queue emptied reads as "no data" on a dashboard, not as 0. A
        queue no longer configured keeps its series only while it still counts conversations.
        """
        self.conversations.clear()
        for queue in queues:
            for state in State:
                self.conversations.labels(state.value, queue).set(0)
        for (state_name, queue), count in counts.items():
            self.conversations.labels(state_name, queue).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _child(cache: dict[tuple[str, ...], Any], metric: Any, *labels: str) -> Any:
    child = cache.get(labels)
    if child is None:
        child = cache[labels] = metric.labels(*labels)
    return child
