"""Token usage, normalized across providers.

Providers count differently: OpenAI's ``prompt_tokens`` include cached tokens
and ``completion_tokens`` include reasoning tokens; Anthropic's ``input_tokens``
exclude cache reads and cache writes. :class:`Usage` holds disjoint classes so
that pricing never double-counts. The extractors are called by the meters in
:mod:`jupyter_vkeys.gateway.metering` with the provider's parsed usage block.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# More tokens than any model reads or writes in one call: a provider reporting more is
# wrong (or hostile). Each class is clamped to it and the usage flagged ``clamped``, so
# the cost stays a bounded integer that the journal and Parquet can always hold.
TOKEN_LIMIT = 100_000_000


@dataclass
class Usage:
    """Token counts of one call, by billing class (all disjoint except ``reasoning``).

    ``reasoning`` is informational: reasoning tokens are already inside
    ``output`` (both providers bill them as output).
    """

    input_uncached: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0
    reasoning: int = 0
    clamped: bool = field(default=False, compare=False)

    @property
    def input_total(self) -> int:
        """All input tokens, cached or not: what the model read."""
        return self.input_uncached + self.cache_read + self.cache_write_5m + self.cache_write_1h

    @property
    def cache_write(self) -> int:
        """Cache writes of either lifetime."""
        return self.cache_write_5m + self.cache_write_1h

    @property
    def total(self) -> int:
        """Input plus output tokens: what TPM limits count."""
        return self.input_total + self.output

    def as_dict(self) -> dict[str, int]:
        """Plain dict of the token counts, for JSON answers and events."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "clamped"}

    def bounded(self) -> "Usage":
        """Clamp every class to :data:`TOKEN_LIMIT` (flagging ``clamped``); returns self.
        Called by the extractors below on whatever a provider reported."""
        for name in ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h",
                     "output", "reasoning"):
            if getattr(self, name) > TOKEN_LIMIT:
                setattr(self, name, TOKEN_LIMIT)
                self.clamped = True
        return self


def _int(block: Any, name: str) -> int:
    if not isinstance(block, dict):
        return 0
    value = block.get(name)
    return value if isinstance(value, int) and value > 0 else 0


def from_openai(block: Any) -> Usage:
    """Usage from an OpenAI ``usage`` block (chat/completions, embeddings or responses)."""
    if not isinstance(block, dict):
        return Usage()
    if "input_tokens" in block:  # Responses API
        total_in = _int(block, "input_tokens")
        cached = _int(block.get("input_tokens_details"), "cached_tokens")
        output = _int(block, "output_tokens")
        reasoning = _int(block.get("output_tokens_details"), "reasoning_tokens")
    else:
        total_in = _int(block, "prompt_tokens")
        cached = _int(block.get("prompt_tokens_details"), "cached_tokens")
        output = _int(block, "completion_tokens")
        reasoning = _int(block.get("completion_tokens_details"), "reasoning_tokens")
    cached = min(cached, total_in)
    return Usage(input_uncached=total_in - cached, cache_read=cached, output=output,
                 reasoning=min(reasoning, output)).bounded()


def from_anthropic(block: Any, into: Usage | None = None) -> Usage:
    """Usage from an Anthropic ``usage`` block.

    Streams report usage in ``message_start`` and, cumulatively, in each
    ``message_delta``: pass the previous result as ``into`` and the fields the
    new block carries replace the old ones (never summed).
    """
    usage = into if into is not None else Usage()
    if not isinstance(block, dict):
        return usage
    if "input_tokens" in block and block["input_tokens"] is not None:
        usage.input_uncached = _int(block, "input_tokens")
    if block.get("cache_read_input_tokens") is not None:
        usage.cache_read = _int(block, "cache_read_input_tokens")
    creation = block.get("cache_creation")
    if isinstance(creation, dict):
        usage.cache_write_5m = _int(creation, "ephemeral_5m_input_tokens")
        usage.cache_write_1h = _int(creation, "ephemeral_1h_input_tokens")
    elif block.get("cache_creation_input_tokens") is not None:
        usage.cache_write_5m = _int(block, "cache_creation_input_tokens")
        usage.cache_write_1h = 0
    if block.get("output_tokens") is not None:
        usage.output = _int(block, "output_tokens")
    return usage.bounded()
