"""The widgets' controllers against ``jupyter vkeys serve`` on a real port: every action
taken through :class:`AdminController` changes what the data plane enforces on the
next call, made with the official SDKs (lower a cap: 429; revoke: 401; narrow an
allowlist: 403; rotate: the old secret stops), refusals say what to do and change
nothing, and :class:`UsageController` sees the caller's own spend and calls only.
"""

from __future__ import annotations

import time

import anthropic
import openai
import pytest
from support import ServeProcess

from jupyter_vkeys.widgets import AdminController, UsageController
from jupyter_vkeys.widgets.credentials import (
    Credentials,
    CredentialsError,
    notebook_credentials,
    server_token,
)
from jupyter_vkeys.widgets.usage_controller import by_cell, by_day, by_notebook


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("widgets-serve")
    process = ServeProcess(root / "data", {"fake_mode": "always"})
    yield process
    process.stop()


@pytest.fixture
def admin(served) -> AdminController:
    controller = AdminController(url=served.url + "/api", token=served.admin_token)
    assert controller.refresh(), controller.problem
    return controller


def chat(served, secret: str, model: str = "gpt-4o-mini", max_tokens: int = 8):
    client = openai.OpenAI(api_key=secret, base_url=served.url + "/openai/v1", max_retries=0)
    return client.chat.completions.create(model=model, max_tokens=max_tokens,
                                          messages=[{"role": "user", "content": "hello"}])


def test_a_lowered_user_cap_refuses_that_users_next_call(served, admin):
    created = admin.create_key(owner="carol", team="ml", month_usd="5")
    assert created is not None and created.secret.startswith("vk-"), admin.notice
    chat(served, created.secret)  # under the cap: answered

    form = admin.form_for("user:carol")
    form.budgets["day"] = ("0.000001", "")
    notice = admin.save_limits("user:carol", form)
    assert notice.level == "ok", notice
    row = admin.row("user:carol")
    assert [(b.period, b.cap_usd) for b in row.bars] == [("day", 0.000001)]

    with pytest.raises(openai.RateLimitError) as refused:
        chat(served, created.secret)
    assert refused.value.status_code == 429
    message = str(refused.value)
    assert "user:carol" in message and "day" in message and "resets" in message, message
    assert refused.value.response.headers.get("x-should-retry") == "false"
    # the audit trail of the scope names who did it
    assert admin.audit_of("user:carol")[0]["action"] == "policy.set"


def test_revoke_needs_confirmation_then_the_key_gets_401(served, admin):
    created = admin.create_key(owner="dave")
    chat(served, created.secret)
    pending = admin.ask("revoke", created.key_id)
    assert "401" in pending.question and created.key_id in pending.question
    chat(served, created.secret)  # asked, not confirmed: still works
    admin.cancel()
    assert admin.pending is None and admin.notice.level == "info"
    chat(served, created.secret)  # cancelled: still works

    admin.ask("revoke", created.key_id)
    outcome = admin.confirm()
    assert outcome.level == "ok", outcome
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(served, created.secret)
    assert refused.value.status_code == 401 and "revoked" in str(refused.value)
    assert admin.row(f"key:{created.key_id}").state == "revoked"
    assert admin.confirm().level == "error"  # nothing pending any more


