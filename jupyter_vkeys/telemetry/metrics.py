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

from bisect import bisect_left

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.registry import Collector

from .view import GatewayView

if TYPE_CHECKING:
    from ..call import Call

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
    """The counters and histograms of one gateway, and its scrape-time gauges.

    Per call, :meth:`observe` only adds to plain dicts keyed by label tuples (no locks,
    no label validation: a few microseconds); :class:`_CallCollector` turns them into
    prometheus_client metric families when ``/metrics`` is scraped, and
    ``generate_latest`` writes the exposition. Everything runs on the gateway's loop.
    """

    def __init__(self, gateway: GatewayView, *, per_key: bool = False) -> None:
        self.gateway = gateway
        self.per_key = per_key
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self._models: set[str] = set()
        # (provider, model, operation, status, team) -> calls
        self.calls: dict[tuple, int] = {}
        # (provider, model, team, token_class) -> tokens
        self.tokens: dict[tuple, int] = {}
        # (team, project, model) -> pico-USD (summed exactly, exposed in USD)
        self.cost: dict[tuple, int] = {}
        self.refusals: dict[str, int] = {}
        # (operation, provider) -> [bucket counts..., +Inf count, sum]
        self.duration: dict[tuple, list] = {}
        self.ttft: dict[tuple, list] = {}
        self.overhead: dict[tuple, list] = {}
        self.key_calls: dict[tuple, int] = {}
        self.key_cost: dict[str, int] = {}
        registry.register(_CallCollector(self))
        registry.register(_StateCollector(self))

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

    def observe(self, call: "Call") -> None:
        """Count one finished call. Called by :meth:`Telemetry.finished` (via its flush)."""
        record = call.record
        team = record.team if record is not None else ""
        provider, operation, status = call.provider, call.operation, call.status
        model = self._model(call)
        key = (provider, model, operation, status, team)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        if status.startswith("refused_") or call.http_status in (400, 404, 413):
            reason = status if status.startswith("refused_") else (
                call.error_type or "invalid_request")
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
        usage = call.usage
        if usage is not None:
            tokens = self.tokens
            for name, value in (("input_uncached", usage.input_uncached),
                                ("cache_read", usage.cache_read),
                                ("cache_write", usage.cache_write), ("output", usage.output),
                                ("reasoning", usage.reasoning)):
                if value:
                    tkey = (provider, model, team, name)
                    tokens[tkey] = tokens.get(tkey, 0) + value
        cost = call.cost
        pico = cost.pico if cost is not None and cost.status != "unpriced" else 0
        if pico:
            ckey = (team, record.project if record is not None else "", model)
            self.cost[ckey] = self.cost.get(ckey, 0) + pico
        ended = call.ended or time.time()
        hkey = (operation, provider)
        _observe(self.duration, hkey, ended - call.started, _LATENCY)
        if call.first_byte is not None:
            _observe(self.ttft, hkey, call.first_byte - call.started, _LATENCY)
        if call.upstream_started:
            _observe(self.overhead, hkey, max(ended - call.started - call.upstream_wait, 0.0),
                     _OVERHEAD)
        if self.per_key and record is not None:
            kkey = (record.id, status)
            self.key_calls[kkey] = self.key_calls.get(kkey, 0) + 1
            if pico:
                self.key_cost[record.id] = self.key_cost.get(record.id, 0) + pico

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric (``GET /metrics``)."""
        return generate_latest(self.registry)


def _observe(histogram: dict[tuple, list], key: tuple, value: float,
             buckets: tuple[float, ...]) -> None:
    """Add ``value`` to the histogram row of ``key`` (per-bucket counts, not cumulative)."""
    row = histogram.get(key)
    if row is None:
        row = histogram[key] = [0] * (len(buckets) + 1) + [0.0]
    row[bisect_left(buckets, value)] += 1
    row[-1] += value


class _CallCollector(Collector):
    """The per-call counters and histograms, as metric families (at scrape time)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        m = self.metrics
        yield _counter("vkeys_calls", "Data-plane calls by outcome (status is the "
                       "warehouse's: ok, refused_budget, refused_rate, upstream_error, ...)",
                       ["provider", "model", "operation", "status", "team"], m.calls)
        yield _counter("vkeys_tokens", "Tokens metered (or estimated) by class",
                       ["provider", "model", "team", "token_class"], m.tokens)
        yield _counter("vkeys_cost_usd", "Cost charged in USD (the warehouse's cost_usd)",
                       ["team", "project", "model"], m.cost, scale=1e-12)
        yield _counter("vkeys_refusals", "Calls the gateway refused, by reason", ["reason"],
                       {(k,): v for k, v in m.refusals.items()})
        yield _histogram("vkeys_request_duration_seconds", "Whole call, from the request "
                         "read to the response's end", m.duration, _LATENCY)
        yield _histogram("vkeys_time_to_first_token_seconds", "Time to the first byte of the "
                         "answer relayed to the client", m.ttft, _LATENCY)
        yield _histogram("vkeys_gateway_overhead_seconds", "Time the call spent in the "
                         "gateway rather than waiting for the upstream", m.overhead, _OVERHEAD)
        if m.per_key:
            yield _counter("vkeys_key_calls", "Calls per virtual key (opt-in: "
                           "c.VKeysGateway.metrics_per_key)", ["key_id", "status"], m.key_calls)
            yield _counter("vkeys_key_cost_usd", "Cost in USD per virtual key (opt-in)",
                           ["key_id"], {(k,): v for k, v in m.key_cost.items()}, scale=1e-12)


def _counter(name: str, doc: str, labels: list[str], values: dict[tuple, float],
             scale: float = 1.0) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in list(values.items()):
        family.add_metric(list(key), value * scale)
    return family


def _histogram(name: str, doc: str, values: dict[tuple, list],
               buckets: tuple[float, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["operation", "provider"])
    for key, row in list(values.items()):
        cumulative, out = 0, []
        for bound, count in zip((*buckets, float("inf")), row[:-1]):
            cumulative += count
            out.append((floatToGoString(bound), cumulative))
        family.add_metric(list(key), out, row[-1])
    return family


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

    def _budgets(self, gw: GatewayView) -> Iterable[GaugeMetricFamily]:
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

    def _pools(self, gw: GatewayView) -> GaugeMetricFamily:
        pool = GaugeMetricFamily("vkeys_upstream_pool_connections", "Idle keep-alive "
                                 "connections pooled per provider", labels=["provider"])
        for name, transport in gw.transports.items():
            idle = getattr(transport, "_idle", None)  # the lean client's pool
            if idle is None:  # aiohttp's: its connector's idle connections, if it has any
                session = getattr(transport, "_session", None)
                idle = getattr(getattr(session, "connector", None), "_conns", None)
            if isinstance(idle, dict):
                try:
                    pool.add_metric([name], sum(len(conns) for conns in list(idle.values())))
                except TypeError:  # a shape this version does not know
                    pass
        return pool

    def _journal(self, gw: GatewayView) -> Iterable[GaugeMetricFamily]:
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
