"""The widgets inside a kernel of a real ``jupyter server`` (as installed): the kernel
has ``VKEYS_API_URL``, ``AdminPanel()`` finds the server's token by itself (no argument),
a cap lowered through it refuses the kernel's own next call, ``MyUsage()`` shows the
kernel's spend by notebook and cell; and, on a server whose admins do not include its
user, the panel shows the "not an admin" state.
"""

from __future__ import annotations

import json
import re

import pytest
from servers import JupyterProcess, result_of

PANEL = r"""
import json, os
from jupyter_vkeys.widgets import AdminPanel, MyUsage
from openai import OpenAI
panel = AdminPanel(interval=60)
ctl = panel.controller
usage = MyUsage(interval=60)
owner = usage.controller.me.get("owner")
first = OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
panel.refresh()
rows = [r.scope for r in ctl.rows]
panel.select(f"user:{owner}")
panel.budget_fields["day"][0].value = "0.000001"
panel.save.click()
try:
    OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    second = "answered"
except Exception as exc:
    second = f"{type(exc).__name__}: {exc}"
usage.refresh()
print("RESULT" + json.dumps({
    "api": os.environ.get("VKEYS_API_URL"), "problem": str(ctl.problem or ""),
    "scheme": ctl.client.scheme, "owner": owner, "rows": rows, "notice": panel.notice.value,
    "second": second, "calls": len(usage.controller.calls),
    "notebooks": usage.notebooks.value, "cells": usage.cells.value,
    "summary": usage.summary.value}))
panel.close(); usage.close()
"""

def test_admin_panel_in_a_kernel_uses_the_servers_token_and_caps_the_kernel(tmp_path):
    with JupyterProcess("server", tmp_path) as server:
        session = server.start_session("work/analysis.ipynb")
        kernel_id = session["kernel"]["id"]
        out = result_of(server.execute(kernel_id, PANEL, timeout=120))
    assert out["api"] == f"{server.base}/vkeys/api", out
    assert out["problem"] == "" and out["scheme"] == "token", out
    assert f"user:{out['owner']}" in out["rows"], out
    assert "saved the limits" in out["notice"], out["notice"]
    assert out["second"].startswith("RateLimitError") and f"user:{out['owner']}" in \
        out["second"], out["second"]
    assert out["calls"] == 2  # the answered call and the refused one
    assert "analysis.ipynb" in out["notebooks"], out["notebooks"]
    assert "analysis.ipynb" in out["cells"], out["cells"]
    assert re.search(r">\[\d+\]<", out["cells"]), out["cells"]  # by execution count
    assert "mathjax_ignore" in out["summary"]
    assert server.token not in json.dumps(out)


@pytest.fixture
def jp_server_config(jp_server_config):
    """The shipped configuration (tests/jupyter/conftest.py), with a gateway admin list
    that leaves this server's own user out (c.VKeysApp.admin_users)."""
    jp_server_config.VKeysApp.admin_users = ["somebody-else"]
    return jp_server_config


def test_a_user_who_is_no_admin_sees_the_not_an_admin_state(vkeys_server, jp_serverapp,
                                                            jp_asyncio_loop):
    """The server authenticates its own token, its authorizer says yes, the gateway says
    this user is no admin: the panel shows that, not a traceback (the controller's
    requests run in a thread: the server answers on this test's loop)."""
    from jupyter_vkeys.widgets import AdminPanel

    url = jp_serverapp.connection_url.rstrip("/") + "/vkeys/api"
    token = jp_serverapp.identity_provider.token
    panel = jp_asyncio_loop.run_until_complete(jp_asyncio_loop.run_in_executor(
        None, lambda: AdminPanel(url=url, token=token, interval=60)))
    try:
        assert panel.controller.not_admin and panel.children[-1] is panel.denied
        text = panel.denied.value
        assert "not a jupyter-vkeys admin" in text and "admin_users" in text, text
        assert "What to do" in text and token not in text
    finally:
        panel.close()
