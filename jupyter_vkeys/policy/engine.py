"""The policy engine: one atomic admission and one settlement per call.

The data plane calls, for every request and without awaiting in between:

1. :meth:`PolicyEngine.resolve` -- alias resolution and allowlists on the key's
   scope path (key, parent key, user, team, project, global);
2. :meth:`PolicyEngine.admit` -- concurrency, RPM, TPM and budget holds on
   every scope of the path; all checks run before any counter moves, so the
   call is admitted everywhere or nowhere;
3. after the upstream answered, :meth:`PolicyEngine.settle` -- the hold is
   replaced by the actual cost, the token reservation by the actual tokens,
   and the concurrency slot released.

Budgets are held at the worst case, so concurrent calls can never spend past
a cap: the sum of holds and spend never exceeds it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any, Callable, Iterable

from ..keys import KeyRecord
from ..money import format_usd, pico_to_usd
from ..pricing import ModelRates
from .limits import BudgetWindow, SlidingWindow
from .spec import EMPTY, PERIODS, Policy, parse_policy
from .windows import iso, window


class Refusal(Exception):
    """Admission said no. Carries what the client must be told.

    ``kind`` is one of ``model``, ``unpriced``, ``concurrency``, ``rate_requests``,
    ``rate_tokens``, ``budget``, ``max_tokens``; the gateway turns it into the
    client's error dialect.
    """

    def __init__(self, kind: str, status: int, message: str, *, scope: str = "",
                 headers: dict[str, str] | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.scope = scope
        self.headers = headers or {}
        self.retry_after = retry_after


class ScopeState:
    """Counters of one scope: its budgets' windows, RPM/TPM logs and calls in flight."""

    __slots__ = ("name", "requests", "tokens", "inflight", "budgets", "windows", "rolls_at")

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests = SlidingWindow()
        self.tokens = SlidingWindow()
        self.inflight = 0
        self.budgets: dict[str, BudgetWindow] = {}
        self.windows: list[BudgetWindow] = []  # the same counters, for the settle loop
        self.rolls_at = float("-inf")  # earliest end among them: before it, none rolls

    def add_spend(self, cost_pico: int, started: float, tz: tzinfo, now: float) -> None:
        """Count spend on every period's window (called by settle for each scope)."""
        if now >= self.rolls_at:
            for period in PERIODS:
                self.budget(period, tz, now)
            self.rolls_at = min(w.end for w in self.windows)
        for counter in self.windows:
            if counter.start <= started:
                counter.spent += cost_pico

    def budget(self, period: str, tz: tzinfo, now: float) -> BudgetWindow:
        """The window counter of ``period``, rolled forward to ``now``."""
        counter = self.budgets.get(period)
        if counter is None:
            counter = self.budgets[period] = BudgetWindow(period, tz)
            self.windows.append(counter)
        counter.roll(now)
        return counter


@dataclass
class Admission:
    """What :meth:`PolicyEngine.resolve` found: the model to call and the scope path."""

    record: KeyRecord
    requested_model: str
    model: str
    path: list[tuple[ScopeState, Policy]]


