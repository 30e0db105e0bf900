"""The AdminPanel and MyUsage views without a browser: their widget state, and clicks
through ipywidgets' own API (``button.click()``), against ``jupyter vkeys serve`` on a
real port. Each click goes through the controller to the admin API, and what the data
plane then does is checked with the official SDK.
"""

from __future__ import annotations

import time

import openai
import pytest
from support import ServeProcess

from jupyter_vkeys.widgets import AdminController, AdminPanel, MyUsage


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    process = ServeProcess(tmp_path_factory.mktemp("widgets-views") / "data",
                           {"fake_mode": "always"})
    yield process
    process.stop()


@pytest.fixture
def panel(served):
    view = AdminPanel(url=served.url + "/api", token=served.admin_token, interval=0.2)
    yield view
    view.close()


def chat(served, secret: str, max_tokens: int = 8):
    return openai.OpenAI(api_key=secret, base_url=served.url + "/openai/v1",
                         max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=max_tokens,
        messages=[{"role": "user", "content": "hello"}])


def row_button(panel: AdminPanel, scope: str):
    for box in panel.table.children:
        if box.children[0].tooltip == scope:
            return box.children[0]
    raise AssertionError(f"no row {scope}: {[b.children[0].tooltip for b in panel.table.children]}")


def create(panel: AdminPanel, owner: str, month: str = "") -> tuple[str, str]:
    panel.new_owner.value, panel.new_month.value = owner, month
    panel.create.click()
    assert "vkeys-notice-ok" in panel.notice.value, panel.notice.value
    html = panel.secret.value
    secret = html.split("data-secret='")[1].split("'")[0]
    key_id = secret[3:].split("_")[0]
    assert "shown once" in html and "vkeys-copy" in html and "mathjax_ignore" in html
    return key_id, secret


def test_create_shows_the_secret_once_and_the_row_appears(panel, served):
    key_id, secret = create(panel, "kim", "4")
    chat(served, secret)
    assert panel.dismiss.layout.display == "flex"
    panel.dismiss.click()
    assert panel.secret.value == "" and secret not in repr(panel.controller.__dict__)
    panel.refresh()
    row_button(panel, "user:kim")
    button = row_button(panel, f"key:{key_id}")
    box = next(b for b in panel.table.children if b.children[0] is button)
    assert "$4.00" in box.children[1].value and "vkeys-bar" in box.children[1].value
    assert "mathjax_ignore" in box.children[1].value


def test_clicking_a_row_then_save_lowers_the_cap_and_the_next_call_is_refused(panel, served):
    _, secret = create(panel, "liam")
    chat(served, secret)
    panel.refresh()
    row_button(panel, "user:liam").click()
    assert panel.selected == "user:liam" and not panel.save.disabled
    assert panel.revoke.disabled and panel.expires.disabled  # not a key
    assert row_button(panel, "user:liam").button_style == "info"
    usd_box, soft_box = panel.budget_fields["day"]
    usd_box.value, soft_box.value = "0.000001", "80%"
    panel.rpm.value = "30"
    panel.save.click()
    assert "vkeys-notice-ok" in panel.notice.value, panel.notice.value
    with pytest.raises(openai.RateLimitError, match="user:liam"):
        chat(served, secret)
    # the editor and the audit trail show what was saved
    assert panel.budget_fields["day"][0].value == "0.000001"
    assert panel.budget_fields["day"][1].value == "80%" and panel.rpm.value == "30"
    assert "policy.set" in panel.audit.value and "admin-token" in panel.audit.value


def test_revoke_asks_first_and_cancel_changes_nothing(panel, served):
    key_id, secret = create(panel, "mia")
    panel.refresh()
    row_button(panel, f"key:{key_id}").click()
    assert not panel.revoke.disabled and not panel.expires.disabled
    panel.revoke.click()
    assert panel.confirm_box.layout.display == "flex" and "401" in panel.question.value
    panel.cancel.click()
    assert panel.confirm_box.layout.display == "none"
    assert "nothing was changed" in panel.notice.value
    chat(served, secret)

    panel.revoke.click()
    panel.confirm.click()
    assert "revoked key" in panel.notice.value
    with pytest.raises(openai.AuthenticationError):
        chat(served, secret)
    assert panel.revoke.disabled  # revoked keys do not revoke or rotate again
    panel.show_inactive.value = True
    assert "revoked" in next(b for b in panel.table.children
                             if b.children[0].tooltip == f"key:{key_id}").children[2].value


def test_rotate_with_grace_shows_the_new_secret(panel, served):
    key_id, old = create(panel, "noah")
    panel.refresh()
    row_button(panel, f"key:{key_id}").click()
    panel.grace.value = 0
    panel.rotate.click()
    assert "stops working at once" in panel.question.value
    panel.confirm.click()
    new = panel.secret.value.split("data-secret='")[1].split("'")[0]
    assert new != old
    with pytest.raises(openai.AuthenticationError):
        chat(served, old)
    chat(served, new)


