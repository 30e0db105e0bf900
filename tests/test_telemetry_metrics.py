"""Metrics and the access log against a real gateway on a real port (both fronts).

After calls of known models and outcomes (answered, refused by budget, refused by
rate, an upstream error, a bad key, a bad request), the scraped counters and cost
sums equal what the warehouse (its Parquet files, read with DuckDB) holds for the
same calls, and the access log has exactly one line per request, without query
strings or secrets.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import urllib.error
import urllib.request
from collections import Counter

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jupyter_vkeys.warehouse import connect

from support import anthropic_client, openai_client

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def scrape(gw, path: str = "/metrics", headers: dict | None = None) -> dict:
    """``{(name, labels...): value}`` of every sample at ``path``."""
    request = urllib.request.Request(gw.url + path, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict, name: str, **match: str) -> float:
    return sum(value for (sample, labels), value in samples.items() if sample == name
               and all(dict(labels).get(k) == v for k, v in match.items()))


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_known_calls(gw) -> int:
    """The mix of outcomes; returns how many data-plane requests were sent."""
    ok_key, _ = gw.create_key(team="ml", project="p1")
    poor_key, _ = gw.create_key(team="ml", project="p2",
                                budgets=[{"usd": 0.000001, "period": "day"}])
    slow_key, _ = gw.create_key(team="ops", rpm=1)
    client = openai_client(gw, ok_key)
    client.chat.completions.create(**CHAT)
    client.chat.completions.create(**{**CHAT, "stream": True,
                                      "stream_options": {"include_usage": True}}).close()
    list(client.chat.completions.create(**{**CHAT, "stream": True}))
    anthropic_client(gw, ok_key).messages.create(
        model="claude-haiku-4-5", max_tokens=20, messages=CHAT["messages"])
    with pytest.raises(openai.RateLimitError):  # budget: 429, x-should-retry false
        openai_client(gw, poor_key).chat.completions.create(**CHAT, max_tokens=2000)
    openai_client(gw, slow_key).chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError):
        openai_client(gw, slow_key).chat.completions.create(**CHAT)
    with pytest.raises(openai.APIStatusError) as info:  # in-process fake: its own control
        openai_client(gw, ok_key, default_headers={"x-vkeys-fake-error": "500"}
                      ).chat.completions.create(**CHAT)
    assert info.value.status_code == 500
    with pytest.raises(openai.AuthenticationError):
        openai_client(gw, "vk-wrong").chat.completions.create(**CHAT)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(**{**CHAT, "model": "no-such-model-xyz"})
    return 10


def warehouse_events(gw) -> list[dict]:
    gw.call_in_loop(gw.gateway.sink.flush)
    gw.gateway.sink.wait_converted()
    con = connect(gw.gateway.data_dir)
    cursor = con.execute("select provider, request_model, operation, status, team, project, "
                         "cost_pico, input_uncached_tokens, output_tokens, cache_read_tokens "
                         "from events")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


@pytest.mark.parametrize("front", ["lean", "tornado"])
def test_scraped_counters_equal_the_warehouse(make_gateway, front, caplog):
    gw = make_gateway(front=front, fake_mode="always", rate_refusal_delay=0.0)
    with caplog.at_level(logging.INFO, logger="jupyter_vkeys.access"):
        sent = run_known_calls(gw)
    events = warehouse_events(gw)
    assert len(events) == sent
    samples = scrape(gw)
    # calls by provider, model, operation, status and team
    expected = Counter((e["provider"], e["request_model"] if e["provider"] else "",
                        e["operation"], e["status"], e["team"]) for e in events)
    scraped = {tuple(dict(labels)[k] for k in ("provider", "model", "operation", "status",
                                                 "team")): value
               for (name, labels), value in samples.items() if name == "vkeys_calls_total"}
    assert scraped == {k: float(v) for k, v in expected.items()}
    statuses = {e["status"] for e in events}
    assert {"ok", "refused_budget", "refused_rate", "upstream_error",
            "refused_key"} <= statuses
    # cost by team, project and model equals the warehouse's sum (USD)
    for team, project in (("ml", "p1"), ("ml", "p2"), ("ops", "")):
        pico = sum(e["cost_pico"] for e in events if e["team"] == team
                   and e["project"] == project)
        got = total(samples, "vkeys_cost_usd_total", team=team, project=project)
        assert math.isclose(got, pico / 1e12, rel_tol=1e-9, abs_tol=1e-15), (team, project)
    assert total(samples, "vkeys_cost_usd_total") > 0
    # tokens by class
    for cls, column in (("input_uncached", "input_uncached_tokens"),
                        ("output", "output_tokens"), ("cache_read", "cache_read_tokens")):
        assert total(samples, "vkeys_tokens_total", token_class=cls) == sum(
            e[column] or 0 for e in events)
    # refusals by reason
    assert total(samples, "vkeys_refusals_total", reason="refused_budget") == 1
    assert total(samples, "vkeys_refusals_total", reason="refused_rate") == 1
    assert total(samples, "vkeys_refusals_total", reason="refused_key") == 1
    # histograms: one observation per call that reached each stage
    assert total(samples, "vkeys_request_duration_seconds_count") == sent
    assert total(samples, "vkeys_time_to_first_token_seconds_count") >= 5
    assert total(samples, "vkeys_gateway_overhead_seconds_count") >= 5
    assert samples[("vkeys_in_flight_calls", ())] == 0
    assert ("vkeys_journal_backlog_segments", ()) in samples
    assert ("vkeys_writer_lag_seconds", ()) in samples
    # no key ids as labels by default
    assert not [k for k in samples if any(name == "key_id" for name, _ in k[1])]
    # the access log: exactly one line per data-plane request, whatever the front
    lines = [r.getMessage() for r in caplog.records if r.name == "jupyter_vkeys.access"
             and "/v1/" in r.getMessage()]
    assert len(lines) == sent, lines
    ids = {e for line in lines for e in line.split() if e.startswith("request_id=req_")}
    assert len(ids) == sent


def test_budget_gauges_and_per_key_opt_in(make_gateway):
    gw = make_gateway(fake_mode="always", metrics_per_key=True)
    status, _ = gw.admin("PUT", "/policies/team:ml", {"budgets": [{"usd": 5, "period": "day"}]})
    assert status == 200
    key, record = gw.create_key(team="ml", budgets=[{"usd": 1, "period": "month"}])
    openai_client(gw, key).chat.completions.create(**CHAT)
    samples = scrape(gw)
    spent = samples[("vkeys_budget_spent_usd", (("period", "day"), ("scope", "team:ml")))]
    left = samples[("vkeys_budget_remaining_usd", (("period", "day"), ("scope", "team:ml")))]
    assert spent > 0 and math.isclose(spent + left, 5.0, rel_tol=1e-6)
    assert ("vkeys_budget_spent_usd", (("period", "month"), ("scope", f"key:{record['id']}"))) \
        in samples
    assert samples[("vkeys_key_calls_total", (("key_id", record["id"]), ("status", "ok")))] == 1


def test_metrics_off_and_key_budgets_hidden_by_default(make_gateway):
    gw = make_gateway(fake_mode="always")
    key, record = gw.create_key(budgets=[{"usd": 1, "period": "month"}])
    openai_client(gw, key).chat.completions.create(**CHAT)
    assert not [k for k in scrape(gw) if record["id"] in str(k)]
    off = make_gateway(fake_mode="always", metrics=False)
    status, body = get(off.url + "/metrics")
    assert status == 404 and b"metrics = False" in body


def test_models_label_is_bounded(make_gateway, monkeypatch):
    from jupyter_vkeys.telemetry import metrics

    monkeypatch.setattr(metrics, "MAX_MODELS", 2)
    gw = make_gateway(fake_mode="always",
                      models=[{"match": "*", "provider": "openai"}])
    key, _ = gw.create_key()
    for n in range(4):
        openai_client(gw, key).chat.completions.create(**{**CHAT, "model": f"m-{n}"})
    models = {dict(labels)["model"] for (name, labels) in scrape(gw)
              if name == "vkeys_calls_total"}
    assert models == {"m-0", "m-1", "other"}


def raw(gw, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while True:
            try:
                part = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not part:
                break
            out += part
    return out


def test_access_log_one_line_per_request_both_kinds_no_secrets(make_gateway, caplog):
    """Lean-answered calls, tornado-answered routes and the lean front's own refusals: one
    line each, JSON when asked, no query string, no virtual or admin secret."""
    gw = make_gateway(fake_mode="always", access_log_format="json", max_body_bytes=1000)
    key, record = gw.create_key()
    time.sleep(0.2)  # the admin call's own line is written once its response is out
    with caplog.at_level(logging.INFO, logger="jupyter_vkeys.access"):
        openai_client(gw, key).chat.completions.create(**CHAT)
        assert get(gw.url + "/api/health?token=SECRET-IN-QUERY")[0] == 200
        assert get(gw.url + "/openai/v1/models?k=SECRET2",
                   {"Authorization": f"Bearer {key}"})[0] == 200
        assert get(gw.url + "/api/keys", {"Authorization": f"Bearer {gw.admin_token}"})[0] \
            == 200
        reply = raw(gw, b"POST /vkeys/openai/v1/chat/completions?x=SECRET3 HTTP/1.1\r\n"
                        b"host: t\r\ncontent-length: 5000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413")
        assert get(gw.url + "/metrics")[0] == 200
        time.sleep(0.2)  # tornado writes its line once the response is out
    lines = [json.loads(r.getMessage()) for r in caplog.records
             if r.name == "jupyter_vkeys.access"]
    paths = [(line["method"], line["path"], line["status"]) for line in lines]
    start = paths.index(("POST", "/vkeys/openai/v1/chat/completions", 200))
    lines, paths = lines[start:], paths[start:]  # (the admin call's line may land late)
    assert paths == [("POST", "/vkeys/openai/v1/chat/completions", 200),
                     ("GET", "/vkeys/api/health", 200), ("GET", "/vkeys/openai/v1/models", 200),
                     ("GET", "/vkeys/api/keys", 200),
                     ("POST", "/vkeys/openai/v1/chat/completions", 413),
                     ("GET", "/vkeys/metrics", 200)]
    call = lines[0]
    assert call["key_id"] == record["id"] and call["model"] == "gpt-4o-mini"
    assert call["request_id"].startswith("req_") and call["bytes"] > 0
    assert call["duration_ms"] > 0 and call["time"].endswith("Z")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SECRET" not in text and "?" not in text
    assert key not in text and gw.admin_token not in text
    assert "hello there" not in text  # no prompt content


def test_access_log_to_a_file_bypasses_logging(make_gateway, tmp_path, caplog):
    path = tmp_path / "access.log"
    gw = make_gateway(fake_mode="always", access_log_file=str(path))
    key, record = gw.create_key()
    time.sleep(0.2)
    path.write_text("")  # (the admin call's line)
    with caplog.at_level(logging.INFO, logger="jupyter_vkeys.access"):
        for _ in range(3):
            openai_client(gw, key).chat.completions.create(**CHAT)
        assert get(gw.url + "/api/health?token=SECRET")[0] == 200
        time.sleep(0.2)
    lines = path.read_text().splitlines()
    assert len(lines) == 4, lines
    assert all(f"key={record['id']}" in line for line in lines[:3])
    assert "/vkeys/api/health 200" in lines[3] and "SECRET" not in path.read_text()
    assert not [r for r in caplog.records if r.name == "jupyter_vkeys.access"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_upstream_pool_gauge(relay_gateway):
    """After a relayed call its keep-alive connection waits in the pool (lean or aiohttp)."""
    key, _ = relay_gateway.create_key()
    openai_client(relay_gateway, key).chat.completions.create(**CHAT)
    samples = scrape(relay_gateway)
    assert samples[("vkeys_upstream_pool_connections", (("provider", "openai"),))] >= 1
