"""Every refusal: status, the client's own error format, and a message that says why."""

from __future__ import annotations

import json
import logging
import urllib.request

import anthropic
import openai
import pytest

from support import (REAL_ANTHROPIC_KEY, REAL_OPENAI_KEY, anthropic_client, fake_controls,
                     openai_client)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


@pytest.mark.parametrize("token, reason", [
    (None, "no virtual key given"),
    ("sk-not-a-virtual-key", "not a virtual key"),
    ("vk-short", "malformed virtual key"),
    ("vk-nosuchkey123_" + "x" * 32, "no virtual key matches"),
])
def test_401_openai_dialect(gateway, token, reason):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    status, _, body = raw_post(gateway.url + "/openai/v1/chat/completions",
                               json.dumps(CHAT).encode(), headers)
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key" and reason in body["error"]["message"]
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert gateway.events[-1]["status"] == "refused_key"


def test_401_anthropic_dialect_wrong_secret(gateway):
    key, record = gateway.create_key()
    wrong = key[:-4] + "AAAA"
    client = anthropic_client(gateway, wrong)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=2,
                               messages=[{"role": "user", "content": "x"}])
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert f"vk-{record['id']}_..." in body["error"]["message"]
    assert wrong not in json.dumps(body)


def test_revocation_takes_effect_on_next_request(gateway):
    key, record = gateway.create_key()
    client = openai_client(gateway, key)
    client.chat.completions.create(**CHAT)
    status, _ = gateway.admin("POST", f"/keys/{record['id']}/revoke")
    assert status == 200
    with pytest.raises(openai.AuthenticationError, match="was revoked"):
        client.chat.completions.create(**CHAT)
    with pytest.raises(anthropic.AuthenticationError, match="was revoked"):
        anthropic_client(gateway, key).messages.create(
            model="claude-haiku-4-5", max_tokens=2, messages=[{"role": "user", "content": "x"}])


def test_expired_key(gateway, clock):
    key, _ = gateway.create_key(expires_at=clock() + 60)
    client = openai_client(gateway, key)
    client.chat.completions.create(**CHAT)
    clock.advance(61)
    with pytest.raises(openai.AuthenticationError, match="expired at"):
        client.chat.completions.create(**CHAT)


def test_child_key_refused_when_parent_revoked(gateway):
    parent_key, parent = gateway.create_key(owner="alice")
    child_key, child = gateway.create_key(parent_id=parent["id"])
    assert child["owner"] == "alice"
    openai_client(gateway, child_key).chat.completions.create(**CHAT)
    gateway.admin("POST", f"/keys/{parent['id']}/revoke")
    with pytest.raises(openai.AuthenticationError, match="which is revoked"):
        openai_client(gateway, child_key).chat.completions.create(**CHAT)


def test_rotation_without_grace(gateway):
    old, record = gateway.create_key()
    status, body = gateway.admin("POST", f"/keys/{record['id']}/rotate", {})
    new = body["key"]
    assert status == 200 and new != old and new.startswith(f"vk-{record['id']}_")
    openai_client(gateway, new).chat.completions.create(**CHAT)
    with pytest.raises(openai.AuthenticationError):
        openai_client(gateway, old).chat.completions.create(**CHAT)


def test_rotation_with_grace(gateway, clock):
    old, record = gateway.create_key()
    _, body = gateway.admin("POST", f"/keys/{record['id']}/rotate", {"grace_seconds": 300})
    openai_client(gateway, old).chat.completions.create(**CHAT)
    openai_client(gateway, body["key"]).chat.completions.create(**CHAT)
    clock.advance(301)
    with pytest.raises(openai.AuthenticationError):
        openai_client(gateway, old).chat.completions.create(**CHAT)
    openai_client(gateway, body["key"]).chat.completions.create(**CHAT)


def test_secret_shown_once(gateway):
    key, record = gateway.create_key(alias="once")
    secret = key.split("_", 1)[1]
    status, shown = gateway.admin("GET", f"/keys/{record['id']}")
    _, listed = gateway.admin("GET", "/keys")
    assert status == 200 and "key" not in shown
    assert secret not in json.dumps(shown) and secret not in json.dumps(listed)
    assert secret not in json.dumps(gateway.admin("GET", "/audit")[1])
    db = (gateway.gateway.store.path).read_bytes()
    assert secret.encode() not in db