@dataclass
class Ticket:
    """An admitted call's reservations, settled exactly once by :meth:`PolicyEngine.settle`."""

    admission: Admission
    rates: ModelRates | None
    hold: int
    clamped_to: int | None
    started: float
    holds: list[tuple[BudgetWindow, int]] = field(default_factory=list)
    token_entries: list[tuple[SlidingWindow, list, int]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    settled: bool = False


def _duration(seconds: float) -> str:
    """OpenAI-style reset text: ``"1.5s"``, ``"2m0s"``."""
    if seconds >= 60:
        minutes, secs = divmod(int(math.ceil(seconds)), 60)
        return f"{minutes}m{secs}s"
    return f"{max(seconds, 0.001):.3g}s"


class PolicyEngine:
    """In-memory admission state for every key and scope of one gateway.

    Scope policies are pushed in by the gateway (from the store at start-up and
    after each admin change) with :meth:`set_scope_policy`; key policies come
    from the key record itself and are parsed once per record.
    """

    def __init__(self, *, tz: tzinfo = timezone.utc, clock: Callable[[], float] = time.time,
                 clamp_max_tokens: bool = True, default_max_output: int = 16384) -> None:
        self.tz = tz
        self.clock = clock
        self.clamp_max_tokens = clamp_max_tokens
        self.default_max_output = default_max_output
        self.scope_policies: dict[str, Policy] = {}
        self.states: dict[str, ScopeState] = {}
        self._key_policies: dict[str, tuple[KeyRecord, Policy]] = {}
        self._paths: dict[str, tuple[KeyRecord, int, list[tuple[ScopeState, Policy]]]] = {}
        self.version = 0  # bumped by every policy or key change; invalidates cached paths
        self.parents: Callable[[str], KeyRecord | None] = lambda key_id: None

    # -- configuration ---------------------------------------------------------------
    def set_scope_policy(self, scope: str, policy: Policy | None) -> None:
        """Install (or with None remove) the policy of a scope; effective on the next call."""
        if policy is None or policy.is_empty:
            self.scope_policies.pop(scope, None)
        else:
            self.scope_policies[scope] = policy
        self.invalidate()

    def invalidate(self, *_: object) -> None:
        """Forget cached scope paths; called after any policy or key change."""
        self.version += 1

    def key_policy(self, record: KeyRecord) -> Policy:
        """The parsed policy of a key record (cached per record object)."""
        cached = self._key_policies.get(record.id)
        if cached is not None and cached[0] is record:
            return cached[1]
        policy = parse_policy(record.policy) if record.policy else EMPTY
        self._key_policies[record.id] = (record, policy)
        return policy

    def state(self, scope: str) -> ScopeState:
        """The counters of ``scope``, created on first use."""
        state = self.states.get(scope)
        if state is None:
            state = self.states[scope] = ScopeState(scope)
        return state

    def scope_path(self, record: KeyRecord) -> list[str]:
        """Scopes a call with ``record`` must satisfy, most specific first."""
        path = [f"key:{record.id}"]
        parent = self.parents(record.parent_id) if record.parent_id else None
        if parent is not None:
            path.append(f"key:{parent.id}")
        for kind, name in (("user", record.owner), ("team", record.team),
                           ("project", record.project)):
            if name:
                path.append(f"{kind}:{name}")
        path.append("global")
        return path

    def _policy_of(self, scope: str, record: KeyRecord) -> Policy:
        if scope.startswith("key:"):
            key_id = scope[4:]
            if key_id == record.id:
                return self.key_policy(record)
            parent = self.parents(key_id)
            return self.key_policy(parent) if parent is not None else EMPTY
        return self.scope_policies.get(scope, EMPTY)

    # -- the hot path ----------------------------------------------------------------
    def resolve(self, record: KeyRecord, requested_model: str) -> Admission:
        """Resolve aliases and check allowlists; raises :class:`Refusal` (403)."""
        cached = self._paths.get(record.id)
        if cached is not None and cached[0] is record and cached[1] == self.version:
            path = cached[2]
        else:
            path = [(self.state(scope), self._policy_of(scope, record))
                    for scope in self.scope_path(record)]
            self._paths[record.id] = (record, self.version, path)
        model = requested_model
        for _, policy in path:
            target = policy.aliases.get(requested_model)
            if target is not None:
                model = target
                break
        for state, policy in path:
            if not policy.allows(model):
                allowed = ", ".join(policy.models or ())
                raise Refusal("model", 403,
                              f"model '{model}' is not allowed for {state.name}; "
                              f"allowed models: {allowed or '(none)'}", scope=state.name)
        return Admission(record, requested_model, model, path)

    def admit(self, admission: Admission, rates: ModelRates | None, *, input_bound: int,
              input_estimate: int, max_output: int | None,
              model_max_output: int | None = None, choices: int = 1,
              reserve: bool = True) -> Ticket:
        """Check every limit on the path and, if all pass, reserve on all of them.

        ``input_bound`` is a true upper bound on prompt tokens (used for budget
        holds), ``input_estimate`` a realistic estimate (used for TPM).
        ``max_output`` is the request's own output cap, or None; ``choices`` how many
        answers it asks for (each may write up to the cap). Raises :class:`Refusal`
        (also for negative or zero-choice figures: a negative hold would open room
        on every scope of the path); returns a :class:`Ticket` that must be settled.
        With ``reserve=False`` (dry runs) it only checks: the ticket reserves nothing and
        must not be settled.
        """
        if (input_bound < 0 or input_estimate < 0 or choices < 1
                or (max_output is not None and max_output < 0)):
            raise Refusal("max_tokens", 400,
                          f"invalid request size: output cap {max_output}, {choices} choices, "
                          f"input bound {input_bound}; caps and counts must be positive")
        now = self.clock()
        path = admission.path
        headers: dict[str, str] = {}

        # 1. concurrency
        for state, policy in path:
            if policy.max_concurrency is not None and state.inflight >= policy.max_concurrency:
                raise Refusal("concurrency", 429,
                              f"concurrency limit reached for {state.name}: "
                              f"{policy.max_concurrency} calls in flight allowed, "
                              f"{state.inflight} in flight; retry when one finishes",
                              scope=state.name, retry_after=1.0)

        # 2. requests and tokens per minute
        output_reserve = (max_output or 0) * choices
        token_need = input_estimate + output_reserve
        tightest_requests: tuple[int, int, float] | None = None
        tightest_tokens: tuple[int, int, float] | None = None
        for state, policy in path:
            if policy.rpm is not None:
                wait = state.requests.wait(now, 1, policy.rpm)
                used = state.requests.used(now)
                if wait > 0:
                    raise Refusal("rate_requests", 429,
                                  f"rate limit reached for {state.name}: {policy.rpm} requests "
                                  f"per minute, {used} used; resets in {_duration(wait)}",
                                  scope=state.name, retry_after=wait,
                                  headers=self._rate_headers("requests", policy.rpm, 0, wait))
                remaining = policy.rpm - used - 1
                if tightest_requests is None or remaining < tightest_requests[1]:
                    tightest_requests = (policy.rpm, remaining, state.requests.next_release(now))
            if policy.tpm is not None:
                wait = state.tokens.wait(now, token_need, policy.tpm)
                used = state.tokens.used(now)
                if wait > 0:
                    if token_need > policy.tpm:
                        wait = 60.0
                    raise Refusal("rate_tokens", 429,
                                  f"token rate limit reached for {state.name}: {policy.tpm} "
                                  f"tokens per minute, {used} used, this call needs up to "
                                  f"{token_need}; resets in {_duration(wait)}",
                                  scope=state.name, retry_after=wait,
                                  headers=self._rate_headers("tokens", policy.tpm,
                                                             max(policy.tpm - used, 0), wait))
                remaining = policy.tpm - used - token_need
                if tightest_tokens is None or remaining < tightest_tokens[1]:
                    tightest_tokens = (policy.tpm, remaining, state.tokens.next_release(now))
        if tightest_requests:
            headers.update(self._rate_headers("requests", *tightest_requests))
        if tightest_tokens:
            headers.update(self._rate_headers("tokens", *tightest_tokens))

        # 3. budgets: hold the worst case on every budget of the path
        capped = [(state, budget, state.budget(budget.period, self.tz, now))
                  for state, policy in path for budget in policy.budgets]
        clamped_to = None
        if capped and rates is None:
            state = capped[0][0]
            raise Refusal("unpriced", 403,
                          f"model '{admission.model}' has no known price and {state.name} has a "
                          "budget cap; ask an admin to configure a price for it", scope=state.name)
        ceiling = model_max_output or self.default_max_output
        effective_output = max_output if max_output is not None else ceiling
        hold = (rates.worst_case(input_bound, effective_output * choices)
                if rates is not None else 0)
        if capped and max_output is None:
            room = min(budget.pico - counter.spent - counter.held for _, budget, counter in capped)
            if hold > room:
                affordable = (rates.affordable_output(room, input_bound) // choices
                              if rates else 0)
                if self.clamp_max_tokens and affordable >= 1:
                    clamped_to = effective_output = min(affordable, ceiling)
                    hold = rates.worst_case(input_bound, effective_output * choices)
                elif affordable >= 1:
                    raise Refusal("max_tokens", 400,
                                  f"this request sets no max_tokens and its worst case "
                                  f"({format_usd(hold)}) exceeds the remaining budget "
                                  f"({format_usd(max(room, 0))}); set max_tokens to at most "
                                  f"{affordable}")
        for state, budget, counter in capped:
            if counter.spent + counter.held + hold > budget.pico:
                resets = iso(counter.end)
                when = f"resets {resets}" if resets else "a total budget does not reset"
                raise Refusal(
                    "budget", 429,
                    f"budget exhausted for {state.name} ({budget.period} window): cap "
                    f"{format_usd(budget.pico)}, spent {format_usd(counter.spent)}, held for calls "
                    f"in flight {format_usd(counter.held)}, this call needs up to "
                    f"{format_usd(hold)}; {when}",
                    scope=state.name, headers={"x-should-retry": "false"})

        # 4. all checks passed: reserve everywhere (no awaits between check and reserve)
        ticket = Ticket(admission, rates, hold, clamped_to, now, headers=headers)
        if not reserve:
            ticket.settled = True  # nothing to settle
            return ticket
        for state, policy in path:
            state.inflight += 1
            if policy.rpm is not None:
                state.requests.add(now, 1)
            if policy.tpm is not None:
                ticket.token_entries.append((state.tokens, state.tokens.add(now, token_need),
                                             token_need))
        for state, budget, counter in capped:
            counter.held += hold
            ticket.holds.append((counter, counter.generation))
            if budget.soft is not None and counter.spent + counter.held >= budget.soft * budget.pico:
                ticket.warnings.append(
                    f"{state.name} {budget.period} budget at "
                    f"{100 * (counter.spent + counter.held) / budget.pico:.0f}% of "
                    f"{format_usd(budget.pico)}" if budget.pico else f"{state.name} budget is zero")
        if ticket.warnings:
            ticket.headers["x-vkeys-budget-warning"] = "; ".join(ticket.warnings)
        return ticket

    def settle(self, ticket: Ticket, cost_pico: int, tokens: int) -> list[str]:
        """Replace the ticket's holds with ``cost_pico`` and its token reservation with
        ``tokens``; release its concurrency slots. Called once per admitted call, on
        success, error and cancellation alike. Returns soft-threshold crossings."""
        if ticket.settled:
            return []
        ticket.settled = True
        cost_pico, tokens = max(cost_pico, 0), max(tokens, 0)  # never a negative spend
        crossed: list[str] = []
        for state, _ in ticket.admission.path:
            state.inflight -= 1
        for sliding, entry, reserved in ticket.token_entries:
            sliding.adjust(entry, reserved, tokens)
        for counter, generation in ticket.holds:
            if counter.generation == generation:  # else the window rolled while the call ran
                counter.held -= ticket.hold
        # Spend is counted on every window of every scope, capped or not, so a budget
        # added later (or a restart) knows what was already spent in its window.
        if cost_pico:
            now = self.clock()
            for state, _ in ticket.admission.path:
                state.add_spend(cost_pico, ticket.started, self.tz, now)
        for state, policy in ticket.admission.path:
            for budget in policy.budgets:
                counter = state.budgets.get(budget.period)
                if (counter is not None and budget.soft is not None and not counter.warned
                        and counter.spent >= budget.soft * budget.pico):
                    counter.warned = True
                    crossed.append(f"{state.name} {budget.period} budget passed "
                                   f"{budget.soft:.0%} of {format_usd(budget.pico)}")
        return crossed

    def window_starts(self) -> dict[str, float]:
        """Start of the current window of each period (for rebuilding spend at start-up)."""
        now = self.clock()
        return {period: window(period, now, self.tz)[0] for period in PERIODS}

    def restore_spend(self, scopes: Iterable[str], spent: dict[str, int]) -> None:
        """Add spend found in the warehouse (``period -> pico-USD`` in the current
        windows) to ``scopes``. Called once at start-up, before serving."""
        now = self.clock()
        for scope in scopes:
            state = self.state(scope)
            for period, pico in spent.items():
                if pico:
                    state.budget(period, self.tz, now).spent += pico

    @staticmethod
    def _rate_headers(kind: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
        return {f"x-ratelimit-limit-{kind}": str(limit),
                f"x-ratelimit-remaining-{kind}": str(max(remaining, 0)),
                f"x-ratelimit-reset-{kind}": _duration(reset)}

    # -- reading ---------------------------------------------------------------------
    def report(self, scope: str, policy: Policy) -> dict[str, Any]:
        """Limits, usage, spend, holds and reset times of ``scope`` under ``policy``,
        for the admin API, ``/api/me`` and the widgets."""
        now = self.clock()
        state = self.state(scope)
        budgets = []
        for budget in policy.budgets:
            counter = state.budget(budget.period, self.tz, now)
            budgets.append({
                **budget.as_dict(), "spent_usd": pico_to_usd(counter.spent),
                "held_usd": pico_to_usd(counter.held),
                "remaining_usd": pico_to_usd(max(budget.pico - counter.spent - counter.held, 0)),
                "window_start": iso(counter.start) if counter.start > 0 else None,
                "resets_at": iso(counter.end),
                "warned": budget.soft is not None and counter.spent >= budget.soft * budget.pico,
            })
        return {"scope": scope, "policy": policy.as_dict(), "budgets": budgets,
                "requests_last_minute": state.requests.used(now),
                "tokens_last_minute": state.tokens.used(now), "in_flight": state.inflight}
