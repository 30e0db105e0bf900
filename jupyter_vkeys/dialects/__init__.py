"""Everything one wire dialect knows, in one module each: :mod:`.openai`, :mod:`.anthropic`.

``DIALECTS[name]`` is the dialect object; ``OPERATIONS[operation]`` the operation's
row (its dialect, route, upstream path and token fields). Imported by the call path,
the routes, the tornado handlers and the fake model; imports only values.
"""

from .anthropic import ANTHROPIC
from .base import Dialect, Operation
from .openai import OPENAI
from .sse import Meter

DIALECTS: dict[str, Dialect] = {OPENAI.name: OPENAI, ANTHROPIC.name: ANTHROPIC}
OPERATIONS: dict[str, Operation] = {op.name: op for dialect in DIALECTS.values()
                                    for op in dialect.operations}

__all__ = ["ANTHROPIC", "DIALECTS", "Dialect", "Meter", "OPENAI", "OPERATIONS", "Operation"]