def test_403_model_not_allowed_both_dialects(gateway):
    key, record = gateway.create_key(models=["gpt-4o-mini", "claude-haiku-*"])
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai_client(gateway, key).chat.completions.create(**{**CHAT, "model": "gpt-4o"})
    message = info.value.body["message"]
    assert "'gpt-4o' is not allowed" in message and "gpt-4o-mini, claude-haiku-*" in message
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        anthropic_client(gateway, key).messages.create(
            model="claude-sonnet-4-5", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "permission_error"
    assert gateway.events[-1]["status"] == "refused_model"


def test_400_bad_json_missing_model_and_404_unknown_model(gateway):
    key, _ = gateway.create_key()
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, _, body = raw_post(gateway.url + "/openai/v1/chat/completions", b"{not json", auth)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, _, body = raw_post(gateway.url + "/openai/v1/chat/completions",
                               b'{"messages": []}', auth)
    assert status == 400 and body["error"]["param"] == "model"
    status, _, body = raw_post(gateway.url + "/anthropic/v1/messages", b"[1, 2]",
                               {"x-api-key": key})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, _, body = raw_post(gateway.url + "/openai/v1/chat/completions",
                               json.dumps({**CHAT, "model": "llama-unknown"}).encode(), auth)
    assert status == 404 and "llama-unknown" in body["error"]["message"]


def test_413_oversized_body(make_gateway):
    gw = make_gateway(fake_mode="always", max_body_bytes=2048)
    key, _ = gw.create_key()
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    with pytest.raises(openai.APIStatusError) as info:
        openai_client(gw, key).chat.completions.create(**big)
    assert info.value.status_code == 413
    assert "exceeds the gateway's limit of 2048 bytes" in info.value.body["message"]
    with pytest.raises(anthropic.APIStatusError) as info:
        anthropic_client(gw, key).messages.create(model="claude-haiku-4-5", max_tokens=2,
                                                  messages=big["messages"])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"


def test_upstream_error_passthrough(relay_gateway):
    key, _ = relay_gateway.create_key()
    client = openai_client(relay_gateway, key)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**CHAT, extra_body=fake_controls("503"))
    assert info.value.status_code == 503 and "injected fake error" in info.value.body["message"]
    assert relay_gateway.events[-1]["status"] == "upstream_error"


def test_502_unreachable_and_504_timeout(make_gateway, monkeypatch, fake_upstream):
    monkeypatch.setenv("TEST_OPENAI_KEY", REAL_OPENAI_KEY)
    monkeypatch.setenv("TEST_ANTHROPIC_KEY", REAL_ANTHROPIC_KEY)
    from support import free_port
    dead = free_port()
    gw = make_gateway(read_timeout=0.5, providers={
        "openai": {"kind": "openai", "base_url": f"http://127.0.0.1:{dead}/v1",
                   "api_key_env": "TEST_OPENAI_KEY"},
        "anthropic": {"kind": "anthropic", "base_url": fake_upstream["anthropic"].url,
                      "api_key_env": "TEST_ANTHROPIC_KEY"}})
    key, _ = gw.create_key()
    with pytest.raises(openai.APIStatusError) as info:
        openai_client(gw, key).chat.completions.create(**CHAT)
    assert info.value.status_code == 502 and "unreachable" in info.value.body["message"]
    client = anthropic_client(gw, key)
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-haiku-4-5", max_tokens=2,
                               messages=[{"role": "user", "content": "x"}],
                               extra_body=fake_controls("hang"))
    assert info.value.status_code == 504 and info.value.body["error"]["type"] == "timeout_error"
    assert gw.events[-1]["status"] == "timeout"


def test_stream_cut_by_upstream_is_recorded_and_charged(relay_gateway):
    key, _ = relay_gateway.create_key()
    client = openai_client(relay_gateway, key)
    with pytest.raises(Exception):
        list(client.chat.completions.create(**CHAT, stream=True,
                                            extra_body=fake_controls("cut:4")))
    event = relay_gateway.events[-1]
    assert event["status"] == "upstream_error" and event["usage_estimated"]
    assert event["output_tokens"] >= 1


def test_wrong_dialect_for_provider(relay_gateway):
    key, _ = relay_gateway.create_key()
    with pytest.raises(openai.BadRequestError, match="speaks the anthropic API"):
        openai_client(relay_gateway, key).chat.completions.create(
            **{**CHAT, "model": "claude-haiku-4-5"})


