"""Prices: what a call costs, from its usage.

Price data comes from `genai-prices` (a maintained, versioned, offline snapshot)
with configured overrides on top for negotiated prices and custom models. A
model's prices are resolved once into integer pico-USD per token
(:class:`ModelRates`) and cached, so pricing a call on the hot path is a few
integer multiplications. An unknown model has no rates (cost unknown, never
zero) unless a fallback price is configured.

Called by the policy engine at admission (worst case) and at settlement (truth).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_CEILING, Decimal
from typing import Any, Mapping

from .money import pico_to_usd
from .usage import Usage

log = logging.getLogger("jupyter_vkeys.pricing")

# A tiered rate: ((start, pico per token), ...) ascending; the entry with the highest
# start below the call's total input tokens applies to all of that class's tokens.
Rate = tuple[tuple[int, int], ...]
ZERO: Rate = ((-1, 0),)

# Price keys an override may set, in USD per million tokens (request_usd: per call).
OVERRIDE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok",
                 "cache_write_1h_mtok", "request_usd")


def _pico_per_token(usd_per_mtok: Decimal | float | int | str) -> int:
    # USD per 1e6 tokens -> 1e-12 USD per token: multiply by 1e6. Round up (never undercharge).
    return int((Decimal(str(usd_per_mtok)) * 10**6).to_integral_value(rounding=ROUND_CEILING))


def _rate(value: Any) -> Rate | None:
    """Convert a genai-prices price (Decimal or TieredPrices) or a plain number to a Rate."""
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:
        return ((-1, _pico_per_token(value.base)),) + tuple(
            (int(t.start), _pico_per_token(t.price)) for t in tiers)
    return ((-1, _pico_per_token(value)),)


def _at(rate: Rate, input_total: int) -> int:
    price = rate[0][1]
    for start, tier_price in rate[1:]:
        if input_total > start:
            price = tier_price
    return price


@dataclass(frozen=True)
class Cost:
    """The cost of one call: total and breakdown in pico-USD, and where the prices came from."""

    pico: int
    breakdown: dict[str, int] = field(default_factory=dict)
    price_version: str = ""
    status: str = "priced"  # priced | fallback | unpriced

    @property
    def usd(self) -> float:
        """Total in USD (float) for answers and events."""
        return pico_to_usd(self.pico)


UNPRICED = Cost(0, {}, "", "unpriced")


@dataclass(frozen=True)
class ModelRates:
    """Resolved prices of one model, pico-USD per token per class.

    Built by :meth:`PriceTable.rates` once per (model, provider, tier) and cached.
    """

    model: str
    version: str
    status: str
    input: Rate
    output: Rate
    cache_read: Rate
    cache_write_5m: Rate
    cache_write_1h: Rate
    per_request: int = 0

    def cost(self, usage: Usage) -> Cost:
        """Price ``usage``; called at settlement with what the upstream reported."""
        n = usage.input_total
        parts = {
            "input": usage.input_uncached * _at(self.input, n),
            "cache_read": usage.cache_read * _at(self.cache_read, n),
            "cache_write": usage.cache_write_5m * _at(self.cache_write_5m, n)
            + usage.cache_write_1h * _at(self.cache_write_1h, n),
            "output": usage.output * _at(self.output, n),
            "request": self.per_request,
        }
        return Cost(sum(parts.values()), parts, self.version, self.status)

    def input_ceiling(self, input_tokens: int) -> int:
        """Highest per-token input price that ``input_tokens`` could be billed at."""
        return max(_at(self.input, input_tokens), _at(self.cache_write_5m, input_tokens),
                   _at(self.cache_write_1h, input_tokens))

    def worst_case(self, input_tokens: int, output_tokens: int) -> int:
        """Upper bound in pico-USD of a call reading at most ``input_tokens`` and
        writing at most ``output_tokens``; the hold placed at admission."""
        return (input_tokens * self.input_ceiling(input_tokens)
                + output_tokens * _at(self.output, input_tokens) + self.per_request)

    def affordable_output(self, budget_pico: int, input_tokens: int) -> int:
        """How many output tokens ``budget_pico`` pays for after the input's worst case.

        Used by admission to clamp ``max_tokens`` when a request sets none.
        """
        left = budget_pico - input_tokens * self.input_ceiling(input_tokens) - self.per_request
        price = _at(self.output, input_tokens)
        if left <= 0:
            return 0
        return left // price if price > 0 else 1 << 31


class PriceTable:
    """Resolves models to :class:`ModelRates`: overrides first, then genai-prices, then fallback.

    One table per gateway, built from configuration at start-up; :meth:`rates`
    is called on every admission and returns a cached value after the first.
    """

    def __init__(self, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 fallback: Mapping[str, Any] | None = None) -> None:
        self.overrides = {name: dict(p) for name, p in (overrides or {}).items()}
        for name, prices in self.overrides.items():
            unknown = set(prices) - set(OVERRIDE_KEYS)
            if unknown:
                raise ValueError(f"price override for {name!r} has unknown keys {sorted(unknown)}; "
                                 f"allowed: {', '.join(OVERRIDE_KEYS)}")
        self.fallback = dict(fallback) if fallback else None
        self._cache: dict[tuple[str, str, str], ModelRates | None] = {}
        try:
            from genai_prices import __version__ as gp_version
            self.dataset_version = f"genai-prices {gp_version}"
        except Exception:  # pragma: no cover - the package is a dependency
            self.dataset_version = "genai-prices ?"

    def rates(self, model: str, provider: str = "", tier: str = "") -> ModelRates | None:
        """Rates of ``model`` (as served by ``provider``, at service ``tier``), or None if unpriced."""
        key = (model, provider, tier)
        try:
            return self._cache[key]
        except KeyError:
            rates = self._cache[key] = self._resolve(model, provider, tier)
            return rates

    def cost(self, model: str, usage: Usage, provider: str = "", tier: str = "") -> Cost:
        """Price ``usage`` of ``model``; :data:`UNPRICED` when no price is known."""
        rates = self.rates(model, provider, tier)
        return rates.cost(usage) if rates is not None else UNPRICED

    def _resolve(self, model: str, provider: str, tier: str) -> ModelRates | None:
        if model in self.overrides:
            return self._from_plain(model, self.overrides[model], "config override", "priced")
        found = self._from_dataset(model, provider, tier)
        if found is not None:
            return found
        if self.fallback is not None:
            return self._from_plain(model, self.fallback, "config fallback", "fallback")
        log.warning("no price known for model %r (provider %r); its cost is unknown", model,
                    provider or "?")
        return None

    def _from_plain(self, model: str, p: Mapping[str, Any], version: str, status: str) -> ModelRates:
        input_rate = _rate(p.get("input_mtok", 0)) or ZERO
        write = _rate(p.get("cache_write_mtok")) or input_rate
        return ModelRates(
            model=model, version=version, status=status, input=input_rate,
            output=_rate(p.get("output_mtok", 0)) or ZERO,
            cache_read=_rate(p.get("cache_read_mtok")) or input_rate,
            cache_write_5m=write, cache_write_1h=_rate(p.get("cache_write_1h_mtok")) or write,
            per_request=int(Decimal(str(p.get("request_usd", 0))) * 10**12))

    def _from_dataset(self, model: str, provider: str, tier: str) -> ModelRates | None:
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        try:
            _, info = snapshot.find_provider_model(model, None, provider or None, None)
        except LookupError:
            if not provider:
                return None
            try:  # an OpenAI-compatible host may serve a model genai-prices files elsewhere
                _, info = snapshot.find_provider_model(model, None, None, None)
            except LookupError:
                return None
        context = {"service_tier": tier} if tier else None
        prices = info.get_prices(datetime.now(timezone.utc), context)
        input_rate = _rate(prices.input_mtok) or ZERO
        write = _rate(prices.cache_write_mtok) or input_rate
        requests = getattr(prices, "requests_kcount", None)
        return ModelRates(
            model=info.id, version=f"{self.dataset_version}:{info.id}" + (f":{tier}" if tier else ""),
            status="priced", input=input_rate, output=_rate(prices.output_mtok) or ZERO,
            cache_read=_rate(prices.cache_read_mtok) or input_rate, cache_write_5m=write,
            cache_write_1h=_rate(prices.cache_write_1h_mtok) or write,
            per_request=int(Decimal(str(requests)) * 10**9) if requests else 0)
