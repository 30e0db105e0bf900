"""Budgets, holds, RPM/TPM windows and concurrency shared by N replicas on Redis/Valkey.

:class:`RedisLedger` is created by :meth:`VKeysGateway.start
<jupyter_vkeys.gateway.core.VKeysGateway.start>` when ``c.VKeysGateway.state_url`` is a
``redis://`` (or ``rediss://``, ``unix://``) URL. The data plane calls :meth:`admit`
after the local engine admitted a call and :meth:`settle` when it ends. One admission
is one script call (one round trip); settlements are batched into one script call per
batch by a background task, off the call's path.

See :mod:`jupyter_vkeys.state` for why N replicas cannot overspend.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from datetime import tzinfo
from typing import TYPE_CHECKING, Any

import orjson

from ..money import format_usd
from ..policy.engine import Refusal, _duration
from ..policy.spec import PERIODS
from ..policy.windows import FOREVER, iso, window
from . import scripts
from .base import StateUnavailable, default_replica_id

if TYPE_CHECKING:
    from ..policy.engine import Ticket
    from ..pricing import ModelRates

__all__ = ["RedisLedger"]

log = logging.getLogger("jupyter_vkeys.state")

E12 = 10**12
# Window keys outlive their window by a day, so a call still running at midnight
# settles into the window it was admitted in.
_WINDOW_MARGIN = 86400
_SETTLE_BATCH = 256
_MAX_PLANS = 10000  # cached scope-path plans (one per key seen)


def _limbs(pico: int) -> tuple[int, int]:
    """``(whole USD, pico-USD below a dollar)``: how the Lua side keeps money exact."""
    return divmod(pico, E12)


class _Plan:
    """The shared checks of one scope path in the current windows (cached per path).

    ``payload`` is the JSON the admit script reads; the lists alongside say, for a
    refusal's index, which scope and limit it was."""

    __slots__ = ("payload", "concurrency", "rpm", "tpm", "budgets", "expires", "only_rpm")

    def __init__(self, prefix: str, path: list, started: float, tz: tzinfo) -> None:
        concurrency, rpm, tpm, budgets, spend = [], [], [], [], []
        self.concurrency: list[tuple[str, int]] = []
        self.rpm: list[tuple[str, int]] = []
        self.tpm: list[tuple[str, int]] = []
        self.budgets: list[tuple[str, Any, float]] = []
        windows = {period: window(period, started, tz) for period in PERIODS}
        self.expires = min(end for _, end in windows.values())
        for state, policy in path:
            name = state.name
            if policy.max_concurrency is not None:
                concurrency.append([f"{prefix}c:{name}", policy.max_concurrency])
                self.concurrency.append((name, policy.max_concurrency))
            if policy.rpm is not None:
                rpm.append([f"{prefix}r:{name}", policy.rpm])
                self.rpm.append((name, policy.rpm))
            if policy.tpm is not None:
                tpm.append([f"{prefix}t:{name}", policy.tpm])
                self.tpm.append((name, policy.tpm))
            capped = {budget.period: budget for budget in policy.budgets}
            for period in PERIODS:
                start, end = windows[period]
                key = f"{prefix}b:{name}:{period}:{int(start)}"
                expire_at = 0 if end == FOREVER else int(end) + _WINDOW_MARGIN
                spend.append(f"{key}@{expire_at}")
                budget = capped.get(period)
                if budget is not None:
                    budgets.append([key, *_limbs(budget.pico), expire_at])
                    self.budgets.append((name, budget, end))
        self.only_rpm = not (concurrency or tpm or budgets)
        windows_text = " ".join(spend)
        path_id = hashlib.blake2b(windows_text.encode(), digest_size=12).hexdigest()
        self.payload = orjson.dumps({"c": concurrency, "r": rpm, "t": tpm, "b": budgets,
                                     "s": windows_text, "p": path_id})


