"""What a platform engineer watches: Prometheus metrics, the access log, readiness, traces.

:class:`Telemetry` is created by :class:`..gateway.core.VKeysGateway` (as
``gateway.telemetry``) and fed from one place: the finished :class:`Call` of
every data-plane call, handed over by ``ProxyCall._conclude``
(:meth:`Telemetry.finished`). Nothing here runs inside the relay loop, and
nothing here can fail a call: :meth:`Telemetry.finished` logs its first error
and swallows every one.

- :mod:`.metrics`: counters and histograms in a registry of the gateway's own,
  gauges read at scrape time (``GET {prefix}/metrics``);
- :mod:`.access_log`: one line per request, text or JSON;
- :mod:`.readiness`: ``GET {prefix}/api/ready``;
- :mod:`.tracing`: OpenTelemetry spans (the ``otel`` extra, off by default);
- :mod:`.view`: what telemetry reads of the gateway (the tornado handlers of
  `/metrics` and `/api/ready` are in :mod:`jupyter_vkeys.gateway.telemetry_api`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .access_log import AccessLog
from .readiness import Readiness

from .view import GatewayView

if TYPE_CHECKING:
    from ..call import Call
    from ..http.exchange import Exchange

__all__ = ["Telemetry"]

log = logging.getLogger("jupyter_vkeys.telemetry")


class Telemetry:
    """Metrics, access log, readiness and tracing of one gateway."""

    def __init__(self, gateway: GatewayView) -> None:
        self.gateway = gateway
        self.metrics = None
        self.tracer = None
        self.access = AccessLog(gateway.access_log_format, gateway.access_log,
                                gateway.access_log_file)
        self.readiness = Readiness(gateway.ready_writer_grace)
        self.in_flight = 0
        self._failed = False
        self._pending: list[tuple["Call", "Exchange"]] = []
        if gateway.metrics:
            from .metrics import GatewayMetrics

            self.metrics = GatewayMetrics(gateway, per_key=gateway.metrics_per_key)
        self.active = self.metrics is not None or self.access.enabled  # anything to feed

    def start(self) -> None:
        """Called by the gateway once it has started: the tracer (which may build an SDK
        provider) and the readiness baseline."""
        from .tracing import make_tracer

        self.tracer = make_tracer(self.gateway.tracing)
        self.active = self.metrics is not None or self.access.enabled or self.tracer is not None
        self.readiness.baseline(self.gateway)

    def started(self) -> None:
        """A data-plane call began (``ProxyCall.run``); :meth:`finished` ends it."""
        self.in_flight += 1

    def finished(self, call: "Call", exchange: "Exchange") -> None:
        """Note one finished call for the metrics, the access log and the tracer. Called
        once per call by ``ProxyCall._conclude``, after its event was emitted and before
        the client gets the end of the response: so the work itself is deferred to
        :meth:`flush`, run by the loop right after (the call's latency does not include
        it). Never raises."""
        self.in_flight -= 1
        if not self.active:
            return
        pending = self._pending
        pending.append((call, exchange))
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (a caller outside the server): at once
                self.flush()

    def flush(self) -> None:
        """Feed the calls noted by :meth:`finished` to the metrics, the access log and the
        tracer. Never raises: the first failure is logged with its traceback, later ones
        are not."""
        pending, self._pending = self._pending, []
        metrics, access, tracer = self.metrics, self.access, self.tracer
        for call, exchange in pending:
            try:
                if metrics is not None:
                    metrics.observe(call)
                if access.enabled:
                    record = call.record
                    access.write(method="POST", path=_path_of(exchange),
                                 status=call.http_status,
                                 duration=(call.ended or call.started) - call.started,
                                 nbytes=call.response_bytes,
                                 key_id=record.id if record else "",
                                 model=call.request_model, request_id=call.request_id,
                                 when=call.started)
                if tracer is not None:
                    tracer.span(call, exchange.header)
            except Exception:
                if not self._failed:
                    self._failed = True
                    log.exception("jupyter-vkeys: telemetry of call %s failed (logged once; "
                                  "the call itself is unaffected)", call.request_id)
        access.flush()

    def request(self, method: str, path: str, status: int, duration: float, nbytes: int,
                request_id: str = "") -> None:
        """Access line of a request that no data-plane call answered: written by the lean
        front for its own refusals and by the standalone app's ``log_function``."""
        self.access.write(method=method, path=path, status=status, duration=duration,
                          nbytes=nbytes, request_id=request_id)
        self.access.flush()

    def close(self) -> None:
        """Flush what is pending (gateway shutdown)."""
        self.flush()
        self.access.close()


def _path_of(exchange: "Exchange") -> str:
    """The request path of ``exchange`` (lean front or tornado), without a query string."""
    request = getattr(exchange, "request", None)
    if request is not None:
        return request.url
    handler = getattr(exchange, "handler", None)
    return handler.request.path if handler is not None else ""


