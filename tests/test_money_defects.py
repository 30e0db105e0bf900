"""Regression tests for the money defects an adversarial probe found (issue 11, items 1, 5,
8 and the deep-nesting 500): each reproduces the attack as reported, over real sockets."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from support import ServeProcess, openai_client

PRICED = {"gpt-4o-mini": {"input_mtok": 0.15, "output_mtok": 0.6}}


def post(gw, path: str, body: dict | bytes, key: str) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(gw.url + path, data=data, method="POST",
                                     headers={"Authorization": f"Bearer {key}",
                                              "x-api-key": key,
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw[:1] == b"{" else {"raw": raw.decode()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def key_limits(gw, key_id: str) -> dict[str, dict]:
    status, report = gw.admin("GET", f"/keys/{key_id}")
    assert status == 200, report
    return {limit["scope"]: limit for limit in report["limits"]}


def spent_key(gw) -> tuple[str, dict]:
    """A key spent to refusal: a tiny total budget and a small TPM, as in the report."""
    key, record = gw.create_key(owner="mallory", team="shared",
                                tpm=1000, budgets=[{"usd": 0.0001, "period": "total"}])
    client = openai_client(gw, key)
    for _ in range(50):
        try:
            client.chat.completions.create(model="gpt-4o-mini", max_tokens=100,
                                           messages=[{"role": "user", "content": "hi"}])
        except openai.RateLimitError:
            break
    else:
        raise AssertionError("the key never reached its cap")
    return key, record


@pytest.mark.parametrize("field, value", [
    ("max_tokens", -1000000), ("max_completion_tokens", -1000000000), ("max_tokens", 0),
    ("max_tokens", 1.5), ("max_tokens", "100"), ("max_tokens", True),
    ("max_tokens", 10**15), ("max_completion_tokens", [1]),
])
def test_bad_output_caps_are_400_and_hold_nothing(make_gateway, field, value):
    gw = make_gateway(fake_mode="always", price_overrides=PRICED)
    key, record = spent_key(gw)
    before = key_limits(gw, record["id"])
    for stream in (False, True):
        body = {"model": "gpt-4o-mini", "stream": stream, field: value,
                "messages": [{"role": "user", "content": "hi"}]}
        status, answer = post(gw, "/openai/v1/chat/completions", body, key)
        assert status == 400, answer
        message = answer["error"]["message"]
        assert f"invalid '{field}'" in message and answer["error"]["param"] == field
    after = key_limits(gw, record["id"])
    for scope in (f"key:{record['id']}", "team:shared", "global"):
        assert after[scope]["budgets"] == before[scope]["budgets"] if scope in before else True
    key_budget = after[f"key:{record['id']}"]["budgets"][0]
    assert key_budget["held_usd"] == 0 and key_budget["spent_usd"] > 0
    # The key is still refused for a normal call: nothing opened room.
    status, answer = post(gw, "/openai/v1/chat/completions",
                          {"model": "gpt-4o-mini", "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hi"}]}, key)
    assert status == 429 and "budget exhausted" in answer["error"]["message"]


def test_negative_caps_on_every_dialect(gateway):
    key, _ = gateway.create_key(owner="m")
    cases = [("/openai/v1/completions", {"model": "gpt-4o-mini", "prompt": "x",
                                         "max_tokens": -5}, "max_tokens"),
             ("/openai/v1/responses", {"model": "gpt-4o-mini", "input": "x",
                                       "max_output_tokens": -5}, "max_output_tokens"),
             ("/anthropic/v1/messages", {"model": "claude-haiku-4-5", "max_tokens": -5,
                                         "messages": [{"role": "user", "content": "x"}]},
              "max_tokens")]
    for path, body, field in cases:
        status, answer = post(gateway, path, body, key)
        assert status == 400, (path, answer)
        if path.startswith("/anthropic"):
            assert answer["type"] == "error" and field in answer["error"]["message"]
        else:
            assert field in answer["error"]["message"]
    assert all(e["status"] == "error" and e["http_status"] == 400
               for e in gateway.events[-3:])


def test_n_choices_multiply_the_hold(make_gateway):
    # $0.01 per output token: 10 tokens cost $0.10; n=4 holds $0.40.
    gw = make_gateway(fake_mode="always",
                      price_overrides={"gpt-4o-mini": {"input_mtok": 0, "output_mtok": 10000}})
    key, _ = gw.create_key(owner="n", budgets=[{"usd": 0.3, "period": "day"}])
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "n": 4,
            "messages": [{"role": "user", "content": "hi"}]}
    status, answer = post(gw, "/openai/v1/chat/completions", body, key)
    assert status == 429 and "$0.40" in answer["error"]["message"], answer
    status, answer = post(gw, "/openai/v1/chat/completions", {**body, "n": 2}, key)
    assert status == 200 and len(answer["choices"]) == 2
    assert answer["usage"]["completion_tokens"] == 20
    for bad in (0, 129, "2", 1.0):
        status, answer = post(gw, "/openai/v1/chat/completions", {**body, "n": bad}, key)
        assert status == 400 and "invalid 'n'" in answer["error"]["message"], answer


def test_huge_reported_usage_is_recorded_and_charged(make_gateway, tmp_path):
    """An upstream reporting 10^15 tokens: the call is recorded (clamped, flagged), the key is
    charged, and after a restart the spend is still there."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Liar(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            body = json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4o-mini",
                               "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                   "role": "assistant", "content": "hi"}}],
                               "usage": {"prompt_tokens": 10**15,
                                         "completion_tokens": 10**15}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    upstream = HTTPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        providers = {"openai": {"kind": "openai",
                                "base_url": f"http://127.0.0.1:{upstream.server_port}/v1",
                                "api_key_env": "LIAR_KEY"}}
        import os
        os.environ["LIAR_KEY"] = "sk-liar"
        data_dir = tmp_path / "serve"
        data_dir.mkdir()
        serve = ServeProcess(data_dir, {"providers": providers, "price_overrides": PRICED},
                             env={"LIAR_KEY": "sk-liar"})
        try:
            status, created = serve.admin("POST", "/keys", {"owner": "u", "budgets": [
                {"usd": 5, "period": "month"}]})
            key = created["key"]
            client = openai.OpenAI(api_key=key, base_url=serve.url + "/openai/v1", max_retries=0)
            reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                                   messages=[{"role": "user", "content": "x"}])
            assert reply.choices[0].message.content == "hi"
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                               messages=[{"role": "user", "content": "x"}])
        finally:
            serve.kill()  # no clean shutdown: what was journaled must be enough
        serve = ServeProcess(data_dir, {"providers": providers, "price_overrides": PRICED},
                             env={"LIAR_KEY": "sk-liar"})
        try:
            status, report = serve.admin("GET", f"/keys/{created['id']}")
            budget = report["limits"][0]["budgets"][0]
            assert budget["spent_usd"] >= 5, budget
            client = openai.OpenAI(api_key=key, base_url=serve.url + "/openai/v1", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                               messages=[{"role": "user", "content": "x"}])
        finally:
            serve.stop()
        rows = [json.loads(line) for path in (data_dir / "warehouse" / "journal").glob("*")
                for line in path.read_text().splitlines() if line.strip()]
        parquet = list((data_dir / "warehouse" / "events").rglob("*.parquet"))
        if parquet:
            import pyarrow.parquet as pq
            rows += pq.read_table(parquet).to_pylist()
        ok = [r for r in rows if r.get("status") == "ok"]
        assert ok, rows
        row = ok[0]
        assert row["usage_estimated"] is True and row["input_tokens"] == 10**8
        assert "usage_clamped" in row["tags"] and 0 < row["cost_pico"] < 2**63
    finally:
        upstream.shutdown()


