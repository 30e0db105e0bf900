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
from decimal import Decimal
from typing import Any, Mapping

from ..money import pico_to_usd, usd_to_pico

PERIODS = ("day", "week", "month", "total")
POLICY_FIELDS = ("models", "aliases", "rpm", "tpm", "max_concurrency", "budgets")
# A scope name: no whitespace, no slash (it sits in a URL path), no control characters.
NAME_PATTERN = r"[^\s/\x00-\x1f\x7f]{1,128}"
SCOPE_RE = re.compile(rf"^(global|(user|team|project|key):{NAME_PATTERN})$")

# Bounds of what an admin may configure (the OpenAPI description states the same).
MAX_RPM = 10**9
MAX_TPM = 10**12
MAX_CONCURRENCY = 10**6
MAX_BUDGET_USD = Decimal(10**9)
MAX_MODELS = 256
MAX_ALIASES = 256
MAX_NAME_CHARS = 256  # a model name, glob or alias
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
LIMITS = {"rpm": MAX_RPM, "tpm": MAX_TPM, "max_concurrency": MAX_CONCURRENCY}


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


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about huge inputs."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    limit = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise PolicyError(f"{name} must be an integer from 0 to {limit:,} or null, "
                          f"got {_short(value)}")
    return value


def _name(field: str, value: Any) -> str:
    """A model name, glob or alias: a non-empty string of printable characters."""
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{field} must be a non-empty string, got {_short(value)}")
    if len(value) > MAX_NAME_CHARS:
        raise PolicyError(f"{field} is {len(value)} characters long; at most "
                          f"{MAX_NAME_CHARS} allowed")
    if _CONTROL_RE.search(value):
        raise PolicyError(f"{field} contains control characters: {_short(value)}")
    return value


def _budget(item: Any, index: int) -> Budget:
    if not isinstance(item, Mapping):
        raise PolicyError(f"budgets[{index}] must be an object like "
                          '{"usd": 20, "period": "month", "soft": 0.8}')
    unknown = set(item) - {"usd", "period", "soft"}
    if unknown:
        raise PolicyError(f"budgets[{index}] has unknown fields "
                          f"{_short(sorted(map(str, unknown)))}; allowed: usd, period, soft")
    period = item.get("period", "month")
    if not isinstance(period, str) or period not in PERIODS:
        raise PolicyError(f"budgets[{index}].period must be one of {', '.join(PERIODS)}, "
                          f"got {_short(period)}")
    usd = item.get("usd")
    problem = (f"budgets[{index}].usd must be a number of USD from 0 to "
               f"{MAX_BUDGET_USD:,}, got {_short(usd)}")
    if isinstance(usd, bool) or not isinstance(usd, (int, float, str)):
        raise PolicyError(problem)
    try:
        amount = Decimal(usd) if isinstance(usd, str) else Decimal(repr(usd)) \
            if isinstance(usd, float) else Decimal(usd)
    except (ArithmeticError, ValueError):
        raise PolicyError(problem) from None
    if not amount.is_finite() or not 0 <= amount <= MAX_BUDGET_USD:
        raise PolicyError(problem)
    soft = item.get("soft")
    if soft is not None and (isinstance(soft, bool) or not isinstance(soft, (int, float))
                             or not 0 < soft <= 1):
        raise PolicyError(f"budgets[{index}].soft must be a fraction in (0, 1], "
                          f"got {_short(soft)}")
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
        raise PolicyError(f"unknown policy fields {_short(sorted(map(str, unknown)))}; "
                          f"allowed: {', '.join(POLICY_FIELDS)}")
    current = (base or EMPTY).as_dict()
    current.update(data)
    models = current.get("models")
    if models is not None:
        if not isinstance(models, (list, tuple)):
            # a bare string too: the API says a list, and one model is ["gpt-4o-mini"]
            raise PolicyError("models must be a list of model names or globs, e.g. "
                              f'["gpt-4o-mini", "claude-*"], got {_short(models)}')
        if len(models) > MAX_MODELS:
            raise PolicyError(f"models lists {len(models)} entries; at most {MAX_MODELS} "
                              "allowed (use globs such as \"claude-*\")")
        models = tuple(_name(f"models[{i}]", m) for i, m in enumerate(models))
    aliases = current.get("aliases")
    aliases = {} if aliases is None else aliases
    if not isinstance(aliases, Mapping):
        raise PolicyError('aliases must map names to models, e.g. {"cheap": "gpt-4o-mini"}, '
                          f"got {_short(aliases)}")
    if len(aliases) > MAX_ALIASES:
        raise PolicyError(f"aliases has {len(aliases)} entries; at most {MAX_ALIASES} allowed")
    for alias, target in aliases.items():
        _name("aliases key", alias)
        _name(f"aliases[{alias!r}]", target)
    budgets_in = current.get("budgets")
    budgets_in = [] if budgets_in is None else budgets_in
    if not isinstance(budgets_in, (list, tuple)):
        raise PolicyError("budgets must be a list of {usd, period, soft} objects, "
                          f"got {_short(budgets_in)}")
    if len(budgets_in) > len(PERIODS):
        raise PolicyError(f"budgets lists {len(budgets_in)} entries; at most one per period "
                          f"({', '.join(PERIODS)}) allowed")
    budgets = tuple(_budget(item, i) for i, item in enumerate(budgets_in))
    periods = [b.period for b in budgets]
    if len(set(periods)) != len(periods):
        raise PolicyError("at most one budget per period on one key or scope")
    return Policy(models=models, aliases=dict(aliases),
                  rpm=_positive_int("rpm", current.get("rpm")),
                  tpm=_positive_int("tpm", current.get("tpm")),
                  max_concurrency=_positive_int("max_concurrency",
                                                current.get("max_concurrency")),
                  budgets=budgets)


def check_scope(scope: str) -> str:
    """Validate a scope name such as ``team:ml``; raises :class:`PolicyError`."""
    if not isinstance(scope, str) or not SCOPE_RE.match(scope):
        raise PolicyError(f"invalid scope {_short(scope)}: use global, user:<name>, "
                          "team:<name>, project:<name> or key:<id>, names of 1 to 128 "
                          "characters without spaces, '/' or control characters")
    return scope
