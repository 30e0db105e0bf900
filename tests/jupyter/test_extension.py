"""The gateway inside a real Jupyter server, with real kernels using the official SDKs."""

from __future__ import annotations

import json
import os
import textwrap
import warnings
from pathlib import Path

import openai
import pytest

from jupyter_vkeys.server_extension.identity import os_user


KERNEL_CODE = textwrap.dedent("""
    import os, json, openai, anthropic
    reply = openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    import jupyter_vkeys
    me = jupyter_vkeys.me(show=False)
    print("RESULT" + json.dumps({
        "openai_tokens": reply.usage.completion_tokens,
        "anthropic_tokens": message.usage.output_tokens,
        "key": os.environ["OPENAI_API_KEY"],
        "env_has_real_key": any("SECRET" in v for v in os.environ.values()),
        "base_url": os.environ["OPENAI_BASE_URL"],
        "me_project": me["project"], "me_state": me["state"],
    }))
""")


async def run_in_kernel(serverapp, kernel_id: str, code: str) -> dict:
    """Execute ``code`` in a running kernel; return the JSON it printed after RESULT."""
    km = serverapp.kernel_manager.get_kernel(kernel_id)
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))
        reply = await client.execute_interactive(code, output_hook=hook, timeout=120)
        text = "".join(out)
        assert reply["content"]["status"] == "ok", text
        return json.loads(text.split("RESULT", 1)[1])
    finally:
        client.stop_channels()


@pytest.fixture
def started(vkeys_server, monkeypatch):
    assert vkeys_server.gateway.registry is not None, "the gateway did not start"
    return vkeys_server


def test_session_kernel_uses_injected_key_with_attribution(
        started, jp_serverapp, jp_fetch, jp_root_dir, jp_asyncio_loop, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-server-env-SECRET-42")  # a real key in env
    (jp_root_dir / "projects" / "churn").mkdir(parents=True)
    (jp_root_dir / "projects" / "churn" / ".vkeys.toml").write_text('project = "churn"\n')
    gateway = started.gateway

    async def scenario():
        response = await jp_fetch("api", "sessions", method="POST", body=json.dumps({
            "path": "projects/churn/model.ipynb", "type": "notebook",
            "kernel": {"name": "python3"}}))
        session = json.loads(response.body)
        kernel_id = session["kernel"]["id"]
        result = await run_in_kernel(jp_serverapp, kernel_id, KERNEL_CODE)
        me = json.loads((await jp_fetch("api", "me")).body)
        await jp_fetch("api", "sessions", session["id"], method="DELETE")
        return kernel_id, result, me["identity"]["username"]

    kernel_id, result, username = jp_asyncio_loop.run_until_complete(scenario())
    assert result["openai_tokens"] == 5 and result["anthropic_tokens"] == 4
    assert result["key"].startswith("vk-") and not result["env_has_real_key"]
    # Kernels reach the gateway on its loopback lean front, not through the server's port.
    assert started.kernel_front is not None
    assert result["base_url"] == started.broker.url + "/openai/v1"
    assert result["base_url"].startswith("http://127.0.0.1:")
    assert result["base_url"].endswith("/vkeys/openai/v1") and result["me_project"] == "churn"
    assert result["me_state"] == "active"
    events = [e for e in gateway.sink.events if e["status"] == "ok"]
    assert {e["operation"] for e in events} == {"chat.completions", "messages"}
    assert username == os_user(), "a token request is the server's one personal user"
    for event in events:
        assert event["user"] == os_user()
        assert event["project"] == "churn"
        assert event["kernel_id"] == kernel_id
        assert event["notebook_path"] == "projects/churn/model.ipynb"
        assert event["parent_key_id"], "kernel keys are children of the project key"
    # The kernel is gone: its key is refused on the very next request.
    client = openai.OpenAI(api_key=result["key"], base_url=result["base_url"], max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="was revoked"):
        jp_asyncio_loop.run_until_complete(
            jp_asyncio_loop.run_in_executor(None, lambda: client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=1, messages=[{"role": "user", "content": "x"}])))


