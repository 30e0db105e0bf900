"""Prometheus metrics of one gateway, in a :class:`CollectorRegistry` of its own.

:class:`GatewayMetrics` is created by :class:`..telemetry.Telemetry` with its
gateway. :meth:`GatewayMetrics.observe` is fed the finished :class:`Call` once
per call (from ``ProxyCall._conclude``, never from inside the relay loop); the
gauges (in-flight calls, budgets, upstream pools, journal backlog, writer lag)
are read from the gateway's state when ``/metrics`` is scraped, so they cost the
data plane nothing.

Labels have bounded cardinality: provider, operation, status, token class and
refusal reason are fixed sets; team and project come from key records an admin
creates; models are the catalog's (a name a client invents appears only after
the call was routed, and past :data:`MAX_MODELS` distinct names as ``other``).
No key id or kernel id is a label unless ``c.VKeysGateway.metrics_per_key`` is
set, which adds two series per key (calls and cost).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..gateway.call import Call
    from ..gateway.core import VKeysGateway

__all__ = ["GatewayMetrics", "CONTENT_TYPE", "MAX_MODELS"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 200  # distinct model label values before further ones read "other"
# Latency buckets (seconds): from a refused call (~0.1 ms) to a long stream.
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0, 60.0, 120.0, 300.0)
_OVERHEAD = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
             0.25, 1.0)
_TOKEN_CLASSES = ("input_uncached", "cache_read", "cache_write", "output", "reasoning")


class GatewayMetrics:
    """The counters and histograms of one gateway, and its scrape-time gauges."""

    def __init__(self, gateway: "VKeysGateway", *, per_key: bool = False) -> None:
        self.gateway = gateway
        self.per_key = per_key
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._models: set[str] = set()
        self.calls = Counter("vkeys_calls", "Data-plane calls by outcome (status is the "
                             "warehouse's: ok, refused_budget, refused_rate, upstream_error, ...)",
                             ["provider", "model", "operation", "status", "team"],
                             registry=registry)
        self.tokens = Counter("vkeys_tokens", "Tokens metered (or estimated) by class",
                              ["provider", "model", "team", "token_class"], registry=registry)
        self.cost = Counter("vkeys_cost_usd", "Cost charged in USD (the warehouse's cost_usd)",
                            ["team", "project", "model"], registry=registry)
        self.refusals = Counter("vkeys_refusals", "Calls the gateway refused, by reason",
                                ["reason"], registry=registry)
        self.duration = Histogram("vkeys_request_duration_seconds", "Whole call, from the "
                                  "request read to the response's end", ["operation", "provider"],
                                  buckets=_LATENCY, registry=registry)
        self.ttft = Histogram("vkeys_time_to_first_token_seconds", "Time to the first byte of "
                              "the answer relayed to the client", ["operation", "provider"],
                              buckets=_LATENCY, registry=registry)
        self.overhead = Histogram("vkeys_gateway_overhead_seconds", "Time the call spent in the "
                                  "gateway rather than waiting for the upstream",
                                  ["operation", "provider"], buckets=_OVERHEAD,
                                  registry=registry)
        if per_key:
            self.key_calls = Counter("vkeys_key_calls", "Calls per virtual key (opt-in: "
                                     "c.VKeysGateway.metrics_per_key)", ["key_id", "status"],
                                     registry=registry)
            self.key_cost = Counter("vkeys_key_cost_usd", "Cost in USD per virtual key (opt-in)",
                                    ["key_id"], registry=registry)
        registry.register(_StateCollector(self))
        # Children are cached per label tuple: one dict lookup per call instead of
        # prometheus_client's label validation.
        self._children: dict[tuple, object] = {}

    def _model(self, call: "Call") -> str:
        """The model label: the requested model once routed (bounded), else ''."""
        if not call.provider:
            return ""
        model = call.request_model
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(model)
        return model

    def _child(self, metric, *labels: str):
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, call: "Call") -> None:
        """Count one finished call. Called by :meth:`Telemetry.finished`."""
        record = call.record
        team = record.team if record is not None else ""
        provider, operation, status = call.provider, call.operation, call.status
        model = self._model(call)
        child = self._child
        child(self.calls, provider, model, operation, status, team).inc()
        if status.startswith("refused_") or call.http_status in (400, 404, 413):
            reason = status if status.startswith("refused_") else (
                call.error_type or "invalid_request")
            child(self.refusals, reason).inc()
        usage = call.usage
        if usage is not None:
            for name, value in (("input_uncached", usage.input_uncached),
                                ("cache_read", usage.cache_read),
                                ("cache_write", usage.cache_write), ("output", usage.output),
                                ("reasoning", usage.reasoning)):
                if value:
                    child(self.tokens, provider, model, team, name).inc(value)
        cost = call.cost
        if cost is not None and cost.pico and cost.status != "unpriced":
            child(self.cost, team, record.project if record is not None else "",
                  model).inc(cost.pico / 1e12)
        ended = call.ended or time.time()
        child(self.duration, operation, provider).observe(ended - call.started)
        if call.first_byte is not None:
            child(self.ttft, operation, provider).observe(call.first_byte - call.started)
        if call.upstream_started:
            child(self.overhead, operation, provider).observe(
                max(ended - call.started - call.upstream_wait, 0.0))
        if self.per_key and record is not None:
            child(self.key_calls, record.id, status).inc()
            if cost is not None and cost.pico:
                child(self.key_cost, record.id).inc(cost.pico / 1e12)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (``GET /metrics``)."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges read from the gateway's state at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gw = self.metrics.gateway
        in_flight = GaugeMetricFamily("vkeys_in_flight_calls", "Data-plane calls in flight")
        telemetry = getattr(gw, "telemetry", None)
        in_flight.add_metric([], telemetry.in_flight if telemetry is not None else 0)
        yield in_flight
        yield from self._budgets(gw)
        yield self._pools(gw)
        yield from self._journal(gw)

    def _budgets(self, gw: "VKeysGateway") -> Iterable[GaugeMetricFamily]:
        spent = GaugeMetricFamily("vkeys_budget_spent_usd", "Spend in the current window of "
                                  "each budget (scope: team:, project:, user:, global; key: "
                                  "only with metrics_per_key)", labels=["scope", "period"])
        remaining = GaugeMetricFamily("vkeys_budget_remaining_usd", "What the current window "
                                      "of each budget still allows (cap - spent - held)",
                                      labels=["scope", "period"])
        limit = GaugeMetricFamily("vkeys_budget_limit_usd", "The cap of each budget",
                                  labels=["scope", "period"])
        engine = gw.policy
        if engine is not None:
            scopes = dict(engine.scope_policies)
            if self.metrics.per_key and gw.registry is not None:
                for record in list(gw.registry.records.values()):
                    policy = engine.key_policy(record)
                    if policy.budgets:
                        scopes[f"key:{record.id}"] = policy
            for scope, policy in scopes.items():
                if not policy.budgets or (scope.startswith("key:") and not self.metrics.per_key):
                    continue
                for budget in engine.report(scope, policy)["budgets"]:
                    labels = [scope, budget["period"]]
                    spent.add_metric(labels, float(budget["spent_usd"]))
                    remaining.add_metric(labels, float(budget["remaining_usd"]))
                    limit.add_metric(labels, float(budget["usd"]) if "usd" in budget else 0.0)
        yield spent
        yield remaining
        yield limit

    def _pools(self, gw: "VKeysGateway") -> GaugeMetricFamily:
        pool = GaugeMetricFamily("vkeys_upstream_pool_connections", "Idle keep-alive "
                                 "connections pooled per provider", labels=["provider"])
        for name, transport in gw.transports.items():
            idle = getattr(transport, "_idle", None)
            if isinstance(idle, dict):
                pool.add_metric([name], sum(len(conns) for conns in idle.values()))
        return pool

    def _journal(self, gw: "VKeysGateway") -> Iterable[GaugeMetricFamily]:
        backlog = GaugeMetricFamily("vkeys_journal_backlog_segments", "Rolled journal "
                                    "segments the Parquet writer has not converted yet")
        backlog_bytes = GaugeMetricFamily("vkeys_journal_backlog_bytes", "Bytes of those "
                                          "segments")
        lag = GaugeMetricFamily("vkeys_writer_lag_seconds", "Age of the oldest segment "
                                "waiting for the writer (0 when it has caught up)")
        root = getattr(gw.sink, "root", None)
        count = size = 0
        oldest = 0.0
        if root is not None:
            from ..warehouse.journal import CLOSED_SUFFIX

            now = time.time()
            for path in Path(root, "journal").glob(f"*{CLOSED_SUFFIX}"):
                try:
                    info = path.stat()
                except OSError:  # converted while we looked
                    continue
                count += 1
                size += info.st_size
                oldest = max(oldest, now - info.st_mtime)
        backlog.add_metric([], count)
        backlog_bytes.add_metric([], size)
        lag.add_metric([], oldest)
        yield backlog
        yield backlog_bytes
        yield lag
