"""What a call would cost on the real model, before anyone pays: the dry run's arithmetic.

A dry run answers every call from the offline fake at no cost and prices what the
real model named in the request would have cost: the worst case (at the request's
output cap, exactly what admission would hold) and the expected cost (at the
model's typical output length, from this warehouse's history when it has some),
and whether the key's limits would admit the call. Called by
:class:`~.proxy.ProxyCall` for calls made inside a ``%%vkeys dry_run`` cell, and by
``POST {prefix}/api/estimate`` (``jupyter_vkeys.estimate``). Nothing here reserves or
spends: dry runs never count against budgets or rate limits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import Any, Protocol

from ..keys import KeyRecord
from ..policy import PolicyEngine, Refusal
from ..pricing import PriceTable
from ..providers.fake import prompt_tokens
from ..usage import Usage
from .request_fields import choice_count, output_cap


class Gateway(Protocol):
    """What an estimate reads of the running gateway (a :class:`~.core.VKeysGateway`)."""

    policy: PolicyEngine
    prices: PriceTable
    output_history: "OutputHistory"

    def route(self, model: str) -> tuple[Any, Any, Any] | None:
        """Catalog entry, provider and transport of ``model``."""

# Output length assumed for a model the warehouse has not seen answer yet (tokens).
DEFAULT_TYPICAL_OUTPUT = 256
_MIN_LIVE_SAMPLES = 5


class OutputHistory:
    """Typical output length per model: the warehouse's median of the last 30 days at
    start-up (``seed``), then the median of the latest settled calls once there are a
    few. Fed by the data plane with every successful call (one deque append)."""

    def __init__(self, seed: dict[str, int] | None = None, keep: int = 200) -> None:
        self.seed = {str(k): int(v) for k, v in (seed or {}).items() if int(v) > 0}
        self.keep = keep
        self.recent: dict[str, deque[int]] = {}

    def observe(self, model: str, output_tokens: int) -> None:
        """Called by the data plane after each ``ok`` call that wrote output."""
        if output_tokens <= 0 or not model:
            return
        ring = self.recent.get(model)
        if ring is None:
            if len(self.recent) >= 10_000:
                return  # bounded: a client inventing model names cannot grow this
            ring = self.recent[model] = deque(maxlen=self.keep)
        ring.append(output_tokens)

    def typical(self, model: str) -> tuple[int, str]:
        """``(tokens, source)``: source is ``history`` or ``default``."""
        ring = self.recent.get(model)
        if ring is not None and len(ring) >= _MIN_LIVE_SAMPLES:
            return int(median(ring)), "history"
        if model in self.seed:
            return self.seed[model], "history"
        return DEFAULT_TYPICAL_OUTPUT, "default"


@dataclass
class Estimate:
    """One call's dry-run figures (pico-USD), as the cell summary and the API report them."""

    model: str
    operation: str
    input_tokens: int
    max_output: int | None
    choices: int
    typical_output: int
    typical_source: str
    worst_pico: int | None
    expected_pico: int | None
    verdict: str  # "" when the key's limits would admit the call, else why not

    def as_dict(self) -> dict[str, Any]:
        """JSON shape (USD as numbers; None where the model has no price)."""
        return {"model": self.model, "operation": self.operation,
                "input_tokens": self.input_tokens, "max_output_tokens": self.max_output,
                "choices": self.choices, "typical_output_tokens": self.typical_output,
                "typical_output_source": self.typical_source,
                "worst_usd": None if self.worst_pico is None else self.worst_pico / 1e12,
                "expected_usd": None if self.expected_pico is None else self.expected_pico / 1e12,
                "allowed": not self.verdict, "verdict": self.verdict or "allowed"}


def estimate(gateway: Gateway, record: KeyRecord, operation: str, body: dict[str, Any],
             request_bytes: int) -> Estimate:
    """Price ``body`` as a real call of ``record`` would be priced and held. Raises a 400
    :class:`~.errors.ApiError` for fields no call could carry (bad ``max_tokens``, ``n``)."""
    model = str(body.get("model") or "")
    max_output = output_cap(operation, body)
    choices = choice_count(operation, body)
    verdict = ""
    admission = None
    try:
        admission = gateway.policy.resolve(record, model)
        model = admission.model
    except Refusal as refusal:
        verdict = refusal.message
    routed = gateway.route(model)
    rates = None
    entry = None
    if routed is None:
        verdict = verdict or f"model '{model}' is not served by this gateway"
    else:
        entry, provider, _ = routed
        rates = gateway.prices.rates(model, provider.price_provider)
    try:
        counted = prompt_tokens(operation, body)
    except (TypeError, AttributeError):
        counted = request_bytes // 4
    typical, source = gateway.output_history.typical(model)
    ceiling = (entry.max_output_tokens if entry is not None and entry.max_output_tokens
               else gateway.policy.default_max_output)
    writes_output = max_output != 0  # embeddings and token counts write nothing
    if not writes_output:
        typical = 0
    elif max_output:
        typical = min(typical, max_output)
    worst = expected = None
    if rates is not None:
        worst = rates.worst_case(request_bytes,
                                 (max_output or ceiling) * choices if writes_output else 0)
        expected = rates.cost(Usage(input_uncached=counted, output=typical * choices)).pico
    if admission is not None and not verdict:
        try:
            gateway.policy.admit(admission, rates, input_bound=request_bytes,
                                 input_estimate=request_bytes // 4, max_output=max_output,
                                 model_max_output=entry.max_output_tokens if entry else None,
                                 choices=choices, reserve=False)
        except Refusal as refusal:
            verdict = refusal.message
    return Estimate(model, operation, counted, max_output if writes_output else None, choices,
                    typical, source, worst, expected, verdict)