def test_personal_key_restart_reuses_key_and_api_kernels(
        started, jp_serverapp, jp_fetch, jp_asyncio_loop):
    """POST /api/kernels (no session) also gets a key; a restart keeps it."""
    code = 'import os, json; print("RESULT" + json.dumps({"key": os.environ["OPENAI_API_KEY"]}))'

    async def scenario():
        kernel = json.loads((await jp_fetch("api", "kernels", method="POST",
                                            body=json.dumps({"name": "python3"}))).body)
        first = await run_in_kernel(jp_serverapp, kernel["id"], code)
        await jp_fetch("api", "kernels", kernel["id"], "restart", method="POST", body="")
        second = await run_in_kernel(jp_serverapp, kernel["id"], code)
        await jp_fetch("api", "kernels", kernel["id"], method="DELETE")
        return first["key"], second["key"]

    first, second = jp_asyncio_loop.run_until_complete(scenario())
    assert first == second and first.startswith("vk-")
    registry = started.gateway.registry
    child = registry.get(first.split("_")[0][3:])
    parent = registry.get(child.parent_id)
    assert parent.metadata["kind"] == "user" and child.project == ""
    assert parent.policy == {"budgets": [{"usd": 20.0, "period": "month", "soft": 0.8}]}
    assert parent.owner == os_user()
    assert child.revoked_at is not None


def test_admin_api_uses_jupyter_auth(started, jp_fetch, jp_asyncio_loop):
    from tornado.httpclient import HTTPClientError

    async def scenario():
        created = json.loads((await jp_fetch("vkeys", "api", "keys", method="POST",
                                             body=json.dumps({"owner": "zoe"}))).body)
        listed = json.loads((await jp_fetch("vkeys", "api", "keys")).body)
        with pytest.raises(HTTPClientError) as info:
            await jp_fetch("vkeys", "api", "keys", method="POST", body="{}",
                           headers={"Authorization": "token wrong"})
        return created, listed, info.value.code

    created, listed, denied = jp_asyncio_loop.run_until_complete(scenario())
    assert created["key"].startswith("vk-") and created["owner"] == "zoe"
    assert created["id"] in {k["id"] for k in listed["keys"]}
    assert denied == 403
    audit = started.gateway.store.audit_rows()
    assert audit[-1]["actor"].startswith("jupyter:")


def test_data_plane_accepts_bearer_vkey_without_xsrf(started, jp_fetch, jp_asyncio_loop):
    """A POST with Authorization: Bearer <vkey> is not read as a Jupyter token."""
    _, token = started.gateway.registry.create({"owner": "sdk"}, actor="test")

    async def scenario():
        response = await jp_fetch(
            "vkeys", "openai", "v1", "chat", "completions", method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            body=json.dumps({"model": "gpt-4o-mini", "max_tokens": 2,
                             "messages": [{"role": "user", "content": "x"}]}))
        return json.loads(response.body)

    body = jp_asyncio_loop.run_until_complete(scenario())
    assert body["usage"]["completion_tokens"] == 2


def test_extension_loads_without_auth_warnings(jp_configurable_serverapp, jp_server_config,
                                               jp_asyncio_loop):
    """A server with allow_unauthenticated_access=False loads every route without warnings."""
    config = jp_server_config.copy()
    config["ServerApp"]["allow_unauthenticated_access"] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jp_configurable_serverapp(config=config)
    messages = [str(w.message) for w in caught if "without @allow_unauthenticated" in
                str(w.message)]
    assert not any("/vkeys/" in m for m in messages), messages


