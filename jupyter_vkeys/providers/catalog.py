"""The model catalog: which provider serves a model name.

Entries are tried in order; the first whose ``match`` (a name or glob) fits
wins. Lookups are cached per name, so routing on the hot path is a dict hit.
Called by the data plane after alias resolution.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

DEFAULT_CATALOG: list[dict[str, Any]] = [
    {"match": "gpt-4o-mini", "provider": "openai", "max_output_tokens": 16384},
    {"match": "gpt-4o", "provider": "openai", "max_output_tokens": 16384},
    {"match": "gpt-4.1*", "provider": "openai", "max_output_tokens": 32768},
    {"match": "gpt-5*", "provider": "openai", "max_output_tokens": 128000},
    {"match": "o[1-9]*", "provider": "openai", "max_output_tokens": 100000},
    {"match": "text-embedding-3-small", "provider": "openai", "dimensions": 1536},
    {"match": "text-embedding-3-large", "provider": "openai", "dimensions": 3072},
    {"match": "text-embedding-ada-002", "provider": "openai", "dimensions": 1536},
    {"match": "gpt-*", "provider": "openai", "max_output_tokens": 16384},
    {"match": "claude-haiku-4-5", "provider": "anthropic", "max_output_tokens": 64000},
    {"match": "claude-sonnet-4-5", "provider": "anthropic", "max_output_tokens": 64000},
    {"match": "claude-opus-4-*", "provider": "anthropic", "max_output_tokens": 32000},
    {"match": "claude-*", "provider": "anthropic", "max_output_tokens": 8192},
]


@dataclass(frozen=True)
class ModelEntry:
    """One catalog line. ``upstream`` renames the model for the provider (Azure
    deployments, vLLM paths); ``max_output_tokens`` bounds the worst-case hold when a
    request sets no limit; ``dimensions`` is the embedding size the fake serves."""

    match: str
    provider: str
    upstream: str = ""
    max_output_tokens: int | None = None
    dimensions: int | None = None

    @property
    def is_glob(self) -> bool:
        """True when ``match`` is a pattern rather than one model name."""
        return any(c in self.match for c in "*?[")


class Catalog:
    """Ordered model entries with a per-name cache."""

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self.entries: list[ModelEntry] = []
        for raw in entries:
            unknown = set(raw) - {"match", "provider", "upstream", "max_output_tokens", "dimensions"}
            if unknown or "match" not in raw or "provider" not in raw:
                raise ValueError(f"catalog entry {dict(raw)!r}: needs 'match' and 'provider'; "
                                 f"unknown keys {sorted(unknown)}")
            self.entries.append(ModelEntry(**raw))
        self._cache: dict[str, ModelEntry | None] = {}

    def lookup(self, model: str) -> ModelEntry | None:
        """The first entry serving ``model``, or None when no entry matches."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        found = next((e for e in self.entries if fnmatch.fnmatchcase(model, e.match)), None)
        if len(self._cache) < 10000:
            self._cache[model] = found
        return found

    def named_models(self) -> list[ModelEntry]:
        """Entries naming one concrete model (what ``/v1/models`` can list)."""
        return [e for e in self.entries if not e.is_glob]
