"""The AdminPanel's logic, without widgets: what the table shows, and every admin action.

:class:`AdminController` is created by :class:`~.admin_view.AdminPanel` (or directly,
in a script or a test). It talks to the gateway's admin API only (never the store),
with the notebook's own credentials (:func:`~.credentials.notebook_credentials`) or
explicit ``url``/``token``; every authorization decision stays in the gateway.

Each action returns a :class:`Notice` (what happened, or the API's refusal with what to
do) and leaves the last one in :attr:`~AdminController.notice`. Revoke and rotate are
two steps: :meth:`~AdminController.ask` records a :class:`Pending` action that
:meth:`~AdminController.confirm` performs and :meth:`~AdminController.cancel` drops.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .client import ApiClient, ApiProblem, segment
from .credentials import Credentials, CredentialsError, notebook_credentials
from .rows import PERIODS, Row, build_rows, visible_rows

__all__ = ["AdminController", "CreatedKey", "LimitsForm", "Notice", "Pending"]


@dataclass(frozen=True)
class Notice:
    """The outcome of the last action: ``level`` is ``ok``, ``error`` or ``info``."""

    level: str
    text: str
    advice: str = ""
    status: int = 0


@dataclass(frozen=True)
class Pending:
    """A revoke or rotate waiting for confirmation."""

    verb: str            # revoke, rotate
    key_id: str
    grace_seconds: int = 0

    @property
    def question(self) -> str:
        """What the confirmation step asks."""
        if self.verb == "revoke":
            return (f"Revoke key {self.key_id}? Every call with it (and with its kernels' "
                    "child keys) is refused with 401 from the next request on.")
        grace = (f"the old secret keeps working for {self.grace_seconds} s"
                 if self.grace_seconds else "the old secret stops working at once")
        return f"Rotate key {self.key_id}? A new secret is shown once; {grace}."


@dataclass(frozen=True)
class CreatedKey:
    """A key just created: its id and its secret (shown once, never again)."""

    key_id: str
    secret: str
    record: dict[str, Any]


@dataclass
class LimitsForm:
    """The editable limits of one scope or key, as text the way an admin types them.

    ``budgets`` maps a period to ``(usd, soft)``; a blank usd means no cap in that
    window, soft is a fraction (0.8) or a percentage (80%). Blank rpm/tpm/concurrency
    mean no limit, blank models means every model; ``expires_at`` (keys only) is an
    RFC 3339 time or blank for never."""

    budgets: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {p: ("", "") for p in PERIODS})
    rpm: str = ""
    tpm: str = ""
    max_concurrency: str = ""
    models: str = ""
    expires_at: str = ""


def _number(label: str, text: str, *, integer: bool = False) -> float | int | None:
    text = text.strip().replace(",", "").lstrip("$")
    if not text:
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ValueError(f"{label} must be {kind} or blank, got {text[:40]!r}") from None
    if value < 0:
        raise ValueError(f"{label} must not be negative, got {text[:40]!r}")
    return value


def _soft(label: str, text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    percent = text.endswith("%")
    value = _number(label, text.rstrip("%"))
    return round(value / 100, 6) if percent else value


def _plain(value: float) -> str:
    """A number as a person types it: ``0.000001``, ``20``, ``2.5`` (no exponent)."""
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def _iso(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AdminController:
    """Reads the admin API into :class:`~.rows.Row` objects and performs admin actions.

    ``url`` is the admin API base (``.../vkeys/api``); with neither ``url`` nor ``token``
    the ``credentials`` function finds both (by default :func:`notebook_credentials`),
    sent as ``Authorization: token ...``. An explicit ``token`` is sent as
    ``Authorization: Bearer ...``, which a Jupyter server, a Hub service and the
    standalone ``jupyter vkeys serve`` (its admin token) all take.
    Thread-safe: the view's live refresh runs :meth:`refresh` from a timer thread."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 credentials: Callable[[], Credentials] = notebook_credentials,
                 timeout: float = 10) -> None:
        self.client: ApiClient | None = None
        self.rows: list[Row] = []
        self.notice: Notice | None = None
        self.pending: Pending | None = None
        self.not_admin = False
        self.problem: ApiProblem | None = None  # why the last refresh failed, if it did
        self.refreshed_at: float | None = None
        self.audit_rows: list[dict[str, Any]] = []
        self.audit_problem: ApiProblem | None = None  # the audit trail refused (403)
        self._audit_seq = 0
        self._lock = threading.RLock()
        try:
            scheme = "Bearer"
            if url is None or token is None:
                found = credentials()
                url, scheme = url or found.api_url, "token" if token is None else "Bearer"
                token = token or found.token
            self.client = ApiClient(url, token, scheme, timeout)
        except CredentialsError as exc:
            self.problem = ApiProblem(0, str(exc), "credentials",
                                      "pass AdminPanel(url=..., token=...) explicitly")

    # -- reading -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Fetch keys, policies, each active key's spend and new audit rows. Returns True
        on success; on failure :attr:`problem` says why (and :attr:`not_admin` is set when
        the gateway says the caller is no admin). Called by the view at start, by its
        refresh button and by its live timer."""
        with self._lock:
            if self.client is None:
                return False
            try:
                keys = self.client.get("/keys")["keys"]
                policies = self.client.get("/policies")["policies"]
                reports = {}
                for key in keys:
                    if key.get("state") == "active":
                        reports[key["id"]] = self.client.get(f"/keys/{segment(key['id'])}")
                self._fetch_audit()
            except ApiProblem as exc:
                self.problem = exc
                self.not_admin = exc.not_admin
                return False
            self.rows = build_rows(keys, policies, reports)
            self.problem, self.not_admin = None, False
            self.refreshed_at = time.time()
            return True

    def _fetch_audit(self) -> None:
        """New audit rows since the last refresh. An admin whose reach is limited (a
        group admin on a hub) may be refused the audit trail while the rest answers:
        :attr:`audit_problem` says so and the panel works without it."""
        while True:
            try:
                batch = self.client.get("/audit", since=self._audit_seq, limit=1000)["audit"]
            except ApiProblem as exc:
                if exc.status != 403:
                    raise
                self.audit_problem = exc
                return
            self.audit_problem = None
            self.audit_rows.extend(batch)
            if batch:
                self._audit_seq = batch[-1]["seq"]
            if len(batch) < 1000:
                break
        if len(self.audit_rows) > 20_000:
            del self.audit_rows[:-10_000]

    def visible(self, **filters: Any) -> list[Row]:
        """The rows after :func:`~.rows.visible_rows` filters and sorting."""
        return visible_rows(self.rows, **filters)

    def row(self, scope: str) -> Row | None:
        """The row of ``scope`` (``user:alice``, ``key:<id>``), if any."""
        return next((r for r in self.rows if r.scope == scope), None)

    def audit_of(self, scope: str, limit: int = 50) -> list[dict[str, Any]]:
        """The admin actions on ``scope``, newest first (the panel's audit trail)."""
        rows = [r for r in self.audit_rows if r.get("target") == scope]
        return rows[::-1][:limit]

    # -- editing limits ----------------------------------------------------------------
    def form_for(self, scope: str) -> LimitsForm:
        """The editor's starting values: the scope's current limits."""
        row = self.row(scope)
        form = LimitsForm()
        if row is None:
            return form
        policy = row.policy
        for b in policy.get("budgets") or []:
            soft = b.get("soft")
            form.budgets[b["period"]] = (_plain(b["usd"]),
                                         "" if soft is None else f"{_plain(soft * 100)}%")
        form.rpm, form.tpm, form.max_concurrency = (
            str(policy.get(n, "")) for n in ("rpm", "tpm", "max_concurrency"))
        form.models = ", ".join(policy.get("models") or [])
        if row.key is not None:
            form.expires_at = _iso(row.key.get("expires_at"))
        return form

    def policy_fields(self, form: LimitsForm) -> dict[str, Any]:
        """The API's policy fields for ``form`` (None where a limit is removed); raises
        ValueError naming the field a person typed wrong (nothing is sent then)."""
        budgets = []
        for period in PERIODS:
            amount, soft = form.budgets.get(period, ("", ""))
            cap = _number(f"{period} budget", amount)
            soft_value = _soft(f"{period} soft threshold", soft)
            if cap is None:
                if soft_value is not None:
                    raise ValueError(f"{period} soft threshold needs a {period} budget")
                continue
            budget: dict[str, Any] = {"usd": cap, "period": period}
            if soft_value is not None:
                budget["soft"] = soft_value
            budgets.append(budget)
        models = [m for m in form.models.replace(",", " ").split() if m]
        return {"budgets": budgets,
                "rpm": _number("rpm", form.rpm, integer=True),
                "tpm": _number("tpm", form.tpm, integer=True),
                "max_concurrency": _number("max concurrency", form.max_concurrency,
                                           integer=True),
                "models": models or None}

    def save_limits(self, scope: str, form: LimitsForm) -> Notice:
        """Apply ``form`` to ``scope``: ``PATCH /keys/{id}`` for a key (with its expiry),
        ``PATCH /policies/{scope}`` otherwise. Effective on the next call."""
        try:
            fields = self.policy_fields(form)
        except ValueError as exc:
            return self._say(Notice("error", str(exc), "correct it and apply again; nothing "
                                    "was sent", 400))
        if scope.startswith("key:"):
            fields["expires_at"] = form.expires_at.strip() or None
            path = f"/keys/{segment(scope[4:])}"
        else:
            path = f"/policies/{segment(scope)}"
        return self._act(lambda: self.client.patch(path, fields),
                         f"saved the limits of {scope}; they apply from the next call")

    # -- keys ------------------------------------------------------------------------
    def create_key(self, *, owner: str = "", team: str = "", project: str = "",
                   alias: str = "", month_usd: str = "", models: str = "",
                   ci_hours: float | None = None, ci_total_usd: str = "") -> CreatedKey | None:
        """``POST /keys``. With ``ci_hours`` a short-lived CI key: it expires that many
        hours from now and has a ``total`` budget of ``ci_total_usd``. Returns the key
        (its secret, shown once) or None with :attr:`notice` saying why not."""
        fields: dict[str, Any] = {k: v.strip() for k, v in
                                  (("owner", owner), ("team", team), ("project", project),
                                   ("alias", alias)) if v.strip()}
        try:
            budgets = []
            month = _number("month budget", month_usd)
            if month is not None:
                budgets.append({"usd": month, "period": "month"})
            if ci_hours is not None:
                if not ci_hours or ci_hours <= 0:
                    raise ValueError("a CI key needs a lifetime of more than 0 hours")
                total = _number("CI total budget", ci_total_usd)
                if total is None:
                    raise ValueError("a CI key needs a total budget (USD over its lifetime)")
                budgets.append({"usd": total, "period": "total"})
                fields["expires_at"] = _iso(time.time() + ci_hours * 3600)
                fields["metadata"] = {"kind": "ci"}
                fields.setdefault("alias", f"CI {owner.strip() or project.strip() or 'job'}")
        except ValueError as exc:
            self._say(Notice("error", str(exc), "correct it and create again; nothing was "
                                                "sent", 400))
            return None
        if budgets:
            fields["budgets"] = budgets
        chosen = [m for m in models.replace(",", " ").split() if m]
        if chosen:
            fields["models"] = chosen
        created: list[dict[str, Any]] = []
        notice = self._act(lambda: created.append(self.client.post("/keys", fields)),
                           "created key {id}: copy its secret now, it is shown only once")
        if notice.level != "ok":
            return None
        record = created[0]
        self.notice = Notice("ok", notice.text.format(id=record["id"]))
        return CreatedKey(record["id"], record["key"],
                          {k: v for k, v in record.items() if k != "key"})

    def ask(self, verb: str, key_id: str, grace_seconds: int = 0) -> Pending:
        """First step of a revoke or rotate: the question the panel asks."""
        if verb not in ("revoke", "rotate"):
            raise ValueError(f"verb must be revoke or rotate, got {verb!r}")
        self.pending = Pending(verb, key_id, int(grace_seconds or 0))
        return self.pending

    def cancel(self) -> None:
        """The admin said no: nothing happens."""
        self.pending = None
        self._say(Notice("info", "cancelled; nothing was changed"))

    def confirm(self) -> CreatedKey | Notice:
        """Second step: perform the pending revoke or rotate. A rotation returns the new
        secret (shown once)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return self._say(Notice("error", "nothing to confirm", "choose revoke or rotate "
                                                                   "first"))
        path = f"/keys/{segment(pending.key_id)}/{pending.verb}"
        if pending.verb == "revoke":
            return self._act(lambda: self.client.post(path),
                             f"revoked key {pending.key_id}: its next call gets 401")
        answer: list[dict[str, Any]] = []
        notice = self._act(lambda: answer.append(self.client.post(
            path, {"grace_seconds": pending.grace_seconds})),
            f"rotated key {pending.key_id}: copy the new secret now, it is shown only once")
        if notice.level != "ok":
            return notice
        return CreatedKey(pending.key_id, answer[0]["key"],
                          {k: v for k, v in answer[0].items() if k != "key"})

    # -- internals -------------------------------------------------------------------
    def _say(self, notice: Notice) -> Notice:
        self.notice = notice
        return notice

    def _act(self, action: Callable[[], Any], success: str) -> Notice:
        with self._lock:
            if self.client is None:
                problem = self.problem
                return self._say(Notice("error", problem.message, problem.advice))
            try:
                action()
            except ApiProblem as exc:  # a group admin out of reach: said, panel kept
                return self._say(Notice("error", exc.message, exc.advice, exc.status))
            self.refresh()
            return self._say(Notice("ok", success))