def test_marker_file_names_the_project(started, jp_root_dir):
    from jupyter_vkeys.server_extension.kernel_keys import KernelKeyBroker
    broker = KernelKeyBroker(started.gateway, url="http://x/vkeys", root_dir=str(jp_root_dir),
                             projects={"projects/churn": "churn"})
    (jp_root_dir / "research" / "deep").mkdir(parents=True)
    (jp_root_dir / "research" / ".vkeys.toml").write_text('project = "nlp"\n')
    assert broker.project_of("research/deep/x.ipynb") == "nlp"
    assert broker.project_of("projects/churn/a/b.ipynb") == "churn"
    assert broker.project_of("elsewhere/x.ipynb") == ""
    env = broker.launch_env("k-1", {"OPENAI_API_KEY": "sk-real", "MY_TOKEN": "t", "PATH": "/bin",
                                    "JPY_SESSION_NAME": str(jp_root_dir / "research/deep/x.ipynb")},
                            user="amy")
    assert env["OPENAI_API_KEY"].startswith("vk-") and env["PATH"] == "/bin"
    record = started.gateway.registry.get(env["VKEYS_KEY_ID"])
    assert record.project == "nlp" and record.metadata["notebook_path"] == "research/deep/x.ipynb"
    broker.renamed(str(jp_root_dir / "research/deep/x.ipynb"), "research/deep/y.ipynb")
    assert started.gateway.registry.get(env["VKEYS_KEY_ID"]).metadata["notebook_path"] == \
        "research/deep/y.ipynb"
    assert os.environ.get("OPENAI_API_KEY") != env["OPENAI_API_KEY"]


def test_quickstart_notebook_runs_with_nbclient(started, jp_root_dir, jp_asyncio_loop,
                                                monkeypatch):
    """nbclient (as papermill uses it) executes the bundled quickstart notebook; its kernel
    gets a key of the folder's project and every call is attributed to the notebook."""
    import nbformat
    from nbclient import NotebookClient

    folder = jp_root_dir / "reports"
    folder.mkdir()
    (folder / ".vkeys.toml").write_text('project = "reporting"\n')
    path = folder / "quickstart.ipynb"
    nb = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb",
                       as_version=4)
    # nbclient in the server's process picks the extension's default provisioner itself.
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    client = NotebookClient(nb, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(folder)}})
    jp_asyncio_loop.run_until_complete(client.async_execute())
    outputs = [o for cell in nb.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], outputs
    text = "".join(o.get("text", "") for o in outputs)
    assert "output tokens: 8" in text and "output tokens: 6" in text and "vk-" in text
    # me() and %vkeys render as HTML (money kept away from MathJax) and as text.
    html = [o["data"] for o in outputs if "text/html" in o.get("data", {})]
    rich = [d for d in html if "vkeys-report" in d["text/html"]]
    assert len(rich) == 2, outputs
    # the two cells that called a model end with their cost line; the dry run reports
    lines = [d["text/plain"] for d in html if "vkeys-cell-cost" in d["text/html"]]
    assert len(lines) == 2 and all(t.startswith("vkeys · 1 call") for t in lines), lines
    assert any("vkeys-dry-run" in d["text/html"] and "gpt-4o" in d["text/plain"] for d in html)
    for data in rich:
        assert "project:reporting" in data["text/plain"] and "reports/quickstart" in \
            data["text/plain"]
        assert data["text/html"].startswith("<div class='mathjax_ignore")
        assert "project:reporting" in data["text/html"]
    # MyUsage() renders as a widget view (its state lives in the kernel)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in outputs), outputs
    events = [e for e in started.gateway.sink.events if e["status"] == "ok"]
    assert len(events) == 2
    assert all(e["project"] == "reporting" and e["notebook_path"] == "reports/quickstart.ipynb"
               for e in events)


def test_kernel_front_opens_no_admin_route_and_can_be_turned_off(
        started, jp_serverapp, jp_asyncio_loop):
    import urllib.error
    import urllib.request

    def status(url: str) -> int:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    async def scenario():
        loop = jp_asyncio_loop
        base = started.broker.url
        health = await loop.run_in_executor(None, status, base + "/api/health")
        keys = await loop.run_in_executor(None, status, base + "/api/keys")
        started.kernel_port = -1  # off: kernels would use the server's own routes
        fallback = await started._kernel_url(jp_serverapp)
        return health, keys, fallback

    health, keys, fallback = jp_asyncio_loop.run_until_complete(scenario())
    assert health == 200
    assert keys == 404  # the admin API lives only behind Jupyter's authentication
    assert fallback == jp_serverapp.connection_url.rstrip("/") + "/vkeys"
