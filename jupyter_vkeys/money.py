"""Money as integers: every amount in the gateway is a whole number of pico-USD.

Budgets, holds and costs are added and compared on the hot path and must never
drift: a $20 cap must refuse the call that would spend $20.000000000001. Integer
pico-dollars (1e-12 USD) represent every published per-token price exactly
(a price of $0.075 per million tokens is 75,000 pico-USD per token).
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

PICO_PER_USD = 10**12


def usd_to_pico(usd: Decimal | float | int | str) -> int:
    """Convert a USD amount (as configured or typed by an admin) to pico-USD, rounding up."""
    scaled = Decimal(str(usd)) * PICO_PER_USD
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def pico_to_usd(pico: int) -> float:
    """A float of USD for JSON answers and the warehouse (exact enough for display)."""
    return pico / PICO_PER_USD


def format_usd(pico: int) -> str:
    """Human text for messages: ``$1.25`` or, for small amounts, ``$0.000123``."""
    usd = pico / PICO_PER_USD
    if usd == 0 or abs(usd) >= 0.01:
        return f"${usd:,.2f}"
    return f"${usd:.6f}"
