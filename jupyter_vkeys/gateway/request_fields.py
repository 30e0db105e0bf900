"""The request fields admission depends on, validated before anything is reserved.

A budget hold is only as honest as the numbers it is computed from: a negative
``max_tokens`` once made a negative hold (room for everyone on the scope path),
and ``n: 8`` makes a model write eight answers. :func:`output_cap` and
:func:`choice_count` are called by :class:`~.proxy.ProxyCall` once per call,
after the body is parsed and before admission; they raise a 400
:class:`~.errors.ApiError` that names the field, the value and the allowed range.
"""

from __future__ import annotations

from typing import Any

from ..dialects import OPERATIONS
from .errors import ApiError

# No model writes more than this in one call; larger caps are typing errors or attacks.
MAX_OUTPUT_TOKENS = 1_000_000
# OpenAI allows n up to 128 on chat and legacy completions.
MAX_CHOICES = 128


def _bad(field: str, value: Any, rule: str) -> ApiError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return ApiError(400, "invalid_request", f"invalid '{field}': {shown}; {rule}", param=field)


def output_cap(operation: str, body: dict[str, Any]) -> int | None:
    """The request's own cap on output tokens: an integer in 1..MAX_OUTPUT_TOKENS, or
    None when it sets none (``null`` counts as none). Operations without output
    (embeddings, token counts) return 0. Which fields count is the operation's
    ``max_fields`` (see :mod:`jupyter_vkeys.dialects`). Raises a 400 for any other value."""
    fields = OPERATIONS[operation].max_fields
    if not fields:
        return 0
    found: int | None = None
    for name in fields:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(name, value, "it must be an integer number of tokens")
        if not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise _bad(name, value, f"it must be between 1 and {MAX_OUTPUT_TOKENS:,} tokens")
        if found is None:
            found = value
    return found


def choice_count(operation: str, body: dict[str, Any]) -> int:
    """How many answers the request asks for (``n``, chat and legacy completions only):
    1..MAX_CHOICES; the output hold is multiplied by it. Raises a 400 otherwise."""
    if not OPERATIONS[operation].choices:
        return 1
    value = body.get("n")
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
        raise _bad("n", value, f"it must be an integer between 1 and {MAX_CHOICES}")
    return value
