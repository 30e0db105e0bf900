"""Cost of reference usage blocks, checked against hand-computed values to 1e-9 USD."""

from __future__ import annotations

from decimal import Decimal

import pytest
from genai_prices import Usage as GPUsage, calc_price

from jupyter_vkeys.pricing import PriceTable
from jupyter_vkeys.dialects.anthropic import usage_of as from_anthropic
from jupyter_vkeys.dialects.openai import usage_of as from_openai

M = 1e-6  # USD per token when a price is "$1 per million tokens"

CASES = [
    # (label, model, provider, usage block, dialect, expected USD computed by hand)
    ("openai cached + reasoning", "gpt-4o-mini", "openai",
     {"prompt_tokens": 1000, "completion_tokens": 500,
      "prompt_tokens_details": {"cached_tokens": 400},
      "completion_tokens_details": {"reasoning_tokens": 200}}, "openai",
     600 * 0.15 * M + 400 * 0.075 * M + 500 * 0.6 * M),
    ("o3-mini reasoning billed as output", "o3-mini", "openai",
     {"prompt_tokens": 2000, "completion_tokens": 3000,
      "prompt_tokens_details": {"cached_tokens": 1000},
      "completion_tokens_details": {"reasoning_tokens": 2500}}, "openai",
     1000 * 1.1 * M + 1000 * 0.55 * M + 3000 * 4.4 * M),
    ("responses api usage", "gpt-4o", "openai",
     {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 200}, "output_tokens": 80,
      "output_tokens_details": {"reasoning_tokens": 0}}, "openai",
     1000 * 2.5 * M + 200 * 1.25 * M + 80 * 10 * M),
    ("anthropic cache reads and 5m/1h writes", "claude-haiku-4-5", "anthropic",
     {"input_tokens": 1000, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 400,
      "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 100},
      "output_tokens": 50}, "anthropic",
     1000 * 1 * M + 2000 * 0.1 * M + 300 * 1.25 * M + 100 * 2 * M + 50 * 5 * M),
    ("anthropic legacy cache_creation_input_tokens", "claude-haiku-4-5", "anthropic",
     {"input_tokens": 10, "cache_creation_input_tokens": 1000, "output_tokens": 1}, "anthropic",
     10 * 1 * M + 1000 * 1.25 * M + 1 * 5 * M),
    ("sonnet long context tier", "claude-sonnet-4-5", "anthropic",
     {"input_tokens": 150000, "cache_read_input_tokens": 60000, "output_tokens": 1000},
     "anthropic", 150000 * 6 * M + 60000 * 0.6 * M + 1000 * 22.5 * M),
    ("sonnet below the tier", "claude-sonnet-4-5", "anthropic",
     {"input_tokens": 1000, "output_tokens": 1000}, "anthropic", 1000 * 3 * M + 1000 * 15 * M),
    ("embeddings", "text-embedding-3-small", "openai",
     {"prompt_tokens": 1234, "total_tokens": 1234}, "openai", 1234 * 0.02 * M),
]


@pytest.mark.parametrize("label, model, provider, block, dialect, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_reference_costs(label, model, provider, block, dialect, expected):
    usage = from_openai(block) if dialect == "openai" else from_anthropic(block)
    cost = PriceTable().cost(model, usage, provider)
    assert cost.status == "priced" and cost.price_version.startswith("genai-prices")
    assert abs(cost.usd - expected) < 1e-9, (cost.usd, expected)


def test_agrees_with_genai_prices_reference_calculation():
    usage = from_anthropic({"input_tokens": 1000, "cache_read_input_tokens": 2000,
                            "cache_creation_input_tokens": 300, "output_tokens": 50})
    ours = PriceTable().cost("claude-haiku-4-5", usage, "anthropic")
    theirs = calc_price(GPUsage(input_tokens=usage.input_total, cache_read_tokens=2000,
                                cache_write_tokens=300, output_tokens=50),
                        "claude-haiku-4-5", provider_id="anthropic")
    assert abs(Decimal(ours.pico) / 10**12 - theirs.total_price) < Decimal("1e-12")


def test_unknown_model_is_unpriced_not_zero_and_fallback_and_override():
    table = PriceTable(overrides={"my-model": {"input_mtok": 2, "output_mtok": 8,
                                               "request_usd": 0.001}},
                       fallback={"input_mtok": 1, "output_mtok": 1})
    usage = from_openai({"prompt_tokens": 100, "completion_tokens": 10})
    assert PriceTable().cost("no-such-model-xyz", usage).status == "unpriced"
    assert PriceTable().rates("no-such-model-xyz") is None
    custom = table.cost("my-model", usage)
    assert custom.status == "priced" and custom.price_version == "config override"
    assert abs(custom.usd - (100 * 2 * M + 10 * 8 * M + 0.001)) < 1e-12
    fallback = table.cost("no-such-model-xyz", usage)
    assert fallback.status == "fallback" and abs(fallback.usd - 110 * M) < 1e-12


def test_flex_tier_prices():
    usage = from_openai({"prompt_tokens": 1000, "completion_tokens": 1000})
    table = PriceTable()
    standard = table.cost("gpt-5-mini", usage, "openai")
    flex = table.cost("gpt-5-mini", usage, "openai", tier="flex")
    assert abs(flex.usd - (1000 * 0.125 * M + 1000 * 1 * M)) < 1e-12
    assert flex.usd < standard.usd and flex.price_version.endswith(":flex")


def test_worst_case_bounds_actual_and_is_cached():
    table = PriceTable()
    rates = table.rates("claude-haiku-4-5", "anthropic")
    assert table.rates("claude-haiku-4-5", "anthropic") is rates
    usage = from_anthropic({"input_tokens": 10, "cache_creation": {
        "ephemeral_1h_input_tokens": 90}, "output_tokens": 100})
    assert rates.cost(usage).pico <= rates.worst_case(100, 100)
    assert rates.affordable_output(rates.worst_case(100, 100), 100) == 100
