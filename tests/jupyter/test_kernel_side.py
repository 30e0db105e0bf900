"""Inside a kernel: the report me() returns and %vkeys shows, and what a kernel is told
when its key is refused or the gateway is down (real gateway on a real port)."""

from __future__ import annotations

import re

import pytest

from jupyter_vkeys.kernel import VKeysError, me, register_magic
from jupyter_vkeys.kernel.report import UsageReport, resets

NOW = 1_795_996_800.0  # 2026-11-30T00:00:00Z


def _report(spent: float, cap: float = 20.0) -> UsageReport:
    return UsageReport({
        "id": "k1", "alias": "kernel 1234abcd a.ipynb", "state": "active",
        "metadata": {"kind": "kernel", "kernel_id": "1234abcd-0000", "notebook_path": "a.ipynb"},
        "limits": [
            {"scope": "key:k1", "policy": {}, "budgets": []},
            {"scope": "key:p1", "policy": {"rpm": 60},
             "budgets": [{"usd": cap, "period": "month", "spent_usd": spent, "held_usd": 0.0,
                          "remaining_usd": max(cap - spent, 0), "resets_at": "2026-12-01T00:00:00Z"},
                         {"usd": 1.0, "period": "day", "spent_usd": 0.25, "held_usd": 0.0,
                          "remaining_usd": 0.75, "resets_at": "2026-11-30T12:00:00Z"}]}]})


def test_html_shows_each_cap_as_a_bar_with_its_reset_and_keeps_money_from_mathjax():
    page = _report(spent=17.0)._repr_html_(now=NOW)
    assert page.startswith("<div class='mathjax_ignore")
    # one bar per budget, as wide as the share spent, orange past 80 %, green below
    bars = re.findall(r"width:([\d.]+)%;height:100%;background:(#\w+)", page)
    assert bars == [("85.0", "#ef6c00"), ("25.0", "#2e7d32")]
    assert "spent $0.2500 (25%), left $0.7500" in page and "$20.00 / month" in page
    assert page.count("resets in") == 2 and "title='2026-12-01 00:00 UTC'" in page
    assert "rpm 60" in page and "a.ipynb" in page
    full = _report(spent=25.0)._repr_html_(now=NOW)
    assert "width:100.0%;height:100%;background:#c62828" in full


def test_text_rendering_elsewhere():
    text = _report(spent=1.5).text(now=NOW)
    assert repr(_report(spent=1.5)).startswith("key k1 (kernel 1234abcd a.ipynb), active")
    assert text.splitlines()[0] == "key k1 (kernel 1234abcd a.ipynb), active"
    assert "month budget $20.00: spent $1.50 (8%), remaining $18.50, resets in" in text
    assert "key:k1: no limits" in text
    assert resets(None) == "never" and resets("2026-11-30T00:00:00Z", now=NOW + 86400) == \
        "now (2026-11-30 00:00 UTC)"


def test_no_key_gateway_down_revoked_and_expired_say_what_to_do(gateway, monkeypatch, capsys):
    monkeypatch.delenv("VKEYS_URL", raising=False)
    with pytest.raises(VKeysError, match="has no jupyter-vkeys key"):
        me()
    parent, _ = gateway.gateway.registry.create({"owner": "amy"}, actor="test")
    child, token = gateway.gateway.registry.create({"parent_id": parent.id}, actor="test")
    monkeypatch.setenv("VKEYS_URL", gateway.url)
    monkeypatch.setenv("OPENAI_API_KEY", token)
    report = me()
    assert report["id"] == child.id and "month" not in repr(report)
    gateway.gateway.registry.revoke(child.id, actor="test")
    with pytest.raises(VKeysError, match=r"was revoked at \S+; in a notebook, restart the "
                                         r"kernel to get a new key"):
        me()
    _, token2 = gateway.gateway.registry.create({"parent_id": parent.id}, actor="test")
    monkeypatch.setenv("OPENAI_API_KEY", token2)
    gateway.gateway.registry.revoke(parent.id, actor="test")
    with pytest.raises(VKeysError, match="ask your jupyter-vkeys admin"):
        me()

    class Shell:  # the one IPython call register_magic makes
        def register_magic_function(self, func, kind, name):
            self.magic = func
    shell = Shell()
    register_magic(shell)
    shell.magic("")
    said = capsys.readouterr().out
    assert said.startswith("jupyter-vkeys: the gateway refused this kernel's key") and \
        "Traceback" not in said
    monkeypatch.setenv("VKEYS_URL", "http://127.0.0.1:9/vkeys")  # nothing listens there
    shell.magic("")
    assert "does not answer" in capsys.readouterr().out
