"""OpenTelemetry (the otel extra): with an in-memory span exporter, each call yields one
span with the GenAI attributes, cost, user, team and key id, continuing the caller's
``traceparent``; tracing off yields none."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter)

from support import anthropic_client, openai_client  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def gateway_spans(exporter, expect: int = 0) -> list:
    """The gateway's spans (an SDK client may record its own in the same process), once
    ``expect`` of them are there (the gateway records them just after the response)."""
    deadline = time.monotonic() + 5
    while True:
        spans = [s for s in exporter.get_finished_spans()
                 if s.instrumentation_scope.name == "jupyter_vkeys"]
        if len(spans) >= expect or time.monotonic() > deadline:
            return spans
        time.sleep(0.01)


@pytest.fixture(scope="module")
def exporter():
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.mark.parametrize("front", ["lean", "tornado"])
def test_one_span_per_call_with_genai_attributes(make_gateway, exporter, front):
    exporter.clear()
    gw = make_gateway(front=front, fake_mode="always", tracing=True)
    key, record = gw.create_key(owner="ada", team="ml", project="p1")
    traceparent = f"00-{TRACE_ID}-{PARENT}-01"
    openai_client(gw, key, default_headers={"traceparent": traceparent}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    anthropic_client(gw, key).messages.create(model="claude-haiku-4-5", max_tokens=16,
                                              messages=[{"role": "user", "content": "hi"}])
    spans = gateway_spans(exporter, 2)
    assert len(spans) == 2, [(s.name, dict(s.attributes)) for s in spans]
    chat, messages = spans
    a = chat.attributes
    assert a["gen_ai.provider.name"] == "openai" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"].startswith("gpt-4o-mini")
    assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
    assert a["vkeys.cost_usd"] > 0 and a["vkeys.key_id"] == record["id"]
    assert a["vkeys.user"] == "ada" and a["vkeys.team"] == "ml"
    assert a["http.response.status_code"] == 200
    event = [e for e in gw.events if e["request_id"] == a["vkeys.request_id"]][0]
    assert a["gen_ai.usage.output_tokens"] == event["output_tokens"]
    # the caller's trace continues; a call without traceparent starts its own
    assert f"{chat.context.trace_id:032x}" == TRACE_ID
    assert f"{chat.parent.span_id:016x}" == PARENT
    # the anthropic SDK traces its own request and sends traceparent: the gateway's span
    # is its child, so a notebook's tracing and the gateway's line up
    client_spans = [s for s in exporter.get_finished_spans()
                    if s.instrumentation_scope.name != "jupyter_vkeys"]
    if client_spans:
        assert messages.parent is not None and messages.parent.is_remote
        assert messages.parent.span_id in {s.context.span_id for s in client_spans}
        assert messages.context.trace_id == messages.parent.trace_id
    assert f"{messages.context.trace_id:032x}" != TRACE_ID
    assert messages.attributes["gen_ai.provider.name"] == "anthropic"
    assert chat.end_time > chat.start_time
    assert key not in str(dict(a)) and key not in str(dict(messages.attributes))


def test_no_spans_when_tracing_is_off(make_gateway, exporter):
    exporter.clear()
    gw = make_gateway(fake_mode="always")
    key, _ = gw.create_key()
    openai_client(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}])
    time.sleep(0.2)
    assert gateway_spans(exporter) == []
