"""/metrics and /api/ready inside a real `jupyter server`: metrics only to a gateway admin
(Jupyter's own authentication) unless c.VKeysGateway.metrics_public, never on the
kernels' loopback front; a kernel's calls are counted and logged."""

from __future__ import annotations

import urllib.error
import urllib.request

from servers import JupyterProcess, isolated_env


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_admin_only_in_jupyter_and_never_on_the_kernel_front(tmp_path):
    with JupyterProcess("server", tmp_path / "a", env=isolated_env(tmp_path / "a")) as server:
        kernel = server.start_session("nb.ipynb")["kernel"]["id"]
        out = server.execute(kernel, (
            "import os, openai\n"
            "c = openai.OpenAI()\n"
            "c.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', "
            "'content': 'hi'}])\n"
            "print(os.environ['OPENAI_API_KEY'], os.environ['OPENAI_BASE_URL'])"))
        vkey, kernel_base = out["text"].split()
        metrics = server.base + "/vkeys/metrics"
        assert fetch(metrics)[0] in (401, 403)
        assert fetch(metrics, {"Authorization": f"Bearer {vkey}"})[0] in (401, 403)
        status, text = fetch(metrics, {"Authorization": f"token {server.token}"})
        assert status == 200 and 'vkeys_calls_total{' in text and 'status="ok"' in text
        assert vkey not in text
        front = kernel_base.split("/vkeys/")[0]
        assert fetch(front + "/vkeys/metrics")[0] == 404  # the kernels' loopback front
        assert fetch(front + "/vkeys/metrics", {"Authorization": f"Bearer {vkey}"})[0] == 404
        assert fetch(server.base + "/vkeys/api/ready")[0] == 200
        log = server.log()
    assert "POST /vkeys/openai/v1/chat/completions 200" in log  # the kernel's call, logged
    assert vkey not in log
    root = tmp_path / "b"
    with JupyterProcess("server", root, "--VKeysGateway.metrics_public=True",
                        env=isolated_env(root)) as server:
        status, text = fetch(server.base + "/vkeys/metrics")
        assert status == 200 and "vkeys_in_flight_calls" in text
