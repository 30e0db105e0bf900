"""``AdminPanel()``: the admin table, limits editor, key actions and audit trail, as
ipywidgets over an :class:`~.admin_controller.AdminController`.

The view holds no logic of its own: every button calls one controller method and then
redraws from the controller's state. Widgets are kept in attributes with plain names
(``panel.filter``, ``panel.save``, ``panel.confirm``...) so tests click them through
ipywidgets' own API (``button.click()``).
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..kernel.report import usd
from .admin_controller import AdminController, CreatedKey, LimitsForm, Notice
from .live import LiveView
from .markup import bars_html, notice_html, secret_html, status_badge, table_html, when, wrap
from .rows import KINDS, PERIODS, Row

__all__ = ["AdminPanel"]

MAX_ROWS = 200
def _wide() -> w.Layout:
    return w.Layout(width="auto")


def _text(placeholder: str, width: str = "110px", **kw: Any) -> w.Text:
    return w.Text(placeholder=placeholder, layout=w.Layout(width=width), **kw)


class AdminPanel(LiveView, w.VBox):
    """The gateway admin's panel. ``AdminPanel()`` in a notebook uses the notebook's own
    credentials; ``AdminPanel(url=..., token=...)`` any admin API; ``controller=`` a
    ready controller. ``interval`` is the live refresh period in seconds."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 controller: AdminController | None = None, interval: float = 5.0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("vkeys-admin")
        self.controller = controller or AdminController(url, token)
        self.selected: str | None = None
        self._row_widgets: dict[str, tuple[w.Button, w.HTML, w.HTML, w.HTML]] = {}
        self._live_setup(self._tick, interval, _wide())
        self._build()
        self._watch_views()
        self.refresh()

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        self.title = w.HTML("<b style='font-size:15px'>jupyter-vkeys admin</b>")
        self.status = w.HTML()
        self.filter = w.Text(placeholder="filter: name, owner, team, model...",
                             layout=w.Layout(width="240px"))
        self.kinds = w.SelectMultiple(options=[(f"{k}s", k) for k in KINDS], value=KINDS,
                                      rows=4, layout=w.Layout(width="100px"),
                                      description="", tooltip="kinds shown")
        self.sort = w.Dropdown(options=[("by name", "scope"), ("by spend", "spend"),
                                        ("by cap use", "share"), ("by state", "state")],
                               value="scope", layout=w.Layout(width="120px"))
        self.descending = w.Checkbox(value=False, description="descending", indent=False,
                                     layout=_wide())
        self.show_inactive = w.Checkbox(value=False, description="revoked/expired keys",
                                        indent=False, layout=_wide())
        self.show_kernel_keys = w.Checkbox(value=True, description="kernel keys",
                                           indent=False, layout=_wide())
        self.refresh_button = w.Button(description="refresh", icon="refresh",
                                       layout=w.Layout(width="90px"))
        for control in (self.filter, self.kinds, self.sort, self.descending,
                        self.show_inactive, self.show_kernel_keys):
            control.observe(lambda change: self.redraw(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        toolbar = w.HBox([self.filter, self.kinds,
                          w.VBox([self.sort, self.descending]),
                          w.VBox([self.show_inactive, self.show_kernel_keys]),
                          w.VBox([self.refresh_button, self.live_box])])
        self.headers = {name: w.Button(description=label, layout=w.Layout(width=width),
                                       tooltip=f"sort {label}")
                        for name, label, width in (("scope", "scope ↕", "210px"),
                                                   ("share", "spend vs cap per window ↕", "420px"),
                                                   ("state", "state and limits ↕", "300px"))}
        for name, button in self.headers.items():
            button.on_click(lambda _, name=name: self._sort_by(name))
        self.table = w.VBox(layout=w.Layout(max_height="420px", overflow="auto"))
        self.notice = w.HTML()

        # editor of the selected scope
        self.editing = w.HTML("<i>select a row to edit its limits</i>")
        self.budget_fields = {p: (_text("no cap", "90px"), _text("soft, e.g. 80%", "100px"))
                              for p in PERIODS}
        for period, (usd_box, soft_box) in self.budget_fields.items():
            usd_box.add_class(f"vkeys-budget-{period}")
            soft_box.add_class(f"vkeys-soft-{period}")
        budget_rows = [w.HBox([w.Label(p, layout=w.Layout(width="50px")), usd_box,
                               soft_box]) for p, (usd_box, soft_box) in
                       self.budget_fields.items()]
        self.rpm = _text("no limit", "100px")
        self.tpm = _text("no limit", "120px")
        self.concurrency = _text("no limit", "90px")
        self.models = _text("all models (or: gpt-4o-mini, claude-*)", "330px")
        self.expires = _text("never (RFC 3339, keys only)", "250px")
        self.save = w.Button(description="save limits", button_style="primary",
                             icon="save", disabled=True)
        self.save.on_click(lambda _: self._save())
        for name in ("rpm", "tpm", "concurrency", "models", "expires", "save"):
            getattr(self, name).add_class(f"vkeys-{name}")
        editor = w.VBox([
            self.editing,
            w.HBox([w.Label("budgets (USD)", layout=w.Layout(width="100px")),
                    w.VBox(budget_rows)]),
            w.HBox([w.Label("rpm"), self.rpm, w.Label("tpm"), self.tpm,
                    w.Label("concurrency"), self.concurrency]),
            w.HBox([w.Label("models"), self.models]),
            w.HBox([w.Label("expires"), self.expires]),
            self.save])

        # key actions (selected key)
        self.revoke = w.Button(description="revoke…", button_style="danger", disabled=True)
        self.rotate = w.Button(description="rotate…", button_style="warning", disabled=True)
        self.grace = w.BoundedIntText(value=300, min=0, max=366 * 86400,
                                      description="grace s", layout=w.Layout(width="160px"))
        self.question = w.HTML()
        self.confirm = w.Button(description="yes, do it", button_style="danger")
        self.cancel = w.Button(description="cancel")
        self.confirm_box = w.HBox([self.question, self.confirm, self.cancel],
                                  layout=w.Layout(display="none"))
        self.revoke.on_click(lambda _: self._ask("revoke"))
        self.rotate.on_click(lambda _: self._ask("rotate"))
        self.confirm.on_click(lambda _: self._confirm())
        self.cancel.on_click(lambda _: self._cancel())
        self.secret = w.HTML()
        self.dismiss = w.Button(description="I copied it: hide the secret",
                                layout=w.Layout(display="none", width="auto"))
        self.dismiss.on_click(lambda _: self._show_secret(None))

        # new key
        self.new_owner, self.new_team = _text("owner"), _text("team")
        self.new_project, self.new_alias = _text("project"), _text("alias")
        self.new_month = _text("month USD", "90px")
        self.new_models = _text("models (blank: all)", "180px")
        self.new_ci = w.Checkbox(value=False, description="short-lived CI key", indent=False,
                                 layout=_wide())
        self.new_hours = w.BoundedFloatText(value=24, min=0.01, max=24 * 366,
                                            description="hours", layout=w.Layout(width="150px"))
        self.new_total = _text("total USD", "90px")
        self.create = w.Button(description="create key", button_style="success", icon="key")
        self.create.on_click(lambda _: self._create())
        for name in ("new_owner", "new_team", "new_project", "new_alias", "new_month",
                     "new_models", "new_ci", "new_hours", "new_total", "create", "revoke",
                     "rotate", "grace", "confirm", "cancel", "dismiss", "filter"):
            getattr(self, name).add_class(f"vkeys-{name.replace('_', '-')}")
        creator = w.VBox([
            w.HBox([self.new_owner, self.new_team, self.new_project, self.new_alias]),
            w.HBox([self.new_month, self.new_models]),
            w.HBox([self.new_ci, self.new_hours, self.new_total]), self.create])

        self.audit = w.HTML()
        self.body = w.VBox([
            toolbar,
            w.HBox(list(self.headers.values())), self.table, self.notice,
            w.HTML("<b>Limits</b>"), editor,
            w.HTML("<b>Key</b>"), w.HBox([self.revoke, self.rotate, self.grace]),
            self.confirm_box, self.secret, self.dismiss,
            w.HTML("<b>New key</b>"), creator,
            w.HTML("<b>Audit trail of the selected scope</b>"), self.audit])
        self.denied = w.HTML()
        self.children = [w.HBox([self.title, self.status]), self.body]

    def _tick(self) -> None:
        self.refresh()

    # -- drawing -------------------------------------------------------------------------
    def refresh(self) -> None:
        """Ask the API again and redraw (the refresh button, the live timer)."""
        self.controller.refresh()
        self.redraw()

    def redraw(self) -> None:
        """Draw the controller's state: table, status, not-admin state, audit."""
        ctl = self.controller
        problem = ctl.problem
        if ctl.not_admin:
            self.denied.value = notice_html(
                "error", f"You are not a jupyter-vkeys admin: {problem.message}",
                problem.advice).replace("vkeys-notice", "vkeys-not-admin vkeys-notice")
            self.children = [w.HBox([self.title]), self.denied]
            self.live.stop()
            return
        if self.children[-1] is not self.body:
            self.children = [w.HBox([self.title, self.status]), self.body]
        rows = ctl.visible(text=self.filter.value, kinds=self.kinds.value or KINDS,
                           sort=self.sort.value, descending=self.descending.value,
                           show_inactive=self.show_inactive.value,
                           show_kernel_keys=self.show_kernel_keys.value)
        if problem is not None:
            self.status.value = notice_html("error", f"cannot read the admin API: "
                                            f"{problem.message}", problem.advice)
        else:
            shown = min(len(rows), MAX_ROWS)
            self.status.value = wrap(
                f"<span style='opacity:.7;font-size:12px;margin-left:12px'>{shown} of "
                f"{len(ctl.rows)} rows shown · refreshed {when(ctl.refreshed_at)}"
                f"{' · live' if self.live.running else ''}</span>", "vkeys-status-line")
        self.table.children = [self._row_widget(row) for row in rows[:MAX_ROWS]]
        if self.selected and ctl.row(self.selected) is None:
            self._select(None)
        self._draw_audit()

    def _row_widget(self, row: Row) -> w.HBox:
        cached = self._row_widgets.get(row.scope)
        if cached is None:
            button = w.Button(layout=w.Layout(width="210px"))
            button.add_class("vkeys-row-select")
            button.on_click(lambda _, scope=row.scope: self._select(scope))
            cached = (button, w.HTML(layout=w.Layout(width="420px")),
                      w.HTML(layout=w.Layout(width="300px")), w.HBox())
            cached[3].children = cached[:3]
            cached[3].add_class("vkeys-row")
            self._row_widgets[row.scope] = cached
        button, bars, state, box = cached
        button.description = f"{row.kind} {row.name}"[:40]
        button.tooltip = row.scope
        button.button_style = "info" if row.scope == self.selected else ""
        bars.value = bars_html(row.bars)
        policy = row.policy
        rates = " · ".join(f"{n} {policy[n]}" for n in ("rpm", "tpm", "max_concurrency")
                           if n in policy)
        models = ", ".join(policy.get("models") or [])
        key_state = ""
        if row.kind == "key":
            expiry = (row.key or {}).get("expires_at")
            key_state = html.escape(row.state) + (f" (expires {html.escape(when(expiry))})"
                                                  if expiry and row.state == "active" else "")
            key_state += " · "
        state.value = wrap(
            f"<span style='font-size:12px'>{key_state}{status_badge(row.status)}"
            f"{' · ' + html.escape(rates) if rates else ''}"
            f"{' · models ' + html.escape(models) if models else ''}</span>",
            f"vkeys-row-state vkeys-row-{row.status}")
        box._dom_classes = tuple(c for c in box._dom_classes if not c.startswith("vkeys-s-"))
        box.add_class(f"vkeys-s-{row.scope.replace(':', '-')}"[:80])
        return box

    def _sort_by(self, name: str) -> None:
        if self.sort.value == name:
            self.descending.value = not self.descending.value
        else:
            self.sort.value = name

    # -- selection and editing ------------------------------------------------------------
    def select(self, scope: str | None) -> None:
        """Select ``scope`` (as a click on its row does)."""
        self._select(scope)

    def _select(self, scope: str | None) -> None:
        self.selected = scope
        row = self.controller.row(scope) if scope else None
        for name, (button, *_rest) in self._row_widgets.items():
            button.button_style = "info" if name == scope else ""
        is_key = row is not None and row.kind == "key"
        self.save.disabled = row is None
        self.revoke.disabled = self.rotate.disabled = not (is_key and row.state == "active")
        self.expires.disabled = not is_key
        # the form first, then the heading: a frontend that sees the heading change sees
        # the selected row's values already in place
        if row is None:
            self._fill(LimitsForm())
            self.editing.value = "<i>select a row to edit its limits</i>"
        else:
            self._fill(self.controller.form_for(row.scope))
            self.editing.value = wrap(f"editing <b>{html.escape(row.scope)}</b> "
                                      f"({html.escape(row.name)})", "vkeys-editing")
        self._draw_audit()

    def _fill(self, form: LimitsForm) -> None:
        for period, (usd_box, soft_box) in self.budget_fields.items():
            usd_box.value, soft_box.value = form.budgets.get(period, ("", ""))
        self.rpm.value, self.tpm.value = form.rpm, form.tpm
        self.concurrency.value, self.models.value = form.max_concurrency, form.models
        self.expires.value = form.expires_at

    def form(self) -> LimitsForm:
        """The editor's current values."""
        return LimitsForm({p: (u.value, s.value) for p, (u, s) in self.budget_fields.items()},
                          self.rpm.value, self.tpm.value, self.concurrency.value,
                          self.models.value, self.expires.value)

    def _save(self) -> None:
        if self.selected:
            notice = self.controller.save_limits(self.selected, self.form())
            self._show(notice)
            self.redraw()
            if notice.level == "ok":  # the editor shows what the gateway saved
                self._select(self.selected)

    # -- key actions ----------------------------------------------------------------------
    def _ask(self, verb: str) -> None:
        if not self.selected or not self.selected.startswith("key:"):
            return
        pending = self.controller.ask(verb, self.selected[4:], self.grace.value)
        self.question.value = wrap(f"<b>{html.escape(pending.question)}</b>",
                                   "vkeys-question")
        self.confirm_box.layout.display = "flex"

    def _confirm(self) -> None:
        self.confirm_box.layout.display = "none"
        outcome = self.controller.confirm()
        if isinstance(outcome, CreatedKey):
            self._show_secret(outcome)
            self._show(self.controller.notice)
        else:
            self._show(outcome)
        self.redraw()
        self._select(self.selected)

    def _cancel(self) -> None:
        self.confirm_box.layout.display = "none"
        self.controller.cancel()
        self._show(self.controller.notice)

    def _create(self) -> None:
        created = self.controller.create_key(
            owner=self.new_owner.value, team=self.new_team.value,
            project=self.new_project.value, alias=self.new_alias.value,
            month_usd=self.new_month.value, models=self.new_models.value,
            ci_hours=self.new_hours.value if self.new_ci.value else None,
            ci_total_usd=self.new_total.value)
        self._show(self.controller.notice)
        if created is not None:
            self._show_secret(created)
            self.redraw()

    def _show_secret(self, created: CreatedKey | None) -> None:
        self.secret.value = "" if created is None else secret_html(created.key_id,
                                                                    created.secret)
        self.dismiss.layout.display = "none" if created is None else "flex"

    def _show(self, notice: Notice | None) -> None:
        self.notice.value = "" if notice is None else notice_html(notice.level, notice.text,
                                                                  notice.advice)

    def _draw_audit(self) -> None:
        if not self.selected:
            self.audit.value = wrap("<i>select a row to see who changed what</i>")
            return
        refused = self.controller.audit_problem
        if refused is not None:
            self.audit.value = notice_html("info", f"no audit trail: {refused.message}")
            return
        rows = self.controller.audit_of(self.selected)
        self.audit.value = table_html(
            ["when", "who", "what", "after"],
            [(when(r.get("ts")), r.get("actor"), r.get("action"), _summary(r.get("after")))
             for r in rows], "vkeys-audit", "no admin action on this scope yet")


def _summary(after: Any) -> str:
    """An audit row's new state in one short line."""
    if not isinstance(after, dict):
        return "removed" if after is None else str(after)[:80]
    policy = after.get("policy", after)
    parts = []
    for b in policy.get("budgets") or []:
        parts.append(f"{b.get('period')} {usd(float(b.get('usd') or 0))}")
    for name in ("rpm", "tpm", "max_concurrency"):
        if name in policy:
            parts.append(f"{name} {policy[name]}")
    if policy.get("models"):
        parts.append("models " + ",".join(policy["models"]))
    if after.get("revoked_at"):
        parts.append("revoked")
    return "; ".join(parts)[:120] or "-"
