"""The Hub service's own routes, beside the gateway's data plane and admin API.

Under ``{prefix}/api/hub/`` (JSON; a Hub API token or the Hub's OAuth cookie;
``custom:vkeys:use``), called by single-user servers' provisioners and by kernels:

- ``POST /kernels`` ``{"kernel_id", "server_name", "notebook_path"}``: the key of one of
  the caller's kernels and the environment values it needs (shown to its own server only);
- ``DELETE /kernels/{key_id}``: that kernel stopped (its key is revoked);
- ``DELETE /kernels?server_name=<s>``: the caller's server stops (all its kernel keys);
- ``GET /me``: the caller's identity, admin reach, personal key and kernel keys, each with
  limits and spend.

``{prefix}/`` is a small page for browsers (Hub OAuth login), and
``{prefix}/oauth_callback`` completes that login.
"""

from __future__ import annotations

import html
from typing import Any, Callable

import tornado.web
from jupyterhub.services.auth import HubOAuthCallbackHandler

from ..gateway.admin import AdminError, AdminMixin
from ..registry import InvalidKeyRequest
from .auth import HubAuthBase
from .issuer import KernelKeyIssuer
from .scopes import HubCaller


class HubRouteMixin(AdminMixin):
    """JSON plumbing of the service's routes; :meth:`run_user` instead of admin checks."""

    issuer: KernelKeyIssuer

    def run_user(self, action: Callable[[HubCaller], Any], status: int = 200) -> None:
        """Run ``action(caller)`` for a Hub user allowed to use the gateway; errors as JSON."""
        try:
            caller = self.hub_user()
            if self.gateway.registry is None:
                raise AdminError(503, "the gateway is starting; retry in a moment",
                                 "unavailable")
            self.reply(action(caller), status)
        except AdminError as exc:
            self.fail(exc.status, exc.message, exc.kind)
        except KeyError as exc:
            self.fail(404, f"no kernel key {str(exc.args[0])[:80]!r} of yours",
                      "not_found_error")
        except (InvalidKeyRequest, ValueError) as exc:
            self.fail(400, str(exc), "invalid_request_error")


class KernelKeysHandler(HubRouteMixin, HubAuthBase):
    """``POST /api/hub/kernels`` (mint) and ``DELETE /api/hub/kernels`` (a server stops)."""

    query_params = ("server_name",)

    def post(self) -> None:
        self.run_user(lambda caller: self.issuer.kernel_key(caller, self.json_body()), 201)

    def delete(self) -> None:
        def action(caller: HubCaller) -> dict[str, Any]:
            server = self.query("server_name") or ""
            return {"revoked": self.issuer.revoke_server(caller.name, server,
                                                         actor=f"hub:{caller.name}")}
        self.run_user(action)


class KernelKeyHandler(HubRouteMixin, HubAuthBase):
    """``DELETE /api/hub/kernels/{key_id}``: one of the caller's kernels stopped."""

    def delete(self, key_id: str) -> None:
        self.run_user(lambda caller: self.issuer.revoke_kernel(caller, key_id))


class HubMeHandler(HubRouteMixin, HubAuthBase):
    """``GET /api/hub/me``: what the caller is to the gateway, and their own spend."""

    def get(self) -> None:
        self.run_user(self.me)

    def me(self, caller: HubCaller) -> dict[str, Any]:
        """Called by ``GET /api/hub/me`` and the home page."""
        control = self.gateway.control
        now = self.gateway.clock()
        mine = [r for r in self.gateway.registry.records.values()
                if r.owner == caller.name and r.metadata.get("hub")]
        personal = [control.key_report(r) for r in mine if r.metadata.get("kind") == "user"]
        kernels = [control.key_report(r) for r in mine
                   if r.metadata.get("kind") == "kernel" and r.state(now) == "active"]
        return {"name": caller.name, "groups": sorted(caller.groups),
                "admin": "all" if caller.admin_of_all else sorted(caller.admin_groups),
                "team": self.issuer.team_of(caller.groups),
                "personal_keys": personal, "kernel_keys": kernels,
                "data_plane_url": self.issuer.data_plane_url}


