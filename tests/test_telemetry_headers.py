"""Internal headers stay inside: no ``x-vkeys-*`` request header reaches an upstream, even
when an operator lists it in forward_headers; the fake provider served over HTTP is
driven by the body's ``metadata.vkeys_fake_*`` entries, which the gateway relays."""

from __future__ import annotations

import json

import openai
import pytest

from misbehaving import Misbehaving, response
from support import REAL_OPENAI_KEY, fake_controls, openai_client

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = json.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": "ok"}}],
                     "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                               "total_tokens": 4}}).encode()


@pytest.fixture
def counting():
    upstream = Misbehaving(lambda n, head, body: [response(200, ANSWER)])
    yield upstream
    upstream.stop()


@pytest.mark.parametrize("front,client", [("lean", "lean"), ("tornado", "aiohttp")])
def test_no_x_vkeys_header_reaches_an_upstream(make_gateway, counting, monkeypatch,
                                               front, client):
    monkeypatch.setenv("CNT_OPENAI_KEY", REAL_OPENAI_KEY)
    gw = make_gateway(front=front, upstream_client=client, read_timeout=3.0,
                      forward_headers=["openai-beta", "x-vkeys-fake-error",
                                       "X-VKeys-Fake-Latency-Ms", "x-vkeys-anything"],
                      providers={"openai": {"kind": "openai",
                                            "base_url": f"http://127.0.0.1:{counting.port}/v1",
                                            "api_key_env": "CNT_OPENAI_KEY"}})
    key, _ = gw.create_key()
    sdk = openai_client(gw, key, default_headers={
        "x-vkeys-fake-error": "500", "x-vkeys-fake-latency-ms": "10",
        "x-vkeys-anything": "secret-ish", "openai-beta": "assistants=v2"})
    reply = sdk.chat.completions.create(**CHAT, extra_body=fake_controls("503"))
    assert reply.choices[0].message.content == "ok"
    assert counting.wait_for(lambda: counting.requests == 1)
    head = counting.heads[0].decode("latin-1").lower()
    assert "x-vkeys" not in head, head
    assert "openai-beta: assistants=v2" in head  # a listed header still goes
    assert f"bearer {REAL_OPENAI_KEY.lower()}" in head
    body = json.loads(counting.bodies[0])
    assert body["metadata"] == {"vkeys_fake_error": "503"}  # the body goes unchanged


def test_the_http_fake_obeys_body_controls_through_the_gateway(relay_gateway):
    key, _ = relay_gateway.create_key()
    sdk = openai_client(relay_gateway, key)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(**CHAT, extra_body=fake_controls("502"))
    assert info.value.status_code == 502 and "injected fake error" in info.value.body["message"]
    # the same header is ignored on the way to it
    headers = {"x-vkeys-fake-error": "500"}
    reply = openai_client(relay_gateway, key, default_headers=headers
                          ).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
