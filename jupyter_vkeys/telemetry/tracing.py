"""OpenTelemetry spans of data-plane calls (the optional ``jupyter-vkeys[otel]`` extra).

Off by default. With ``c.VKeysGateway.tracing = True`` and the extra installed,
:func:`make_tracer` returns a :class:`CallTracer` that turns each finished
:class:`Call` into one span (after the fact: start and end times are the call's
own, so nothing runs inside the relay loop). The span continues the caller's
W3C ``traceparent``, so a notebook's own tracing and the gateway's line up, and
carries the GenAI semantic convention attributes plus cost, user, team and key.

The SDK is configured the standard way: if the process already installed a
tracer provider (an application, a test with an in-memory exporter), it is
used; otherwise one is built from the ``OTEL_*`` environment (service name,
resource attributes, ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_*``) with a
batch span processor and the OTLP exporter. ``OTEL_SDK_DISABLED=true`` turns it
off.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ..call import Call

__all__ = ["CallTracer", "make_tracer"]

log = logging.getLogger("jupyter_vkeys.telemetry")


def _provider():
    """The global tracer provider, installing one from ``OTEL_*`` if none is set."""
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if type(provider).__name__ not in ("ProxyTracerProvider", "NoOpTracerProvider"):
        return provider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                               "jupyter-vkeys")})
    provider = TracerProvider(resource=resource)
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower()
    if "otlp" in exporters:
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


class CallTracer:
    """Makes one span per finished call (created once per gateway by :func:`make_tracer`)."""

    def __init__(self) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from .._version import __version__

        self._tracer = _provider().get_tracer("jupyter_vkeys", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._kind = SpanKind.SERVER
        self._error = Status(StatusCode.ERROR)
        self._ok = Status(StatusCode.OK)

    def span(self, call: "Call", header: Callable[[str], str | None]) -> None:
        """Record ``call`` as one span; ``header`` reads the request's headers (for
        ``traceparent`` and ``tracestate``). Called by :meth:`Telemetry.finished`."""
        carrier = {}
        for name in ("traceparent", "tracestate"):
            value = header(name)
            if value:
                carrier[name] = value
        context = self._propagator.extract(carrier) if carrier else None
        record = call.record
        usage = call.usage
        attributes = {
            "gen_ai.provider.name": call.provider,
            "gen_ai.operation.name": _OPERATION_NAMES.get(call.operation, call.operation),
            "gen_ai.request.model": call.request_model,
            "gen_ai.response.model": call.response_model or "",
            "http.response.status_code": call.http_status,
            "vkeys.request_id": call.request_id,
            "vkeys.status": call.status,
            "vkeys.stream": call.stream,
        }
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_total
            attributes["gen_ai.usage.output_tokens"] = usage.output
        if call.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = (call.finish_reason,)
        if call.cost is not None:
            attributes["vkeys.cost_usd"] = call.cost.pico / 1e12
        if record is not None:
            attributes.update({"vkeys.key_id": record.id, "user.name": record.owner,
                               "vkeys.user": record.owner, "vkeys.team": record.team,
                               "vkeys.project": record.project})
        if call.error_type:
            attributes["error.type"] = call.error_type
        name = f"{attributes['gen_ai.operation.name']} {call.request_model}".strip()
        ended = call.ended or call.started
        span = self._tracer.start_span(name, context=context, kind=self._kind,
                                       attributes=attributes,
                                       start_time=int(call.started * 1e9))
        span.set_status(self._ok if call.status in ("ok", "dry_run") else self._error)
        span.end(end_time=int(ended * 1e9))


# gen_ai.operation.name values of the semantic conventions, per gateway operation.
_OPERATION_NAMES = {"chat.completions": "chat", "completions": "text_completion",
                    "embeddings": "embeddings", "responses": "chat", "messages": "chat",
                    "messages.count_tokens": "count_tokens"}


def make_tracer(enabled: bool) -> CallTracer | None:
    """A :class:`CallTracer`, or None when tracing is off, disabled by
    ``OTEL_SDK_DISABLED`` or the extra is not installed (logged once)."""
    if not enabled or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        return CallTracer()
    except ImportError as exc:
        log.warning("jupyter-vkeys: c.VKeysGateway.tracing is on but OpenTelemetry is not "
                    "installed (pip install 'jupyter-vkeys[otel]'): %s", exc)
        return None