class HomeHandler(HubMeHandler):
    """``GET {prefix}/``: the signed-in user's caps and spend, for a browser."""

    def get_login_url(self) -> str:
        """A browser goes through the Hub's login and OAuth (the JSON routes answer 403)."""
        return HubAuthBase.get_login_url(self)

    @tornado.web.authenticated
    def get(self) -> None:
        try:
            me = self.me(self.hub_user())
        except AdminError as exc:
            self.set_status(exc.status)
            self.finish(f"<p>{html.escape(exc.message)}</p>")
            return
        self.set_header("content-type", "text/html; charset=utf-8")
        self.finish(home_page(me))


PAGE_STYLE = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
              "table{border-collapse:collapse;margin-top:1em}"
              "th,td{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}"
              "td.usd{text-align:right;font-variant-numeric:tabular-nums}"
              ".warned{color:#b26a00}.exhausted{color:#b00020;font-weight:600}"
              "code{background:#f4f4f4;padding:1px 4px}")


def home_page(me: dict[str, Any]) -> str:
    """The signed-in user's page: who they are, and each cap of their personal key's path
    with spend, what is left and when it resets. Called by :class:`HomeHandler`."""
    rows = []
    for key in me["personal_keys"]:
        for scope in key.get("limits", []):
            for budget in scope.get("budgets", []):
                left = budget.get("remaining_usd", 0)
                state = "exhausted" if left <= 0 else "warned" if budget.get("warned") else ""
                rows.append(
                    f"<tr class='{state}'><td>{html.escape(scope['scope'])}</td>"
                    f"<td>{html.escape(str(budget.get('period')))}</td>"
                    f"<td class='usd'>{_usd(budget.get('spent_usd', 0))}</td>"
                    f"<td class='usd'>{_usd(budget.get('usd', 0))}</td>"
                    f"<td class='usd'>{_usd(left)}</td>"
                    f"<td>{html.escape(str(budget.get('resets_at') or ''))}</td></tr>")
    table = ("<table class='mathjax_ignore'><tr><th>cap on</th><th>period</th><th>spent</th>"
             "<th>cap</th><th>left</th><th>resets at</th></tr>" + "".join(rows) + "</table>"
             if rows else "<p>No key yet: start a kernel and it gets one.</p>")
    admin = me["admin"]
    role = ("You administer everyone." if admin == "all" else
            f"You administer group(s) {html.escape(', '.join(admin))}." if admin else "")
    kernels = len(me["kernel_keys"])
    return (f"<!doctype html><meta charset='utf-8'><title>jupyter-vkeys</title>"
            f"<style>{PAGE_STYLE}</style><h1>jupyter-vkeys</h1>"
            f"<p class='mathjax_ignore'>Signed in as <b>{html.escape(me['name'])}</b> (team "
            f"{html.escape(me['team'] or 'none')}). {role} {kernels} running kernel(s) hold "
            f"a key; they call <code>{html.escape(me['data_plane_url'])}</code>.</p>{table}")


class OAuthCallbackHandler(HubOAuthCallbackHandler):
    """JupyterHub's OAuth callback, with the service's one ``HubOAuth``."""

    @property
    def hub_auth(self):
        return self.settings["vkeys_hub_auth"]


def _usd(value: Any) -> str:
    """Dollars for the home page: cents, or four decimals below a dollar."""
    amount = float(value or 0)
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.4f}"


def hub_handlers(prefix: str, gateway: Any, issuer: KernelKeyIssuer) -> list[tuple]:
    """The service's own routes under ``prefix`` (the service prefix, no trailing slash)."""
    init = {"gateway": gateway, "issuer": issuer}
    api = prefix + "/api/hub"
    return [
        (api + r"/kernels", KernelKeysHandler, init),
        (api + r"/kernels/([^/]+)", KernelKeyHandler, init),
        (api + r"/me", HubMeHandler, init),
        (prefix + r"/oauth_callback", OAuthCallbackHandler),
        (prefix + r"/?", HomeHandler, init),
    ]
