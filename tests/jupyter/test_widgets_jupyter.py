"""The widgets inside a kernel of a real ``jupyter server`` (as installed): the kernel
has ``VKEYS_API_URL``, ``AdminPanel()`` finds the server's token by itself (no argument),
a cap lowered through it refuses the kernel's own next call, ``MyUsage()`` shows the
kernel's spend by notebook and cell, and a server whose admins do not include its user
shows the "not an admin" state.
"""

from __future__ import annotations

import json
import re

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

NOT_ADMIN = r"""
import json
from jupyter_vkeys.widgets import AdminPanel
panel = AdminPanel(interval=60)
print("RESULT" + json.dumps({"not_admin": panel.controller.not_admin,
                             "shown": panel.children[-1] is panel.denied,
                             "text": panel.denied.value}))
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


def test_a_user_who_is_no_admin_sees_the_not_an_admin_state(tmp_path):
    with JupyterProcess("server", tmp_path, "--VKeysApp.admin_users=['somebody-else']"
                        ) as server:
        kernel_id = server.start_kernel()["id"]
        out = result_of(server.execute(kernel_id, NOT_ADMIN, timeout=120))
    assert out["not_admin"] and out["shown"], out
    assert "not a jupyter-vkeys admin" in out["text"] and "admin_users" in out["text"], out