class RedisLedger:
    """The shared ledger on one Redis (or Valkey) primary.

    ``lease`` is how long a replica's holds survive it: each replica renews its lease
    every ``lease / 3`` seconds (and on every admission), and the first replica to see
    a lease expired charges that replica's open holds as lost. ``timeout`` bounds every
    Redis round trip on the call path; past it the call is refused with 503.
    """

    def __init__(self, url: str, *, tz: tzinfo, prefix: str = "{vkeys}:",
                 replica: str | None = None, lease: float = 10.0, timeout: float = 1.0,
                 fail_open_rate: bool = False, clamp_max_tokens: bool = True) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.tz = tz
        self.prefix = prefix
        self.replica = replica or default_replica_id()
        self.lease = lease
        self.lease_ms = max(int(lease * 1000), 100)
        self.fail_open_rate = fail_open_rate
        self.clamp_max_tokens = clamp_max_tokens
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout,
                                             socket_connect_timeout=timeout,
                                             health_check_interval=0)
        self._admit = self.redis.register_script(scripts.ADMIT)
        self._settle = self.redis.register_script(scripts.SETTLE)
        self._reap = self.redis.register_script(scripts.REAP)
        self._read = self.redis.register_script(scripts.READ)
        self._timeout = timeout
        self._reader: Any = None  # a synchronous client for reports (read_budgets)
        self.epoch: str | None = None
        self._plans: dict[str, tuple[Any, int, float, _Plan]] = {}
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closing = False
        self._down_since: float | None = None
        self.reaped = 0  # holds this replica charged for dead replicas (for tests, metrics)

    @property
    def reachable(self) -> bool:
        """False from a failed Redis round trip until the next one that succeeds (the
        lease loop tries every lease/3 s); read by the readiness probe."""
        return self._down_since is None and self.epoch is not None

    @property
    def where(self) -> str:
        """The URL without credentials, for messages."""
        rest = self.url.split("://", 1)[-1].rsplit("@", 1)[-1]
        return f"{self.url.split('://', 1)[0]}://{rest}"

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Start the lease/reaper and the settlement tasks; try to learn the epoch (a
        Redis that is down now is retried on the first call)."""
        try:
            await self._ensure_epoch()
            await self._reap(args=[self.prefix, self.replica, self.lease_ms])
        except StateUnavailable as exc:
            log.warning("jupyter-vkeys: %s; calls are refused until it answers", exc.message)
        self._tasks = [asyncio.ensure_future(self._lease_loop()),
                       asyncio.ensure_future(self._settle_loop())]

    async def close(self, wait: float = 5.0) -> None:
        """Deliver pending settlements (at most ``wait`` s), end the lease, disconnect."""
        self._closing = True
        self._wake.set()
        deadline = time.monotonic() + wait
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._pending:
            log.error("jupyter-vkeys: %d settlements not delivered to %s at shutdown; their "
                      "holds are charged as lost when this replica's lease expires",
                      len(self._pending) // 4, self.where)
        try:
            await self.redis.aclose()
            if self._reader is not None:
                self._reader.close()
        except Exception:  # already gone
            pass

    async def _call(self, script, args: list) -> Any:
        """Run ``script``; connection trouble becomes :class:`StateUnavailable`."""
        from redis.exceptions import RedisError

        try:
            result = await script(args=args)
        except (RedisError, OSError) as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.error("jupyter-vkeys: shared state at %s unreachable (%s: %s); calls "
                          "fail closed", self.where, type(exc).__name__, exc)
            raise StateUnavailable(
                f"the gateway's shared budget and rate-limit state (Redis at {self.where}) "
                f"is unreachable ({type(exc).__name__}); no call is admitted until it "
                "answers, so no budget can be overspent; retry shortly") from None
        if self._down_since is not None:
            log.warning("jupyter-vkeys: shared state at %s reachable again after %.1f s",
                        self.where, time.monotonic() - self._down_since)
            self._down_since = None
        return result

    async def _ensure_epoch(self) -> None:
        """Read (or, on a fresh Redis, create) the ledger's epoch."""
        from redis.exceptions import RedisError

        key = self.prefix + "epoch"
        try:
            await self.redis.set(key, secrets.token_hex(8), nx=True)
            epoch = await self.redis.get(key)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(
                f"the gateway's shared state (Redis at {self.where}) is unreachable "
                f"({type(exc).__name__}); retry shortly") from None
        self.epoch = epoch.decode()

    async def _lease_loop(self) -> None:
        """Renew this replica's lease and reap dead replicas' holds, every lease/3 s."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                charged = await self._call(self._reap,
                                           [self.prefix, self.replica, self.lease_ms])
            except StateUnavailable:
                continue
            except Exception:
                log.exception("jupyter-vkeys: reaping expired holds failed")
                continue
            if charged:
                self.reaped += charged
                log.warning("jupyter-vkeys: charged %d open holds of expired replicas at "
                            "their hold (status lost)", charged)

    # -- the call path ----------------------------------------------------------------
    def _plan(self, ticket: Ticket) -> _Plan:
        """The shared checks of ``ticket``'s scope path, cached per key until its path
        changes (a policy or key change) or its earliest budget window ends."""
        admission = ticket.admission
        record = admission.record
        cached = self._plans.get(record.id)
        path = admission.path
        if (cached is not None and cached[0] is path and cached[1] == len(path)
                and ticket.started < cached[2]):
            return cached[3]
        plan = _Plan(self.prefix, path, ticket.started, self.tz)
        if len(self._plans) >= _MAX_PLANS:  # per-kernel keys come and go
            self._plans.clear()
        self._plans[record.id] = (path, len(path), plan.expires, plan)
        return plan

    async def admit(self, request_id: str, ticket: Ticket, rates: ModelRates | None, *,
                    input_bound: int, max_output: int | None, choices: int,
                    ceiling: int) -> bool:
        """See :meth:`.base.SharedLedger.admit`."""
        plan = self._plan(ticket)
        if self.epoch is None:
            try:
                await self._ensure_epoch()
            except StateUnavailable:
                if self.fail_open_rate and plan.only_rpm:
                    return False
                raise
        token_need = (ticket.token_entries[0][2] if ticket.token_entries
                      else self._token_need(ticket, input_bound, max_output, choices))
        room: int | None = None
        for _ in range(len(plan.budgets) + 2):
            hold_u, hold_p = _limbs(ticket.hold)
            try:
                answer = await self._call(self._admit, [
                    self.prefix, request_id, self.replica, self.lease_ms, self.epoch,
                    hold_u, hold_p, token_need, plan.payload])
            except StateUnavailable:
                self.settle(request_id, 0, 0)  # in case the script ran but its answer was lost
                if self.fail_open_rate and plan.only_rpm:
                    return False
                raise
            except BaseException:  # cancelled while Redis may have reserved
                self.settle(request_id, 0, 0)
                raise
            code = answer[0]
            if code in (0, 1):
                return True
            if code == -9:
                raise StateUnavailable(
                    f"the shared ledger at {self.where} lost its state (its epoch changed: "
                    "Redis restarted without persistence, or was flushed); budgets cannot "
                    "be enforced exactly, so calls are refused. Restore Redis from its "
                    "AOF/RDB file, or restart every replica to begin a fresh ledger")
            if code == 5 and max_output is None and self.clamp_max_tokens and rates:
                _, budget, _ = plan.budgets[answer[1] - 1]
                left = budget.pico - (answer[2] * E12 + answer[3]) - (answer[4] * E12
                                                                       + answer[5])
                room = left if room is None else min(room, left)
                affordable = rates.affordable_output(room, input_bound) // choices
                if affordable >= 1:
                    clamped = min(affordable, ceiling)
                    hold = rates.worst_case(input_bound, clamped * choices)
                    if hold < ticket.hold:
                        self._lower_hold(ticket, hold, clamped)
                        continue
            raise self._refusal(plan, answer, ticket.hold, token_need)
        raise self._refusal(plan, answer, ticket.hold, token_need)

    @staticmethod
    def _token_need(ticket: Ticket, input_bound: int, max_output: int | None,
                    choices: int) -> int:
        """Tokens the call reserves on TPM windows: the local engine's figure."""
        return input_bound // 4 + (max_output or 0) * choices

    @staticmethod
    def _lower_hold(ticket: Ticket, hold: int, clamped: int) -> None:
        """Lower an admitted ticket's hold to ``hold`` (clamped to ``clamped`` output
        tokens), on the local engine's counters too."""
        for counter, generation in ticket.holds:
            if counter.generation == generation:
                counter.held += hold - ticket.hold
        ticket.hold = hold
        ticket.clamped_to = clamped

    def _refusal(self, plan: _Plan, answer: list, hold: int, token_need: int) -> Refusal:
        """The client's refusal for a refused admit script answer."""
        code, index = answer[0], answer[1] - 1
        if code == 2:
            name, limit = plan.concurrency[index]
            return Refusal("concurrency", 429,
                           f"concurrency limit reached for {name}: {limit} calls in flight "
                           f"allowed across all gateway replicas, {answer[2]} in flight; "
                           "retry when one finishes", scope=name, retry_after=1.0)
        if code == 3:
            name, limit = plan.rpm[index]
            wait = answer[3] / 1000
            return Refusal("rate_requests", 429,
                           f"rate limit reached for {name}: {limit} requests per minute, "
                           f"{answer[2]} used across all gateway replicas; resets in "
                           f"{_duration(wait)}", scope=name, retry_after=wait,
                           headers=_rate_headers("requests", limit, 0, wait))
        if code == 4:
            name, limit = plan.tpm[index]
            wait = answer[3] / 1000
            return Refusal("rate_tokens", 429,
                           f"token rate limit reached for {name}: {limit} tokens per minute, "
                           f"{answer[2]} used across all gateway replicas, this call needs up "
                           f"to {token_need}; resets in {_duration(wait)}", scope=name,
                           retry_after=wait,
                           headers=_rate_headers("tokens", limit, max(limit - answer[2], 0),
                                                 wait))
        name, budget, end = plan.budgets[index]
        spent, held = answer[2] * E12 + answer[3], answer[4] * E12 + answer[5]
        resets = iso(end)
        when = f"resets {resets}" if resets else "a total budget does not reset"
        return Refusal("budget", 429,
                       f"budget exhausted for {name} ({budget.period} window): cap "
                       f"{format_usd(budget.pico)}, spent {format_usd(spent)}, held for calls "
                       f"in flight {format_usd(held)} (across all gateway replicas), this "
                       f"call needs up to {format_usd(hold)}; {when}",
                       scope=name, headers={"x-should-retry": "false"})

    def settle(self, request_id: str, cost_pico: int, tokens: int) -> None:
        """See :meth:`.base.SharedLedger.settle`."""
        cost_u, cost_p = _limbs(max(cost_pico, 0))
        self._pending += (request_id, str(cost_u), str(cost_p), str(max(tokens, 0)))
        self._wake.set()

    async def _settle_loop(self) -> None:
        """Deliver queued settlements in batches; on trouble, retry the same batch (the
        script skips holds already settled, so a batch that landed twice counts once)."""
        backoff = 0.05
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = self._pending[:4 * _SETTLE_BATCH]
            try:
                await self._call(self._settle, [self.prefix, *batch])
            except StateUnavailable:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            except Exception:
                log.exception("jupyter-vkeys: settling %d calls failed; retrying",
                              len(batch) // 4)
                await asyncio.sleep(1.0)
                continue
            backoff = 0.05
            del self._pending[:len(batch)]

    # -- reading ----------------------------------------------------------------------
    async def budget_figures(self, scope: str, period: str, now: float | None = None
                             ) -> tuple[int, int]:
        """``(spent, held)`` in pico-USD of ``scope``'s current ``period`` window, summed
        over every replica (for reports and tests)."""
        start, _ = window(period, now if now is not None else time.time(), self.tz)
        key = f"{self.prefix}b:{scope}:{period}:{int(start)}"
        su, sp, hu, hp = (int(v) for v in await self._call(self._read, [self.prefix, key]))
        return su * E12 + sp, hu * E12 + hp

    def read_budgets(self, scope: str, periods: list[str], now: float
                     ) -> list[tuple[int, int]]:
        """``(spent, held)`` in pico-USD of ``scope``'s current window of each period,
        summed over every replica: one round trip. Called by the admin API's reports
        (:meth:`ControlPlane._report <jupyter_vkeys.runtime.ControlPlane._report>`: the
        ``/api`` key and policy reports, ``/api/me``, the Hub service's ``/api/hub/me``
        and home page, the widgets' data), which are synchronous like the registry's
        PostgreSQL calls; the round trip is bounded by ``timeout``. Raises
        :class:`StateUnavailable` when Redis does not answer."""
        import redis
        from redis.exceptions import RedisError

        if self._reader is None:
            self._reader = redis.Redis.from_url(self.url, socket_timeout=self._timeout,
                                                socket_connect_timeout=self._timeout)
            self._read_sync = self._reader.register_script(scripts.READ)
        keys = [f"{self.prefix}b:{scope}:{period}:{int(window(period, now, self.tz)[0])}"
                for period in periods]
        try:
            raw = [int(v) for v in self._read_sync(args=[self.prefix, *keys])]
        except (RedisError, OSError) as exc:
            raise StateUnavailable(
                f"the shared ledger (Redis at {self.where}) did not answer "
                f"({type(exc).__name__}); these figures are this replica's own share") from None
        return [(raw[i] * E12 + raw[i + 1], raw[i + 2] * E12 + raw[i + 3])
                for i in range(0, len(raw), 4)]

    async def lost_figures(self) -> tuple[int, int]:
        """``(calls, pico-USD)`` charged at their hold because their replica died."""
        got = await self.redis.hmget(self.prefix + "lost", "count", "u", "p")
        count, u, p = (int(v or 0) for v in got)
        return count, u * E12 + p


def _rate_headers(kind: str, limit: int, remaining: int, reset: float) -> dict[str, str]:
    return {f"x-ratelimit-limit-{kind}": str(limit),
            f"x-ratelimit-remaining-{kind}": str(max(remaining, 0)),
            f"x-ratelimit-reset-{kind}": _duration(reset)}