def test_filter_sort_and_errors_shown_in_the_panel(panel, served):
    create(panel, "olga")
    create(panel, "oscar")
    panel.filter.value = "ol"
    scopes = [b.children[0].tooltip for b in panel.table.children]
    assert "user:olga" in scopes and "user:oscar" not in scopes
    panel.filter.value = ""
    panel.kinds.value = ("user",)
    scopes = [b.children[0].tooltip for b in panel.table.children]
    assert scopes == sorted(scopes) and all(s.startswith("user:") for s in scopes)
    panel.headers["scope"].click()  # same column again: descending
    assert [b.children[0].tooltip for b in panel.table.children] == sorted(scopes,
                                                                           reverse=True)
    row_button(panel, "user:olga").click()
    panel.tpm.value = "lots"
    panel.save.click()
    assert "vkeys-notice-error" in panel.notice.value and "tpm" in panel.notice.value
    assert "What to do" in panel.notice.value
    panel.new_owner.value = "bad name"
    panel.create.click()
    assert "vkeys-notice-error" in panel.notice.value and "owner" in panel.notice.value


def test_a_non_admin_sees_a_clear_state_not_a_traceback(served):
    view = AdminPanel(url=served.url + "/api", token="wrong")
    try:
        assert "401" not in view.status.value or "What to do" in view.status.value
        assert "cannot read the admin API" in view.status.value
    finally:
        view.close()

    class NotAdmin(AdminController):  # what a Jupyter server answers a non-admin user
        def refresh(self) -> bool:
            from jupyter_vkeys.widgets.client import ApiProblem
            self.problem = ApiProblem(403, "user 'x' is not a jupyter-vkeys admin "
                                           "(c.VKeysApp.admin_users)", "permission_error")
            self.not_admin = True
            return False

    view = AdminPanel(controller=NotAdmin(url=served.url + "/api", token="t"))
    try:
        assert view.children[-1] is view.denied
        assert "not a jupyter-vkeys admin" in view.denied.value
        assert "admin_users" in view.denied.value and "vkeys-not-admin" in view.denied.value
    finally:
        view.close()


def test_live_refresh_redraws_while_displayed_and_stops_on_close(panel, served):
    panel._repr_mimebundle_()
    assert panel.live.running
    _, secret = create(panel, "pia", "1")
    before = panel.controller.refreshed_at
    chat(served, secret)
    deadline = time.time() + 10
    while time.time() < deadline and panel.controller.refreshed_at == before:
        time.sleep(0.05)
    assert panel.controller.refreshed_at != before
    panel.live_box.value = False
    assert not panel.live.running
    panel.live_box.value = True
    panel.live.stop()
    panel._view_count = 1  # what the frontend reports when it renders a view
    assert panel.live.running and not panel.live._stop.is_set()
    panel._view_count = 0  # the last view is gone (output cleared, notebook closed)
    assert panel.live._stop.is_set()
    panel.close()
    assert panel.live._stop.is_set()


def test_my_usage_shows_limits_spend_recent_calls_and_a_chart(served):
    controller = AdminController(url=served.url + "/api", token=served.admin_token)
    created = controller.create_key(owner="quinn", month_usd="2")
    controller.ask("rotate", created.key_id)  # harmless: shows the views use the new one
    secret = controller.confirm().secret
    chat(served, secret)
    chat(served, secret)
    view = MyUsage(url=served.url, key=secret, interval=0.2)
    try:
        assert "quinn" in view.summary.value and "left" in view.summary.value
        assert "mathjax_ignore" in view.summary.value and "$2.00" in view.windows.value
        assert "vkeys-bar" in view.windows.value and "resets in" in view.windows.value
        assert view.recent.value.count("gpt-4o-mini") == 2
        assert "(no notebook)" in view.notebooks.value
        assert created.key_id in view.key_table.value
        chart = view.chart.outputs[0]["data"]
        assert "application/vnd.vegalite.v5+json" in chart or any(
            "vegalite" in k for k in chart), list(chart)
        spec = next(v for k, v in chart.items() if "vegalite" in k)
        assert spec["title"]["text"] == "Your spend per day"
        assert spec["encoding"]["y"]["title"] == "spend (USD)"
        assert {t["title"] for t in spec["encoding"]["tooltip"]} == {"day", "spend (USD)",
                                                                     "calls"}
    finally:
        view.close()
    broken = MyUsage(url=served.url, key="")
    assert "no jupyter-vkeys key" in broken.status.value and "What to do" in broken.status.value
