"""Token usage, normalized across providers.

Providers count differently: OpenAI's ``prompt_tokens`` include cached tokens
and ``completion_tokens`` include reasoning tokens; Anthropic's ``input_tokens``
exclude cache reads and cache writes. :class:`Usage` holds disjoint classes so
that pricing never double-counts. Each dialect's extractor
(``jupyter_vkeys.dialects.openai.usage_of``, ``...anthropic.usage_of``) builds one from
the provider's parsed usage block.
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
        Called by the dialects' extractors on whatever a provider reported."""
        for name in ("input_uncached", "cache_read", "cache_write_5m", "cache_write_1h",
                     "output", "reasoning"):
            if getattr(self, name) > TOKEN_LIMIT:
                setattr(self, name, TOKEN_LIMIT)
                self.clamped = True
        return self


def token_count(block: Any, name: str) -> int:
    """``block[name]`` if ``block`` is a dict and it is a positive integer, else 0: how the
    dialects' usage extractors (:mod:`jupyter_vkeys.dialects`) read a provider's counts."""
    if not isinstance(block, dict):
        return 0
    value = block.get(name)
    return value if isinstance(value, int) and value > 0 else 0
