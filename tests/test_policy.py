"""Budgets that hold under concurrency, windows, soft thresholds, rate and concurrency
limits (with their headers), aliases, allowlists, clamping and unpriced models."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import anthropic
import openai
import pytest

from support import anthropic_client, openai_client

# $0.01 per output token, input free: every call's cost is max_tokens cents.
CENT_PER_TOKEN = {"gpt-4o-mini": {"input_mtok": 0, "output_mtok": 10000},
                  "claude-haiku-4-5": {"input_mtok": 0, "output_mtok": 10000}}


def chat(client, max_tokens=10, model="gpt-4o-mini", **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=max_tokens, **kw)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


async def _fire(gw, keys: list[str], n: int, max_tokens: int = 50):
    """n concurrent calls spread over keys; returns (ok replies, errors)."""
    clients = [openai.AsyncOpenAI(api_key=k, base_url=gw.url + "/openai/v1", max_retries=0,
                                  timeout=60) for k in keys]

    async def one(i: int):
        client = clients[i % len(clients)]
        try:
            return await client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=max_tokens,
                messages=[{"role": "user", "content": f"call {i}"}])
        except openai.APIStatusError as exc:
            return exc

    results = await asyncio.gather(*[one(i) for i in range(n)])
    for client in clients:
        await client.close()
    return ([r for r in results if not isinstance(r, Exception)],
            [r for r in results if isinstance(r, Exception)])


def _assert_cap_held(gw, ok, errors, n, cap_usd, scope_report):
    events = [e for e in gw.events if e["operation"] == "chat.completions"]
    charged = sum(e["cost_usd"] for e in events if e["status"] == "ok")
    assert len(ok) + len(errors) == n
    assert 0 < len(ok) < n, "the budget should cover a few calls, not all and not none"
    print(f"{len(ok)} admitted, {len(errors)} refused, charged {charged:.9f} USD of {cap_usd}")
    assert charged <= cap_usd + 1e-12, f"overspent: {charged} > {cap_usd}"
    assert all(e.status_code == 429 for e in errors)
    assert all(e.response.headers["x-should-retry"] == "false" for e in errors)
    assert all("budget exhausted" in e.body["message"] for e in errors)
    assert all(e.body["type"] == "insufficient_quota" for e in errors)
    refused = [e for e in events if e["status"] == "refused_budget"]
    assert len(refused) == len(errors) and len([e for e in events if e["status"] == "ok"]) == len(ok)
    [budget] = scope_report["budgets"]
    assert budget["held_usd"] == 0
    assert abs(budget["spent_usd"] - charged) < 1e-9


def test_200_concurrent_calls_never_overspend_key_budget(make_gateway):
    gw = make_gateway(fake_mode="always", fake_latency_ms=300)
    cap = 0.0005
    key, record = gw.create_key(budgets=[{"usd": cap, "period": "total"}])
    ok, errors = asyncio.run(_fire(gw, [key], 200))
    _, report = gw.admin("GET", f"/keys/{record['id']}")
    _assert_cap_held(gw, ok, errors, 200, cap, report["limits"][0])


@pytest.mark.parametrize("scope, fields", [("user:carol", {"owner": "carol"}),
                                           ("team:ml", {"team": "ml"})])
def test_200_concurrent_calls_shared_scope_budget(make_gateway, scope, fields):
    gw = make_gateway(fake_mode="always", fake_latency_ms=300)
    cap = 0.0004
    status, _ = gw.admin("PUT", f"/policies/{scope}",
                         {"budgets": [{"usd": cap, "period": "month"}]})
    assert status == 200
    keys = [gw.create_key(**fields)[0] for _ in range(4)]
    ok, errors = asyncio.run(_fire(gw, keys, 200))
    _, report = gw.admin("GET", f"/policies/{scope}")
    _assert_cap_held(gw, ok, errors, 200, cap, report)
    assert {e["key_id"] for e in gw.events if e["status"] == "ok"} <= {
        k.split("_")[0][3:] for k in keys}


def test_child_key_spends_against_parent_budget(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN)
    _, parent = gw.create_key(budgets=[{"usd": 0.25, "period": "day"}])
    child_key, _ = gw.create_key(parent_id=parent["id"])
    client = openai_client(gw, child_key)
    chat(client, 10)
    chat(client, 10)
    with pytest.raises(openai.RateLimitError, match=f"key:{parent['id']} \\(day window\\)"):
        chat(client, 10)
    _, report = gw.admin("GET", f"/keys/{parent['id']}")
    assert report["limits"][0]["budgets"][0]["spent_usd"] == pytest.approx(0.20)


def test_budget_message_names_scope_window_cap_spend_and_reset(make_gateway, clock):
    clock.frozen = ts("2026-11-27T23:59:00")
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN)
    key, _ = gw.create_key(owner="dana")
    gw.admin("PUT", "/policies/user:dana", {"budgets": [{"usd": 0.3, "period": "day"}]})
    client = openai_client(gw, key)
    chat(client, 10), chat(client, 10), chat(client, 10)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, 10)
    message = info.value.body["message"]
    for part in ("user:dana", "day window", "cap $0.30", "spent $0.30", "needs up to $0.10",
                 "resets 2026-11-28T00:00:00Z"):
        assert part in message, (part, message)
    assert info.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.RateLimitError) as info:
        anthropic_client(gw, key).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["error"]["type"] == "billing_error"
    clock.advance(61)  # past midnight: a new day window
    chat(client, 10)


def test_month_window_boundary(make_gateway, clock):
    clock.frozen = ts("2026-11-30T23:59:30")
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN)
    key, record = gw.create_key(budgets=[{"usd": 0.1, "period": "month"},
                                         {"usd": 1.0, "period": "total"}])
    client = openai_client(gw, key)
    chat(client, 10)
    with pytest.raises(openai.RateLimitError, match="month window.*resets 2026-12-01T00:00:00Z"):
        chat(client, 1)
    clock.advance(31)
    chat(client, 10)
    _, report = gw.admin("GET", f"/keys/{record['id']}")
    month, total = report["limits"][0]["budgets"]
    assert month["spent_usd"] == pytest.approx(0.1) and month["window_start"] == "2026-12-01T00:00:00Z"
    assert total["spent_usd"] == pytest.approx(0.2) and total["resets_at"] is None


def test_week_window_in_configured_timezone(make_gateway, clock):
    # Sunday 23:30 in New York is Monday 04:30 UTC; the New York week starts at Monday 05:00 UTC.
    clock.frozen = ts("2026-11-30T04:30:00")
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN,
                      timezone="America/New_York")
    key, record = gw.create_key(budgets=[{"usd": 0.1, "period": "week"}])
    client = openai_client(gw, key)
    chat(client, 10)
    with pytest.raises(openai.RateLimitError, match="resets 2026-11-30T05:00:00Z"):
        chat(client, 1)
    clock.advance(3600)
    chat(client, 10)


def test_soft_threshold_warns(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN)
    key, record = gw.create_key(budgets=[{"usd": 1.0, "period": "day", "soft": 0.5}])
    client = openai_client(gw, key)
    first = chat(client, 10)
    assert "x-vkeys-budget-warning" not in first.headers
    for _ in range(4):
        chat(client, 10)
    assert any("passed 50%" in e["budget_warning"] for e in gw.events)
    sixth = chat(client, 10)
    assert "day budget at 60%" in sixth.headers["x-vkeys-budget-warning"]
    _, report = gw.admin("GET", f"/keys/{record['id']}")
    assert report["limits"][0]["budgets"][0]["warned"] is True


def test_rpm_limit_and_headers(make_gateway, clock):
    clock.frozen = ts("2026-11-27T12:00:00")
    gw = make_gateway(fake_mode="always")
    key, _ = gw.create_key(rpm=3)
    client = openai_client(gw, key)
    remaining = []
    for _ in range(3):
        reply = chat(client, 2)
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(reply.headers["x-ratelimit-remaining-requests"])
        clock.advance(10)
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, 2)
    headers = info.value.response.headers
    assert headers["retry-after"] == "30" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "30s"
    assert "3 requests per minute" in info.value.body["message"]
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert gw.events[-1]["status"] == "refused_rate"
    clock.advance(30)
    chat(client, 2)


def test_tpm_limit_reserves_then_settles(make_gateway, clock):
    clock.frozen = ts("2026-11-27T12:00:00")
    gw = make_gateway(fake_mode="always")
    gw.admin("PUT", "/policies/team:nlp", {"tpm": 100})
    key, _ = gw.create_key(team="nlp")
    client = openai_client(gw, key)
    first = chat(client, 40)
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    used = json.loads(first.text)["usage"]["total_tokens"]
    with pytest.raises(openai.RateLimitError) as info:
        chat(client, 70)
    assert info.value.body["type"] == "tokens"
    assert f"100 tokens per minute, {used} used" in info.value.body["message"]
    assert info.value.response.headers["x-ratelimit-limit-tokens"] == "100"
    clock.advance(60)
    chat(client, 70)


def test_concurrency_limit(make_gateway):
    gw = make_gateway(fake_mode="always", fake_latency_ms=400)
    key, _ = gw.create_key(max_concurrency=2)
    ok, errors = asyncio.run(_fire(gw, [key], 5, max_tokens=2))
    assert len(ok) == 2 and len(errors) == 3
    assert all(e.status_code == 429 and "2 calls in flight allowed" in e.body["message"]
               for e in errors)
    assert all(e.response.headers["retry-after"] == "1" for e in errors)
    asyncio.run(_fire(gw, [key], 2, max_tokens=2))  # slots were released


def test_aliases_and_allowlists(make_gateway):
    gw = make_gateway(fake_mode="always")
    gw.admin("PUT", "/policies/global", {"aliases": {"smart": "gpt-4o"}})
    key, _ = gw.create_key(models=["gpt-4o-mini", "claude-*"],
                           aliases={"cheap": "gpt-4o-mini", "fast": "claude-haiku-4-5"})
    client = openai_client(gw, key)
    reply = json.loads(chat(client, 2, model="cheap").text)
    assert reply["model"] == "gpt-4o-mini"
    assert gw.events[-1]["request_model"] == "cheap"
    message = anthropic_client(gw, key).messages.create(
        model="fast", max_tokens=2, messages=[{"role": "user", "content": "x"}])
    assert message.model == "claude-haiku-4-5"
    with pytest.raises(openai.PermissionDeniedError, match="'gpt-4o' is not allowed"):
        chat(client, 2, model="smart")


def test_limit_changes_take_effect_on_next_call(make_gateway):
    gw = make_gateway(fake_mode="always")
    key, record = gw.create_key()
    client = openai_client(gw, key)
    chat(client, 2)
    gw.admin("PATCH", f"/keys/{record['id']}", {"models": ["claude-*"]})
    with pytest.raises(openai.PermissionDeniedError):
        chat(client, 2)
    gw.admin("PATCH", f"/keys/{record['id']}", {"models": None})
    chat(client, 2)


def test_clamp_max_tokens_to_remaining_budget(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN)
    key, _ = gw.create_key(budgets=[{"usd": 0.05, "period": "day"}])
    client = openai_client(gw, key)
    reply = client.chat.completions.create(model="gpt-4o-mini",
                                           messages=[{"role": "user", "content": "x"}])
    assert reply.usage.completion_tokens == 5  # what $0.05 buys at $0.01/token
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "x"}])


def test_refuse_instead_of_clamp(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=CENT_PER_TOKEN, clamp_max_tokens=False)
    key, _ = gw.create_key(budgets=[{"usd": 0.05, "period": "day"}])
    client = openai_client(gw, key)
    with pytest.raises(openai.BadRequestError, match="set max_tokens to at most 5"):
        client.chat.completions.create(model="gpt-4o-mini",
                                       messages=[{"role": "user", "content": "x"}])
    chat(client, 5)


def test_unpriced_models_on_capped_keys(make_gateway):
    catalog = [{"match": "house-model", "provider": "openai"}, {"match": "gpt-*",
                                                                 "provider": "openai"}]
    gw = make_gateway(fake_mode="always", models=catalog)
    capped, _ = gw.create_key(budgets=[{"usd": 5, "period": "month"}])
    free, _ = gw.create_key()
    with pytest.raises(openai.PermissionDeniedError, match="has no known price"):
        chat(openai_client(gw, capped), 2, model="house-model")
    chat(openai_client(gw, free), 2, model="house-model")
    assert gw.events[-1]["cost_usd"] is None and gw.events[-1]["pricing_status"] == "unpriced"
    fallback = make_gateway(fake_mode="always", models=catalog,
                            fallback_price={"input_mtok": 1, "output_mtok": 2})
    capped, _ = fallback.create_key(budgets=[{"usd": 5, "period": "month"}])
    chat(openai_client(fallback, capped), 2, model="house-model")
    assert fallback.events[-1]["pricing_status"] == "fallback"


def test_policy_survives_restart(make_gateway, tmp_path):
    gw = make_gateway(fake_mode="always")
    gw.admin("PUT", "/policies/project:churn", {"rpm": 7, "budgets": [{"usd": 3}]})
    data_dir = gw.gateway.data_dir
    gw.stop()
    again = make_gateway(fake_mode="always", data_dir=data_dir)
    _, report = again.admin("GET", "/policies/project:churn")
    assert report["policy"] == {"rpm": 7, "budgets": [{"usd": 3.0, "period": "month"}]}
