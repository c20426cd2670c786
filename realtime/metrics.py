"""What a node tells Prometheus at ``/metrics``.

Counts are kept by the code that does the counting, as plain int
attributes (the hub's deliveries, the bus's reconnects, the sockets' close
codes), and read here only when Prometheus scrapes. A delivery to a socket
then costs an integer addition, not a locked counter, and the hub, the bus
and the sockets stay free of any metrics library. This module is the one
place that maps those attributes to metric names, so an operator finds
every name in one file; each count is documented where it is kept.

Distributions need real histograms: RPC latency per method and transport,
and the time a fan-out takes. Counts made once per request (rate-limit
rejections, RPC errors) use prometheus counters, whose lock costs nothing
next to the request.

Each node has its own :class:`~prometheus_client.CollectorRegistry`:
tests run several nodes in one process, and the global registry would mix
them or refuse the second node's metrics. Labels stay few and bounded
(methods of the protocol table, catalogue error codes, close codes);
never a user, conversation or connection id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from protocol.close_codes import CloseCode
from protocol.methods import METHODS
from realtime.presence_redis import RedisPresence

if TYPE_CHECKING:
    from realtime.node import Node

#: The media type of what :meth:`NodeMetrics.render` returns.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A method name a client made up is counted under this label, so that
#: clients cannot create series at will.
UNKNOWN_METHOD = "unknown"

_FANOUT_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class NodeMetrics:
    """The registry of one node, its histograms and per-request counters."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.rpc_seconds = Histogram(
            "squall_rpc_duration_seconds",
            "Time to answer an RPC, from a parsed request to its reply.",
            ("method", "transport"),
            registry=registry,
        )
        self.rpc_errors = Counter(
            "squall_rpc_errors",
            "RPCs answered with an error, by catalogue code.",
            ("transport", "code"),
            registry=registry,
        )
        self.rate_limited = Counter(
            "squall_rate_limited",
            "Requests refused by a rate limit: per socket, per user over REST "
            "RPC, or per address and username at login and registration.",
            ("scope",),
            registry=registry,
        )
        self.fanout_seconds = Histogram(
            "squall_fanout_seconds",
            "Time to hand one event (or one batch of a channel's events) to "
            "every local subscriber of its channel.",
            buckets=_FANOUT_BUCKETS,
            registry=registry,
        )
        registry.register(_NodeCollector(node))
        ProcessCollector(registry=registry)
        # Children made once: the hot paths do not look labels up.
        self.rate_limited_socket = self.rate_limited.labels("socket")
        self.rate_limited_rpc = self.rate_limited.labels("rpc")
        self.rate_limited_auth = self.rate_limited.labels("auth")
        self._rpc: dict[tuple[str, str], Histogram] = {}

    def observe_rpc(self, method: str, transport: str, seconds: float) -> None:
        """One answered RPC; ``transport`` is ``ws`` or ``rest``."""
        # Keyed by label, not by what the client sent: made-up names must
        # not grow this cache either.
        key = (method if method in METHODS else UNKNOWN_METHOD, transport)
        child = self._rpc.get(key)
        if child is None:
            child = self._rpc[key] = self.rpc_seconds.labels(*key)
        child.observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


class _NodeCollector(Collector):
    """Reads the counts the node's parts keep, at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        hub = node.hub
        bus = hub.bus
        sockets = node.connections

        yield _gauge("squall_ws_open_sockets", "Open WebSockets.", len(sockets))
        yield _gauge(
            "squall_ws_sessions", "Authenticated WebSockets.", len(node.sockets)
        )
        yield _counter(
            "squall_ws_connections", "WebSockets opened (upgrades).", sockets.opened
        )
        closes = CounterMetricFamily(
            "squall_ws_closes_sent",
            "Close frames this node started, by close code.",
            labels=("code", "reason"),
        )
        for code, count in sorted(sockets.closes_sent.items()):
            known = CloseCode.from_code(code)
            closes.add_metric((str(code), known.reason if known else "other"), count)
        yield closes
        yield _counter(
            "squall_ws_outbox_overflows",
            "Sockets closed as slow consumers: their outbox passed its bound.",
            sockets.closes_sent.get(CloseCode.SLOW_CONSUMER.code, 0),
        )
        yield _counter(
            "squall_ws_closed_by_peer",
            "Closing handshakes the client started.",
            sockets.closed_by_peer,
        )

        yield _counter(
            "squall_events_published",
            "Events this node published (to its sockets and to the bus).",
            hub.published,
        )
        yield _counter(
            "squall_socket_deliveries",
            "Events written to local sockets by fan-out, one per socket.",
            hub.deliveries,
        )
        yield _counter(
            "squall_gap_repairs",
            "Gaps in a conversation's seqs that the node read from storage.",
            hub.gap_repairs,
        )
        yield _gauge(
            "squall_hub_channels", "Channels with local subscribers.", hub.channel_count
        )

        yield _gauge(
            "squall_bus_up",
            "1 while the bus reaches the other nodes.",
            1 if bus.healthy else 0,
        )
        yield _counter(
            "squall_bus_received",
            "Bus messages received from other nodes.",
            bus.received,
        )
        yield _counter(
            "squall_bus_published",
            "Messages published on the bus for other nodes.",
            bus.published,
        )
        yield _counter(
            "squall_bus_publish_failures",
            "Publishes the bus refused (Redis unreachable).",
            bus.publish_failures,
        )
        yield _counter(
            "squall_bus_reconnects",
            "Times the bus got its connection back after losing it.",
            bus.reconnects,
        )
        yield _counter(
            "squall_cluster_resyncs",
            "Repairs from storage after the bus came back.",
            node.cluster.resyncs,
        )
        yield _counter(
            "squall_unannounced_repairs",
            "Conversations the head check found behind storage (events stored "
            "but never published).",
            node.cluster.unannounced,
        )

        presence = node.presence
        yield _gauge(
            "squall_presence_up",
            "1 while presence is shared with the other nodes (always, alone).",
            1 if presence.healthy else 0,
        )
        if isinstance(presence, RedisPresence):
            yield _counter(
                "squall_presence_redis_errors",
                "Presence reads and writes that Redis refused.",
                presence.redis_errors,
            )
            yield _counter(
                "squall_presence_resyncs",
                "Times this node wrote all its users to Redis again.",
                presence.resyncs,
            )
            yield _counter(
                "squall_presence_reaped_nodes",
                "Nodes that stopped beating whose users this node took offline.",
                presence.reaped_nodes,
            )
            yield _counter(
                "squall_presence_reaped_users",
                "Users taken offline because their node stopped beating.",
                presence.reaped_users,
            )

        yield _gauge(
            "squall_rest_requests_in_flight",
            "REST requests being handled.",
            node.requests_in_flight,
        )
        yield _gauge(
            "squall_draining", "1 while the node drains.", 1 if node.draining else 0
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
