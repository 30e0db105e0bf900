"""The official OpenAI and Anthropic SDKs talk to the gateway with a virtual key.

Each test runs twice: against the in-process fake provider, and through the
real provider adapters to the fake provider served by another process (the
relay path on real sockets, with real keys added by the gateway).
"""

from __future__ import annotations

import asyncio

import pytest

from support import anthropic_client, build_relay_gateway, openai_client


@pytest.fixture(params=["fake", "relay-lean", "relay-aiohttp"])
def gw(request, make_gateway, fake_upstream, monkeypatch, tmp_path):
    """The in-process fake provider (behind tornado's front), or the relay path with either
    upstream client (lean behind the lean front, aiohttp behind tornado's)."""
    if request.param == "fake":
        return make_gateway(fake_mode="always", front="tornado")
    client = request.param.split("-")[1]
    return build_relay_gateway(make_gateway, fake_upstream, monkeypatch, tmp_path, client,
                               "lean" if client == "lean" else "tornado")


def test_openai_chat_sync(gw):
    key, _ = gw.create_key(alias="t", owner="alice")
    client = openai_client(gw, key)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}], max_tokens=7)
    assert reply.choices[0].message.content
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 0
    assert reply.choices[0].finish_reason == "length"
    [event] = [e for e in gw.events if e["status"] == "ok"]
    assert event["output_tokens"] == 7 and event["user"] == "alice"
    assert event["cost_usd"] > 0 and event["provider"] == "openai"


def test_openai_chat_stream_without_usage_request(gw):
    """The gateway asks the upstream for usage but strips the extra chunk for the client."""
    key, _ = gw.create_key()
    client = openai_client(gw, key)
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream please"}], max_tokens=5,
        stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    assert all(c.choices for c in chunks), "usage-only chunk must be stripped"
    assert all(getattr(c, "usage", None) is None for c in chunks)
    event = gw.events[-1]
    assert event["output_tokens"] == 5 and event["stream"] and not event["usage_estimated"]


def test_openai_chat_stream_with_usage_request(gw):
    key, _ = gw.create_key()
    client = openai_client(gw, key)
    chunks = list(client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream please"}], max_tokens=4,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_openai_async_client(gw):
    import openai

    key, _ = gw.create_key()

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(api_key=key, base_url=gw.url + "/openai/v1", max_retries=0)
        replies = await asyncio.gather(*[client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"q{i}"}], max_tokens=3)
            for i in range(8)])
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "s"}], max_tokens=3,
            stream=True)
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return [r.choices[0].message.content for r in replies] + ["".join(parts)]

    results = asyncio.run(run())
    assert len(results) == 9 and all(results)


def test_openai_embeddings_completions_responses_models(gw):
    key, _ = gw.create_key(models=["gpt-4o-mini", "text-embedding-3-small", "claude-*"])
    client = openai_client(gw, key)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 1536
    floats = client.embeddings.create(model="text-embedding-3-small", input="x",
                                      encoding_format="float", dimensions=256)
    assert len(floats.data[0].embedding) == 256
    comp = client.completions.create(model="gpt-4o-mini", prompt="once upon", max_tokens=3)
    assert len(comp.choices[0].text.split()) == 3
    resp = client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=6)
    assert len(resp.output_text.split()) == 6 and resp.usage.output_tokens == 6
    with client.responses.stream(model="gpt-4o-mini", input="hi", max_output_tokens=4) as stream:
        final = stream.get_final_response()
    assert final.usage.output_tokens == 4
    names = {m.id for m in client.models.list()}
    assert names == {"gpt-4o-mini", "text-embedding-3-small", "claude-haiku-4-5",
                     "claude-sonnet-4-5"}
    ops = [e["operation"] for e in gw.events]
    assert {"embeddings", "completions", "responses"} <= set(ops)
    assert gw.events[-1]["output_tokens"] == 4


def test_anthropic_messages_plain_and_stream(gw):
    key, _ = gw.create_key(owner="bob", team="ml")
    client = anthropic_client(gw, key)
    message = client.messages.create(model="claude-haiku-4-5", max_tokens=6,
                                     messages=[{"role": "user", "content": "hello"}])
    assert message.usage.output_tokens == 6 and message.stop_reason == "max_tokens"
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=5,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 5 and final.usage.output_tokens == 5
    count = client.messages.count_tokens(model="claude-haiku-4-5",
                                         messages=[{"role": "user", "content": "count me"}])
    assert count.input_tokens > 0
    streamed = [e for e in gw.events if e["stream"]][-1]
    assert streamed["output_tokens"] == 5 and streamed["input_tokens"] > 0
    assert streamed["team"] == "ml" and streamed["cost_usd"] > 0


def test_relay_adds_real_key_and_strips_virtual_key(relay_gateway, fake_upstream):
    gw = relay_gateway
    key, _ = gw.create_key()
    openai_client(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    anthropic_client(gw, key).messages.create(
        model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    for name in ("openai", "anthropic"):
        last = fake_upstream[name].seen()[-1]
        assert last["key_ok"], f"{name} upstream did not get the real key"
        assert not last["saw_vkey"], f"{name} upstream saw the virtual key"
        assert "cookie" not in last["headers"]