def test_admin_api_requires_token_and_validates(gateway):
    status, body = gateway.admin("GET", "/keys", token="wrong")
    assert status == 401 and "admin token" in body["error"]["message"]
    status, body = gateway.admin("POST", "/keys", {"rpm": -1})
    assert status == 400 and "rpm" in body["error"]["message"]
    status, body = gateway.admin("POST", "/keys", {"budgets": [{"usd": 5, "period": "year"}]})
    assert status == 400 and "period must be one of" in body["error"]["message"]
    status, body = gateway.admin("POST", "/keys", {"colour": "blue"})
    assert status == 400 and "unknown fields" in body["error"]["message"]
    status, body = gateway.admin("GET", "/keys/nope")
    assert status == 404
    status, body = gateway.admin("PUT", "/policies/bogus", {"rpm": 1})
    assert status == 400 and "invalid scope" in body["error"]["message"]


def test_audit_trail_records_before_and_after(gateway):
    _, record = gateway.create_key(alias="a1")
    gateway.admin("PATCH", f"/keys/{record['id']}", {"alias": "a2", "rpm": 5})
    gateway.admin("POST", f"/keys/{record['id']}/revoke")
    gateway.admin("PUT", "/policies/team:ml", {"rpm": 10})
    _, body = gateway.admin("GET", "/audit")
    actions = [(r["action"], r["target"]) for r in body["audit"]]
    assert actions == [("key.create", f"key:{record['id']}"), ("key.update", f"key:{record['id']}"),
                       ("key.revoke", f"key:{record['id']}"), ("policy.set", "team:ml")]
    update = body["audit"][1]
    assert update["before"]["alias"] == "a1" and update["after"]["alias"] == "a2"
    assert update["after"]["policy"] == {"rpm": 5} and update["actor"] == "admin-token"


def test_real_keys_never_leak(relay_gateway, caplog, fake_upstream):
    """Responses, error bodies, headers, events and logs never contain the real keys."""
    caplog.set_level(logging.DEBUG)
    gw = relay_gateway
    key, _ = gw.create_key(models=["gpt-*", "claude-*", "text-*"])
    seen: list[str] = []
    oa = openai_client(gw, key)
    raw = oa.chat.completions.with_raw_response.create(**CHAT)
    seen += [raw.text, json.dumps(dict(raw.headers))]
    for error in ("401", "500", "cut:2"):
        try:
            list(openai_client(gw, key).chat.completions.create(
                **CHAT, stream=True, extra_body=fake_controls(error)))
        except openai.APIStatusError as exc:
            seen.append(exc.response.text)
            seen.append(json.dumps(dict(exc.response.headers)))
        except Exception as exc:
            seen.append(repr(exc))
    try:
        anthropic_client(gw, key).messages.create(model="gpt-4o", max_tokens=1,
                                                  messages=[{"role": "user", "content": "x"}])
    except anthropic.APIStatusError as exc:
        seen.append(exc.response.text)
    seen.append(json.dumps(gw.admin("GET", "/health")[1]))
    seen.append(json.dumps(gw.admin("GET", "/keys")[1]))
    seen.append(json.dumps(gw.admin("GET", "/audit")[1]))
    seen.append(json.dumps(gw.events, default=str))
    seen.append(caplog.text)
    everything = "\n".join(seen)
    for secret in (REAL_OPENAI_KEY, REAL_ANTHROPIC_KEY, "SECRET"):
        assert secret not in everything
    assert gw.gateway.provider_configs["openai"].api_key == REAL_OPENAI_KEY
    assert REAL_OPENAI_KEY not in repr(gw.gateway.provider_configs)


@pytest.mark.parametrize("max_delay", [1.0, 0.0])
def test_repeated_rate_refusals_are_paced(make_gateway, max_delay):
    """A client hammering a 429 without waiting gets its repeat refusals late (not never)."""
    import time

    gw = make_gateway(fake_mode="always", rate_refusal_delay=max_delay)
    key, _ = gw.create_key(rpm=1)
    url = gw.url + "/openai/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps(CHAT).encode()
    assert raw_post(url, body, headers)[0] == 200
    took = []
    for _ in range(3):
        start = time.perf_counter()
        status, reply_headers, reply = raw_post(url, body, headers)
        took.append(time.perf_counter() - start)
        assert status == 429 and "1 requests per minute" in reply["error"]["message"]
        assert int(reply_headers["retry-after"]) >= 1
    assert took[0] < 0.2  # the first refusal is answered at once
    if max_delay:
        assert all(0.9 <= t < 2.0 for t in took[1:]), took  # then held for the wait, capped
    else:
        assert all(t < 0.2 for t in took[1:]), took
    refused = [e for e in gw.events if e["status"] == "refused_rate"]
    assert len(refused) == 3  # every refusal is recorded, held or not
