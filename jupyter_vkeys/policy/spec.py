"""The one policy shape: parsed, validated and written back the same way everywhere.

A policy may sit on a key or on a scope (``user:<name>``, ``team:<name>``,
``project:<name>``, ``global``). Callers: the admin API and CLI (validating what
an admin typed), the store (loading saved policies) and the engine.

``{"models": ["gpt-4o-mini", "claude-*"], "aliases": {"cheap": "gpt-4o-mini"},
"rpm": 60, "tpm": 200000, "max_concurrency": 4,
"budgets": [{"usd": 20, "period": "month", "soft": 0.8}, {"usd": 2, "period": "day"}]}``
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from ..money import pico_to_usd, usd_to_pico

PERIODS = ("day", "week", "month", "total")
POLICY_FIELDS = ("models", "aliases", "rpm", "tpm", "max_concurrency", "budgets")
SCOPE_RE = re.compile(r"^(global|(user|team|project|key):[^\s/]{1,128})$")


class PolicyError(ValueError):
    """A policy (or scope name) an admin gave is invalid; the message says what and why."""


@dataclass(frozen=True)
class Budget:
    """A spending cap over a window: ``pico`` USD per ``period``, warning at ``soft``."""

    pico: int
    period: str
    soft: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape (USD as a number)."""
        out: dict[str, Any] = {"usd": pico_to_usd(self.pico), "period": self.period}
        if self.soft is not None:
            out["soft"] = self.soft
        return out


@dataclass(frozen=True)
class Policy:
    """Limits of one key or scope; ``None`` means "no limit of this kind here"."""

    models: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budgets: tuple[Budget, ...] = ()

    def allows(self, model: str) -> bool:
        """Whether ``model`` matches the allowlist (globs); no allowlist allows all."""
        if self.models is None:
            return True
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def is_empty(self) -> bool:
        """True when the policy limits nothing (so the engine can skip the scope)."""
        return (self.models is None and not self.aliases and self.rpm is None and self.tpm is None
                and self.max_concurrency is None and not self.budgets)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape, omitting unset limits."""
        out: dict[str, Any] = {}
        if self.models is not None:
            out["models"] = list(self.models)
        if self.aliases:
            out["aliases"] = dict(self.aliases)
        for name in ("rpm", "tpm", "max_concurrency"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.budgets:
            out["budgets"] = [b.as_dict() for b in self.budgets]
        return out


EMPTY = Policy()


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyError(f"{name} must be a non-negative integer or null, got {value!r}")
    return value


def _budget(item: Any, index: int) -> Budget:
    if not isinstance(item, Mapping):
        raise PolicyError(f"budgets[{index}] must be an object like "
                          '{"usd": 20, "period": "month", "soft": 0.8}')
    unknown = set(item) - {"usd", "period", "soft"}
    if unknown:
        raise PolicyError(f"budgets[{index}] has unknown fields {sorted(unknown)}")
    period = item.get("period", "month")
    if period not in PERIODS:
        raise PolicyError(f"budgets[{index}].period must be one of {', '.join(PERIODS)}, "
                          f"got {period!r}")
    usd = item.get("usd")
    try:
        if isinstance(usd, bool) or usd is None:
            raise InvalidOperation
        amount = Decimal(str(usd))
        if not amount.is_finite() or amount < 0:
            raise InvalidOperation
    except (InvalidOperation, ValueError):
        raise PolicyError(f"budgets[{index}].usd must be a non-negative number, got {usd!r}") from None
    soft = item.get("soft")
    if soft is not None and (isinstance(soft, bool) or not isinstance(soft, (int, float))
                             or not 0 < soft <= 1):
        raise PolicyError(f"budgets[{index}].soft must be a fraction in (0, 1], got {soft!r}")
    return Budget(usd_to_pico(amount), period, float(soft) if soft is not None else None)


def parse_policy(data: Mapping[str, Any] | None, *, base: Policy | None = None) -> Policy:
    """Validate ``data`` into a :class:`Policy`.

    With ``base``, only the fields present in ``data`` change (a PATCH); a field
    set to ``null`` is removed. Raises :class:`PolicyError` naming the field.
    """
    if data is None:
        return base or EMPTY
    if not isinstance(data, Mapping):
        raise PolicyError("a policy must be a JSON object")
    unknown = set(data) - set(POLICY_FIELDS)
    if unknown:
        raise PolicyError(f"unknown policy fields {sorted(unknown)}; allowed: {', '.join(POLICY_FIELDS)}")
    current = (base or EMPTY).as_dict()
    current.update(data)
    models = current.get("models")
    if models is not None:
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise PolicyError("models must be a list of model names or globs, e.g. "
                              '["gpt-4o-mini", "claude-*"]')
        models = tuple(models)
    aliases = current.get("aliases") or {}
    if not isinstance(aliases, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in aliases.items()):
        raise PolicyError('aliases must map names to models, e.g. {"cheap": "gpt-4o-mini"}')
    budgets_in = current.get("budgets") or []
    if not isinstance(budgets_in, list):
        raise PolicyError("budgets must be a list of {usd, period, soft} objects")
    budgets = tuple(_budget(item, i) for i, item in enumerate(budgets_in))
    periods = [b.period for b in budgets]
    if len(set(periods)) != len(periods):
        raise PolicyError("at most one budget per period on one key or scope")
    return Policy(models=models, aliases=dict(aliases), rpm=_positive_int("rpm", current.get("rpm")),
                  tpm=_positive_int("tpm", current.get("tpm")),
                  max_concurrency=_positive_int("max_concurrency", current.get("max_concurrency")),
                  budgets=budgets)


def check_scope(scope: str) -> str:
    """Validate a scope name such as ``team:ml``; raises :class:`PolicyError`."""
    if not SCOPE_RE.match(scope):
        raise PolicyError(f"invalid scope {scope!r}: use global, user:<name>, team:<name>, "
                          "project:<name> or key:<id>")
    return scope