def test_virtual_key_refused_as_provider_credential(tmp_path):
    data_dir = tmp_path / "vk"
    data_dir.mkdir()
    with pytest.raises(RuntimeError) as info:
        ServeProcess(data_dir, env={"OPENAI_API_KEY": "vk-abc123_" + "x" * 32})
    text = str(info.value)
    assert "virtual key" in text and "OPENAI_API_KEY" in text
    assert "Traceback" not in text and "x" * 32 not in text


@pytest.mark.parametrize("depth", [256, 300, 1000])
def test_deeply_nested_prompt_is_400(gateway, depth):
    key, _ = gateway.create_key(owner="deep")
    nested = "[" * depth + "]" * depth
    raw = ('{"model": "gpt-4o-mini", "max_tokens": 2, "messages": [{"role": "user", '
           '"content": ' + nested + '}]}').encode()
    status, answer = post(gateway, "/openai/v1/chat/completions", raw, key)
    assert status == 400, answer
    assert "deeper than 255" in answer["error"]["message"]
    # deep nesting outside the prompt reaches the fake, which must still answer
    raw = ('{"model": "gpt-4o-mini", "max_tokens": 2, "metadata": ' + nested +
           ', "messages": [{"role": "user", "content": "x"}]}').encode()
    status, answer = post(gateway, "/openai/v1/chat/completions", raw, key)
    assert status in (200, 400), answer


def test_fake_controls_never_reach_a_provider(fake_upstream, make_gateway, monkeypatch):
    """x-vkeys-fake-* headers are gateway-internal: by default they are not relayed to a
    provider (here the fake process, which would obey them), but the in-process fake
    still honours them."""
    from support import REAL_OPENAI_KEY

    monkeypatch.setenv("HDR_OPENAI_KEY", REAL_OPENAI_KEY)
    gw = make_gateway(read_timeout=3.0, providers={"openai": {
        "kind": "openai", "base_url": fake_upstream["openai"].url + "/v1",
        "api_key_env": "HDR_OPENAI_KEY"}})
    key, _ = gw.create_key(owner="hdr")
    client = openai_client(gw, key, default_headers={"x-vkeys-fake-error": "503"})
    reply = client.chat.completions.create(model="gpt-4o-mini", max_tokens=3,
                                           messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content  # the provider never saw the control
    seen = fake_upstream["openai"].seen()[-1]
    assert not any(h.startswith("x-vkeys-") for h in seen["headers"]), seen
    fake = make_gateway(fake_mode="always")
    key, _ = fake.create_key(owner="hdr")
    with pytest.raises(openai.APIStatusError) as info:
        openai_client(fake, key, default_headers={"x-vkeys-fake-error": "503"}
                      ).chat.completions.create(model="gpt-4o-mini", max_tokens=3,
                                                messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