def test_a_narrowed_allowlist_refuses_the_model_with_403(served, admin):
    created = admin.create_key(owner="erin")
    chat(served, created.secret, "gpt-4o-mini")
    scope = f"key:{created.key_id}"
    form = admin.form_for(scope)
    form.models = "claude-*"
    assert admin.save_limits(scope, form).level == "ok", admin.notice

    with pytest.raises(openai.PermissionDeniedError) as refused:
        chat(served, created.secret, "gpt-4o-mini")
    assert refused.value.status_code == 403 and "gpt-4o-mini" in str(refused.value)
    reply = anthropic.Anthropic(api_key=created.secret, base_url=served.url + "/anthropic",
                                max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert reply.content


def test_rotation_with_grace_keeps_the_old_secret_then_without_it_stops(served, admin):
    created = admin.create_key(owner="frank")
    admin.ask("rotate", created.key_id, grace_seconds=300)
    rotated = admin.confirm()
    assert rotated.secret != created.secret
    chat(served, created.secret)  # in its grace period
    chat(served, rotated.secret)

    admin.ask("rotate", created.key_id, grace_seconds=0)
    again = admin.confirm()
    with pytest.raises(openai.AuthenticationError):
        chat(served, rotated.secret)
    chat(served, again.secret)


def test_a_short_lived_ci_key_has_a_total_budget_and_an_expiry(served, admin):
    created = admin.create_key(owner="ci-bot", project="nightly", ci_hours=2,
                               ci_total_usd="0.00002")
    assert created is not None, admin.notice
    record = created.record
    assert abs(record["expires_at"] - (time.time() + 7200)) < 120
    assert record["metadata"] == {"kind": "ci"}
    assert record["policy"]["budgets"] == [{"usd": 0.00002, "period": "total"}]
    with pytest.raises(openai.RateLimitError) as refused:  # a worst case above the total
        chat(served, created.secret, max_tokens=2000)
    assert "total" in str(refused.value)
    assert admin.create_key(owner="ci-bot", ci_hours=2, ci_total_usd="") is None
    assert "total budget" in admin.notice.text


def test_refusals_say_what_to_do_and_change_nothing(served, admin):
    created = admin.create_key(owner="gina", month_usd="5")
    scope = f"key:{created.key_id}"
    audit_before = len(admin.audit_rows)

    form = admin.form_for(scope)
    form.rpm = "sixty"
    notice = admin.save_limits(scope, form)
    assert notice.level == "error" and "rpm" in notice.text and "nothing was sent" in \
        notice.advice

    form = admin.form_for(scope)
    form.budgets["month"] = ("5", "2")  # soft must be in (0, 1]: the gateway says so
    notice = admin.save_limits(scope, form)
    assert notice.level == "error" and notice.status == 400 and "soft" in notice.text, notice
    assert "nothing was changed" in notice.advice
    admin.refresh()
    assert len(admin.audit_rows) == audit_before
    assert admin.row(scope).policy == {"budgets": [{"usd": 5.0, "period": "month"}]}

    assert admin.create_key(owner="has space") is None
    assert admin.notice.status == 400 and "owner" in admin.notice.text


def test_rows_show_warned_and_exhausted_windows_filter_and_sort(served, admin):
    spender = admin.create_key(owner="hank", team="vision")
    form = admin.form_for("user:hank")
    form.budgets["month"] = ("0.00004", "2%")
    assert admin.save_limits("user:hank", form).level == "ok"
    chat(served, spender.secret, max_tokens=2)
    admin.refresh()
    assert admin.row("user:hank").status == "warned", admin.row("user:hank")
    form.budgets["month"] = ("0.0000001", "")
    admin.save_limits("user:hank", form)
    assert admin.row("user:hank").status == "exhausted"

    users = admin.visible(kinds=["user"], text="hank")
    assert [r.scope for r in users] == ["user:hank"]
    by_share = admin.visible(kinds=["user"], sort="share", descending=True)
    assert by_share[0].scope == "user:hank"
    assert any(r.scope == "team:vision" for r in admin.visible(kinds=["team"]))
    keys = admin.visible(kinds=["key"])
    assert all(r.state == "active" for r in keys)
    assert any(r.state == "revoked" for r in admin.visible(kinds=["key"], show_inactive=True))


def test_a_wrong_token_or_no_gateway_is_a_problem_with_advice(served, tmp_path):
    wrong = AdminController(url=served.url + "/api", token="not-the-token")
    assert not wrong.refresh()
    assert wrong.problem.status == 401 and "token" in wrong.problem.advice
    assert not wrong.not_admin
    gone = AdminController(url="http://127.0.0.1:9/vkeys/api", token="x", timeout=2)
    assert not gone.refresh() and gone.problem.status == 0
    assert "does not answer" in gone.problem.advice
    none = AdminController(credentials=lambda: notebook_credentials({}))
    assert not none.refresh() and "VKEYS_API_URL" in none.problem.message
    assert none.save_limits("user:x", none.form_for("user:x")).level == "error"


def test_credentials_come_from_the_hub_token_or_the_matching_server():
    hub = notebook_credentials({"VKEYS_API_URL": "http://hub:8081/services/vkeys/api",
                                "JUPYTERHUB_API_TOKEN": "hub-token"})
    assert hub == Credentials("http://hub:8081/services/vkeys/api", "hub-token", "jupyterhub")
    assert "hub-token" not in repr(hub)
    servers = [{"port": 8888, "base_url": "/", "token": "other"},
               {"port": 9999, "base_url": "/user/x/", "token": "mine"}]
    assert server_token("http://127.0.0.1:9999/user/x/vkeys/api", servers) == "mine"
    with pytest.raises(CredentialsError, match="no running Jupyter server"):
        server_token("http://127.0.0.1:7777/vkeys/api", servers)
    with pytest.raises(CredentialsError, match="no token"):
        server_token("http://127.0.0.1:8888/vkeys/api", [{"port": 8888, "base_url": "/"}])


def test_usage_controller_sees_the_callers_spend_and_calls_only(served, admin):
    mine = admin.create_key(owner="ivy", month_usd="3")
    other = admin.create_key(owner="jack")
    for _ in range(2):
        chat(served, mine.secret)
    chat(served, other.secret)
    usage = UsageController(url=served.url, key=mine.secret, admin=None)
    assert usage.refresh(), usage.problem
    assert usage.me["id"] == mine.key_id
    assert len(usage.calls) == 2 and {c["key_id"] for c in usage.calls} == {mine.key_id}
    assert "prompt_text" not in usage.calls[0] and "prompt_hash" not in usage.calls[0]
    spent = sum(c["cost_usd"] for c in usage.calls)
    window = next(w for w in usage.windows if w.scope == f"key:{mine.key_id}")
    assert window.bar.period == "month" and abs(window.bar.spent_usd - spent) < 1e-9
    assert abs(usage.remaining_usd() - (3 - spent)) < 1e-9
    assert [k["id"] for k in usage.keys] == [mine.key_id]
    notebooks = by_notebook(usage.calls)
    assert notebooks[0]["calls"] == 2 and notebooks[0]["notebook"] == "(no notebook)"
    assert by_cell(usage.calls) == []  # not made inside a notebook cell
    assert sum(d["calls"] for d in by_day(usage.calls)) == 2

    # the admin view of the same key shows the same spend
    admin.refresh()
    bar = admin.row(f"key:{mine.key_id}").bars[0]
    assert abs(bar.spent_usd - spent) < 1e-9

    nobody = UsageController(url=served.url, key="", admin=None)
    assert not nobody.refresh() and "no jupyter-vkeys key" in nobody.problem.message
    revoked = UsageController(url=served.url, key=mine.secret, admin=None)
    admin.ask("revoke", mine.key_id)
    admin.confirm()
    assert not revoked.refresh() and revoked.problem.status == 401


def test_cell_and_day_aggregates():
    calls = [{"notebook_path": "a.ipynb", "execution_count": 3, "cost_usd": 0.5,
              "input_tokens": 10, "output_tokens": 5, "start_time": 86400 * 2 + 5},
             {"notebook_path": "a.ipynb", "execution_count": 3, "cost_usd": 0.25,
              "input_tokens": 1, "output_tokens": 1, "start_time": 86400 * 2 + 50},
             {"notebook_path": "b.ipynb", "cell_id": "abc", "execution_count": None,
              "cost_usd": None, "start_time": 86400 * 3}]
    assert by_notebook(calls)[0] == {"notebook": "a.ipynb", "calls": 2, "tokens": 17,
                                     "cost_usd": 0.75}
    assert by_cell(calls) == [{"notebook": "a.ipynb", "cell": "[3]", "calls": 2,
                               "cost_usd": 0.75},
                              {"notebook": "b.ipynb", "cell": "abc", "calls": 1,
                               "cost_usd": 0.0}]
    assert by_day(calls) == [{"day": "1970-01-03", "calls": 2, "cost_usd": 0.75},
                             {"day": "1970-01-04", "calls": 1, "cost_usd": 0.0}]


def test_me_calls_refuses_bad_queries_and_other_credentials(served, admin):
    import json
    import urllib.error
    import urllib.request

    created = admin.create_key(owner="rita")

    def get(query: str, token: str) -> tuple[int, dict]:
        request = urllib.request.Request(served.url + "/api/me/calls" + query,
                                         headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = get("?limit=0", created.secret)
    assert status == 400 and "limit must be an integer from 1 to 1000" in \
        body["error"]["message"]
    status, body = get("?owner=someone", created.secret)
    assert status == 400 and "unknown query parameters" in body["error"]["message"]
    status, body = get("", served.admin_token)  # the admin token is no virtual key
    assert status == 401
    status, body = get("?limit=5", created.secret)
    assert status == 200 and body["owner"] == "rita" and body["calls"] == []
