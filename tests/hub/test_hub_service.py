"""JupyterHub service mode, end to end (issue 13): a real ``jupyterhub`` with
configurable-http-proxy, SimpleLocalProcessSpawner and the vkeys service configured by
the README's snippet (``examples/jupyterhub/jupyterhub_config.py``), single-user servers
for alice (data-science), bob (students), carol (llm-admins: admin of everyone) and dana
(admin of the students group only).

The real provider key lives in one file readable by the service only; the upstream is
the project's fake provider on a real port, which answers 401 unless it is sent that key,
so every successful call shows the service used it. Kernels are started through each
user's server and run the official SDKs; what users try runs in their own kernels, with
the Hub token their kernels inherit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "jupyter")]

from hubs import CHP, DRIVER_TOKEN, HubProcess, request, start_hub  # noqa: E402
from servers import CHROMIUM, CHROMIUM_ARGS, result_of, start_idle_session  # noqa: E402
from support import FakeUpstream  # noqa: E402

REAL_KEY = "sk-REAL-hub-7c1e5a9b3d2f4e6a8c0b"
USERS = {"alice": ["data-science"], "bob": ["students"], "carol": ["llm-admins"],
         "dana": ["staff"]}

pytestmark = [pytest.mark.hub, pytest.mark.timeout(900),
              pytest.mark.skipif(CHP is None, reason="needs configurable-http-proxy "
                                 "(npm install -g configurable-http-proxy; .ci/run does)")]

CALLS = """
import json, os, openai, anthropic
o = openai.OpenAI(max_retries=0)
r1 = o.chat.completions.create(model="gpt-4o-mini", max_tokens=8,
                               messages=[{"role": "user", "content": "hello from a hub"}])
a = anthropic.Anthropic(max_retries=0)
r2 = a.messages.create(model="claude-sonnet-4-5", max_tokens=8,
                       messages=[{"role": "user", "content": "hello from a hub"}])
print("RESULT" + json.dumps({"openai": r1.choices[0].message.content,
                             "anthropic": r2.content[0].text, "env": dict(os.environ)}))
"""

# Run in a user's kernel: the same HTTP calls any code there can make, with the Hub token
# the kernel inherits (JUPYTERHUB_API_TOKEN) or the kernel's own virtual key.
HTTP = """
import json, os, urllib.request, urllib.error
API = os.environ["VKEYS_API_URL"]
def call(method, url, body=None, auth="hub"):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth == "hub":
        headers["Authorization"] = "token " + os.environ["JUPYTERHUB_API_TOKEN"]
    elif auth == "vkey":
        headers["Authorization"] = "Bearer " + os.environ["OPENAI_API_KEY"]
    elif auth:
        headers["Authorization"] = auth
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url if "://" in url else API + url, data=data,
                                 method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")[:300]
"""


def admin_routes(victim_key: str, victim_personal: str, victim: str) -> list[tuple]:
    """Every admin route of the API, aimed at another user's keys and scope."""
    budget = {"budgets": [{"usd": 1000, "period": "month"}]}
    return [
        ("GET", "/keys", None), ("GET", f"/keys?owner={victim}", None),
        ("POST", "/keys", {"owner": victim}), ("POST", "/keys", {"owner": "me-too"}),
        ("GET", f"/keys/{victim_key}", None), ("GET", f"/keys/{victim_personal}", None),
        ("PATCH", f"/keys/{victim_personal}", budget),
        ("POST", f"/keys/{victim_key}/revoke", None),
        ("POST", f"/keys/{victim_key}/rotate", {}),
        ("GET", "/policies", None), ("GET", f"/policies/user:{victim}", None),
        ("PUT", f"/policies/user:{victim}", budget),
        ("PATCH", f"/policies/user:{victim}", budget),
        ("DELETE", f"/policies/user:{victim}", None),
        ("PUT", "/policies/global", budget), ("GET", "/audit", None),
    ]


class World:
    """The running hub, its users' kernels, and what the tests learned."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.upstream = FakeUpstream(expect_key=REAL_KEY)
        keys = root / "vkeys-secrets"
        keys.mkdir(mode=0o700)
        self.key_file = keys / "provider.key"
        self.key_file.write_text(REAL_KEY)
        self.key_file.chmod(0o600)
        provider = {"api_key_file": str(self.key_file)}
        service_config = {
            "VKeysGateway": {"fake_mode": "never", "roll_seconds": 0.5, "providers": {
                "openai": {"kind": "openai", "base_url": self.upstream.url + "/v1", **provider},
                "anthropic": {"kind": "anthropic", "base_url": self.upstream.url,
                              **provider}}},
            "VKeysHubService": {"reap_interval": 1.0, "group_policies": {
                "students": {"budgets": [{"usd": 5, "period": "month"}]}}}}
        extra = ('c.Spawner.poll_interval = 2\n'
                 'c.JupyterHub.load_roles.append({"name": "student-admins", '
                 '"users": ["dana"], "scopes": ["custom:vkeys:admin!group=students"]})')
        self.kernels: dict[str, str] = {}
        self.env: dict[str, dict[str, str]] = {}
        self.hub: HubProcess | None = None
        try:
            self.hub = start_hub(root, users=USERS, service_config=service_config,
                                 extra_config=extra)
            for user in USERS:
                self.hub.start_server(user)
                self.kernels[user] = self.hub.start_kernel(user)
        except BaseException:
            self.stop()  # a failed set-up leaves no hub, server or upstream behind
            raise

    def run(self, user: str, code: str) -> dict[str, Any]:
        return result_of(self.hub.execute(user, self.kernels[user], code))

    def http(self, user: str, body: str) -> Any:
        """Run ``body`` (which sets ``out``) after the HTTP helper in ``user``'s kernel."""
        return self.run(user, HTTP + body + "\nprint('RESULT' + json.dumps(out))")

    def stop(self) -> None:
        try:
            if self.hub is not None:
                self.hub.stop()
        finally:
            self.upstream.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    world = World(root)
    try:
        yield world
    except BaseException:
        print(world.hub.log()[-8000:])
        raise
    finally:
        world.stop()


def test_every_kernel_gets_a_key_that_works_with_both_sdks(world):
    for user in ("alice", "bob"):
        result = world.run(user, CALLS)
        env = result["env"]
        world.env[user] = env
        assert result["openai"] and result["anthropic"], result
        assert env["OPENAI_API_KEY"].startswith("vk-"), env["OPENAI_API_KEY"][:6]
        assert env["ANTHROPIC_API_KEY"] == env["OPENAI_API_KEY"]
        assert env["OPENAI_BASE_URL"] == world.hub.service_url + "/openai/v1"
        assert env["ANTHROPIC_BASE_URL"] == world.hub.service_url + "/anthropic"
        assert env["VKEYS_API_URL"] == world.hub.service_url + "/api"
        assert "127.0.0.1" in env["NO_PROXY"]
    assert world.env["alice"]["OPENAI_API_KEY"] != world.env["bob"]["OPENAI_API_KEY"]
    # every call reached the provider with the real key (the fake refuses any other)
    seen = world.upstream.seen()
    assert len(seen) >= 4
    # the calls are attributed to each user, their team from their Hub group
    me = world.http("bob", "out = call('GET', '/hub/me')")
    assert me[0] == 200 and me[1]["name"] == "bob" and me[1]["team"] == "students", me
    personal = me[1]["personal_keys"][0]
    assert personal["owner"] == "bob" and personal["team"] == "students"
    month = [b for scope in personal["limits"] if scope["scope"].startswith("key:")
             for b in scope["budgets"]]
    assert month and month[0]["usd"] == 5, personal["limits"]  # the students group policy


def test_usage_cost_per_cell_and_dry_runs_come_from_the_service(world):
    report = world.hub.execute("alice", world.kernels["alice"],
                               "import jupyter_vkeys\njupyter_vkeys.me()")
    html = " ".join(d.get("text/html", "") for d in report["displays"])
    assert "vkeys-report" in html and "$20.00 / month" in html, report
    assert "mathjax_ignore" in html
    dry = world.hub.execute("alice", world.kernels["alice"], """%%vkeys dry_run
import openai
openai.OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "what would it cost"}])
""")
    html = " ".join(d.get("text/html", "") for d in dry["displays"])
    assert not dry["errors"] and "vkeys-dry-run" in html and "nothing spent" in html, dry
    paid = world.hub.execute("alice", world.kernels["alice"], CALLS)
    lines = [d.get("text/plain", "") for d in paid["displays"]]
    assert any("2 calls" in line and "left" in line for line in lines), lines  # cell cost


def test_a_browser_logs_in_through_the_hub_and_sees_its_own_caps(world, tmp_path):
    """HubOAuth for browsers: the service's page sends a browser through the Hub's login
    and OAuth, and then shows the signed-in user's own caps."""
    chromium = CHROMIUM
    if not chromium.exists():
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    shot = tmp_path / "hub-service-home.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{world.hub.base}/services/vkeys/", timeout=60_000)
            page.fill("input[name=username]", "bob")
            page.fill("input[name=password]", "test-password")
            page.click("input[type=submit], button[type=submit]")
            try:
                page.wait_for_selector("text=Signed in as", timeout=60_000)
            except Exception:
                page.screenshot(path=str(shot), full_page=True)
                print(f"at {page.url} (screenshot {shot}):\n{page.inner_text('body')[:2000]}"
                      f"\n{world.hub.log()[-4000:]}")
                raise
            text = page.inner_text("body")
            url = page.url
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    shots = os.environ.get("VKEYS_SCREENSHOT_DIR")
    if shots and Path(shots).is_dir():
        Path(shots, shot.name).write_bytes(shot.read_bytes())
    print(f"screenshot: {shot}")
    assert url.startswith(f"{world.hub.base}/services/vkeys/"), url
    assert "Signed in as bob" in text and "team students" in text, text
    assert "$5.00" in text and "alice" not in text, text


def test_the_single_user_servers_run_no_gateway_and_hold_no_real_key(world):
    import psutil

    for user in ("alice", "bob"):
        server = psutil.Process(world.hub.server_pid(user))
        processes = [server, *server.children(recursive=True)]
        assert len(processes) >= 2  # the server and its kernel
        for proc in processes:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
            assert REAL_KEY.encode() not in environ, (user, proc.cmdline())
            assert b"VKEYS_PEPPER" not in environ and b"VKEYS_ADMIN_TOKEN" not in environ
        status, _ = request("GET", f"{world.hub.user_url(user)}/vkeys/api/health",
                            token=DRIVER_TOKEN)
        assert status == 404  # no gateway routes in a single-user server
    # no file anywhere under the test's root holds the real key, but the key file
    holders = []
    for path in world.root.rglob("*"):
        if path.is_file() and path != world.key_file:
            try:
                if REAL_KEY.encode() in path.read_bytes():
                    holders.append(str(path))
            except OSError:
                pass
    assert not holders, holders
    assert REAL_KEY not in world.hub.log()
    assert (world.hub.data_dir.stat().st_mode & 0o077) == 0  # the service's files: its own


def test_alice_cannot_touch_bobs_keys_or_usage_through_any_route(world):
    bob_env = world.env["bob"]
    bob_kernel_key = bob_env["VKEYS_KEY_ID"]
    carol_view = world.http("carol", "out = call('GET', '/keys?owner=bob')")
    assert carol_view[0] == 200, carol_view
    bob_keys_before = {k["id"]: (k["state"], k.get("policy")) for k in carol_view[1]["keys"]}
    bob_personal = next(k["id"] for k in carol_view[1]["keys"] if k["metadata"]["kind"] == "user")
    routes = admin_routes(bob_kernel_key, bob_personal, "bob")
    base = world.hub.service_url
    hub_base = world.hub.base
    bob_server = world.hub.user_url("bob")
    attempts = f"""
routes = {routes!r}
out = {{}}
for method, path, body in routes:
    for auth in ("hub", "vkey", None):
        out[f"{{auth}} {{method}} {{path}}"] = call(method, path, body, auth=auth)[0]
out["metrics"] = call("GET", {base!r} + "/metrics")[0]
out["hub kernels delete"] = call("DELETE", "/hub/kernels/{bob_kernel_key}")[0]
steal = call("POST", "/hub/kernels", {{"kernel_id": "{world.kernels['bob']}"}})
out["hub kernels post"] = steal[0]
out["stolen id"] = steal[1]["key_id"]
me = call("GET", "/hub/me")
out["hub me"] = [k["owner"] for k in me[1]["personal_keys"] + me[1]["kernel_keys"]]
vme = call("GET", "/me", auth="vkey")
out["vkey me"] = vme[1]["owner"]
forged = "vk-{bob_kernel_key}_" + "A" * 43
out["forged"] = call("POST", {base!r} + "/openai/v1/chat/completions",
                     {{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "x"}}]}},
                     auth="Bearer " + forged)[0]
out["hub api bob"] = call("GET", {hub_base!r} + "/hub/api/users/bob")[0]
out["bob server"] = call("GET", {bob_server!r} + "/api/kernels")[0]
"""
    out = world.http("alice", attempts)
    for name, status in out.items():
        if name.startswith(("hub ", "vkey ", "None ")) and name.split(" ")[1] in (
                "GET", "POST", "PUT", "PATCH", "DELETE"):
            assert status in (401, 403), (name, status)
    assert out["metrics"] == 403
    assert out["hub kernels delete"] == 404
    assert out["hub kernels post"] == 201 and out["stolen id"] != bob_kernel_key
    assert set(out["hub me"]) == {"alice"} and out["vkey me"] == "alice"
    assert out["forged"] == 401
    assert out["hub api bob"] in (403, 404) and out["bob server"] in (403, 404)
    # nothing of bob's changed
    after = world.http("carol", "out = call('GET', '/keys?owner=bob')")
    assert {k["id"]: (k["state"], k.get("policy")) for k in after[1]["keys"]} == \
        bob_keys_before
    again = world.run("bob", CALLS)
    assert again["openai"]


def test_a_group_admin_administers_their_group_only(world):
    out = world.http("dana", """
out = {}
keys = call("GET", "/keys")
out["teams"] = sorted({k["team"] for k in keys[1]["keys"]}) if keys[0] == 200 else keys
out["team policy"] = call("PUT", "/policies/team:students",
                          {"budgets": [{"usd": 50, "period": "month"}]})[0]
out["other team"] = call("PUT", "/policies/team:data-science",
                         {"budgets": [{"usd": 50, "period": "month"}]})[0]
out["bob policy"] = call("GET", "/policies/user:bob")[0]
out["alice policy"] = call("GET", "/policies/user:alice")[0]
out["global"] = call("GET", "/policies/global")[0]
out["audit"] = call("GET", "/audit")
""")
    assert out["teams"] == ["students"], out
    assert out["team policy"] == 200 and out["other team"] == 403
    assert out["bob policy"] == 200 and out["alice policy"] == 403 and out["global"] == 403
    assert out["audit"][0] == 403 and "audit trail" in out["audit"][1]["error"]["message"]


def test_an_admin_sets_bobs_cap_and_his_next_call_is_refused(world):
    out = world.http("carol", """
out = call("PUT", "/policies/user:bob", {"budgets": [{"usd": 0.000001, "period": "day"}]})
""")
    assert out[0] == 200, out
    refused = world.hub.execute("bob", world.kernels["bob"], """
import openai
try:
    openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "more"}])
    print("RESULT" + "{}")
except openai.RateLimitError as exc:
    import json
    print("RESULT" + json.dumps({"status": exc.status_code, "message": exc.message,
                                 "retry": exc.response.headers.get("x-should-retry")}))
""")
    result = result_of(refused)
    assert result.get("status") == 429, result
    assert "user:bob" in result["message"] and "day" in result["message"], result
    assert result["retry"] == "false"
    # alice is not affected
    assert world.run("alice", CALLS)["openai"]


def test_a_call_through_the_hub_proxy_needs_no_hub_token(world):
    key = world.env["alice"]["OPENAI_API_KEY"]
    status, body = request("POST", f"{world.hub.base}/services/vkeys/openai/v1/chat/completions",
                           {"model": "gpt-4o-mini", "max_tokens": 4,
                            "messages": [{"role": "user", "content": "via the proxy"}]},
                           headers={"Authorization": f"Bearer {key}"})
    assert status == 200, body


PANEL = """
import json
from jupyter_vkeys.widgets import AdminPanel
panel = AdminPanel(interval=60)
ctl = panel.controller
out = {"problem": str(ctl.problem or ""), "not_admin": ctl.not_admin,
       "rows": [r.scope for r in ctl.rows], "denied": panel.denied.value,
       "audit": str(ctl.audit_problem or ""),
       "url": ctl.client.api_url if ctl.client else "",
       "scheme": ctl.client.scheme if ctl.client else ""}
if ACTION and not ctl.not_admin:
    panel.select("user:bob")
    panel.budget_fields["day"][0].value = DAY_CAP
    panel.save.click()
    out["notice"] = panel.notice.value
panel.close()
print("RESULT" + json.dumps(out))
"""

BOB_CALLS = """
import json, openai
from jupyter_vkeys.widgets import MyUsage
try:
    openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    outcome = "answered"
except openai.RateLimitError as exc:
    outcome = f"429: {exc}"
usage = MyUsage(interval=60)
print("RESULT" + json.dumps({"outcome": outcome, "problem": str(usage.controller.problem or ""),
                             "calls": len(usage.controller.calls),
                             "summary": usage.summary.value}))
usage.close()
"""


def test_the_admin_panel_in_carols_server_caps_bobs_kernel(world):
    """Issue 14 on a hub: the AdminPanel in the admin's own single-user server, with the
    Hub token her kernel inherits, lowers bob's cap; bob's next call (his kernel, his
    key) is refused. A group admin sees her group's people only; a user who is no admin
    sees the "not an admin" state. MyUsage in bob's kernel reads the service."""
    def panel(user: str, action: bool, cap: str = "") -> dict:
        code = f"ACTION = {action!r}\nDAY_CAP = {cap!r}\n" + PANEL
        return world.run(user, code)

    carol = panel("carol", True, "0.000001")
    assert carol["problem"] == "" and carol["scheme"] == "token", carol
    assert carol["url"] == world.hub.service_url + "/api"
    assert {"user:alice", "user:bob"} <= set(carol["rows"]), carol["rows"]
    assert "saved the limits of user:bob" in carol["notice"], carol
    bob = world.run("bob", BOB_CALLS)
    assert bob["outcome"].startswith("429") and "user:bob" in bob["outcome"], bob
    assert bob["problem"] == "" and bob["calls"] >= 1 and "bob" in bob["summary"], bob

    dana = panel("dana", False)  # admin of the students group only
    assert dana["problem"] == "" and "user:bob" in dana["rows"], dana
    assert "user:alice" not in dana["rows"], dana["rows"]
    assert "admins of everything" in dana["audit"], dana  # said, and the rest works
    alice = panel("alice", False)
    assert alice["not_admin"] and "not a jupyter-vkeys admin" in alice["denied"], alice

    carol = panel("carol", True, "")  # bob's day cap removed again
    assert "saved the limits of user:bob" in carol["notice"], carol
    assert world.run("bob", BOB_CALLS)["outcome"] == "answered"


def test_in_a_browser_carol_caps_bob_by_clicking_in_her_admin_panel(world, tmp_path):
    """Issue 14's browser test on a hub: carol logs in through the Hub, opens
    notebooks/admin_caps.ipynb in her own JupyterLab, runs it, clicks bob's row, types a
    lower day cap and saves; bob's next call, in his own kernel, is refused."""
    chromium = CHROMIUM
    if not chromium.exists():
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from concurrent.futures import ThreadPoolExecutor

    from test_widgets_browser import ARGS, run_all_and_wait_for_panel

    notebook = json.loads((HERE.parents[1] / "notebooks" / "admin_caps.ipynb").read_text())
    status, body = request("PUT", f"{world.hub.user_url('carol')}/api/contents/admin_caps.ipynb",
                           {"type": "notebook", "format": "json", "content": notebook},
                           token=DRIVER_TOKEN)
    assert status in (200, 201), body
    assert world.run("bob", BOB_CALLS)["outcome"] == "answered"  # bob has spent today
    start_idle_session(world.hub.user_url("carol"), DRIVER_TOKEN, "admin_caps.ipynb")
    shot = tmp_path / "hub_admin_caps.png"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), headless=True,
                                         args=ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1600})
                page.goto(f"{world.hub.base}/hub/login?next=/user/carol/lab/tree/"
                          "admin_caps.ipynb", timeout=60_000)
                page.fill("input[name=username]", "carol")
                page.fill("input[name=password]", "test-password")
                page.click("input[type=submit], button[type=submit]")
                try:
                    run_all_and_wait_for_panel(page)
                    page.locator(".vkeys-admin .vkeys-row-select[title='user:bob']").click()
                    page.wait_for_function(
                        "document.querySelector('.vkeys-admin .vkeys-editing')"
                        "?.innerText.includes('user:bob')", timeout=30_000)
                    page.locator(".vkeys-admin .vkeys-budget-day input").fill("0.000001")
                    page.locator(".vkeys-admin .vkeys-budget-day input").press("Tab")
                    page.wait_for_function("document.querySelector('.vkeys-admin "
                                           ".vkeys-budget-day input').value == '0.000001'",
                                           timeout=10_000)
                    page.locator(".vkeys-admin .vkeys-save").click()
                    page.wait_for_selector(".vkeys-admin .vkeys-notice-ok", timeout=30_000)
                    notice = page.locator(".vkeys-admin .vkeys-notice").inner_text()
                    with ThreadPoolExecutor(1) as pool:  # playwright's loop runs here
                        bob = pool.submit(world.run, "bob", BOB_CALLS).result()
                    page.wait_for_selector(".vkeys-admin .vkeys-s-user-bob "
                                           ".vkeys-row-exhausted", timeout=30_000)
                    page.locator(".vkeys-admin .vkeys-s-user-bob").scroll_into_view_if_needed()
                    page.screenshot(path=str(shot), full_page=True)
                except Exception:
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"at {page.url} (screenshot {shot}):\n"
                          f"{page.inner_text('body')[:2000]}\n{world.hub.log()[-4000:]}")
                    raise
            finally:
                browser.close()
    finally:  # bob's day cap removed again, for the tests after this one
        world.run("carol", "ACTION = True\nDAY_CAP = ''\n" + PANEL)
    shots = os.environ.get("VKEYS_SCREENSHOT_DIR")
    if shots and Path(shots).is_dir():
        Path(shots, shot.name).write_bytes(shot.read_bytes())
    print(f"screenshot: {shot}")
    assert "saved the limits of user:bob" in notice, notice
    assert bob["outcome"].startswith("429") and "user:bob" in bob["outcome"], bob
    assert world.run("bob", BOB_CALLS)["outcome"] == "answered"


def test_stopping_bobs_server_revokes_his_kernel_keys(world):
    bob_key = world.env["bob"]["OPENAI_API_KEY"]
    world.hub.stop_server("bob")
    # Revoked by the server's own shutdown (JupyterHub stops it with SIGINT; its extension
    # asks the service) before the Hub says it stopped; not left to the reaper.
    listing = world.http("carol", "out = call('GET', '/keys?owner=bob')")
    kernel_keys = [k for k in listing[1]["keys"] if k["metadata"]["kind"] == "kernel"]
    assert kernel_keys and all(k["state"] == "revoked" for k in kernel_keys), kernel_keys
    audit = world.http("carol", "out = call('GET', '/audit?limit=10000')")
    actors = {row["actor"] for row in audit[1]["audit"] if row["action"] == "key.revoke"
              and row["target"] in {f"key:{k['id']}" for k in kernel_keys}}
    assert actors == {"hub:bob"}, actors
    status, body = request("POST", f"{world.hub.service_url}/openai/v1/chat/completions",
                           {"model": "gpt-4o-mini", "messages": [
                               {"role": "user", "content": "after stop"}]},
                           headers={"Authorization": f"Bearer {bob_key}"})
    assert status == 401, body


def test_a_killed_server_loses_its_kernel_keys_too(world):
    import psutil

    alice_key_id = world.env["alice"]["VKEYS_KEY_ID"]
    server = psutil.Process(world.hub.server_pid("alice"))
    children = server.children(recursive=True)
    server.send_signal(signal.SIGKILL)
    for child in children:
        child.send_signal(signal.SIGKILL)
    deadline = time.time() + 45
    state = ""
    while time.time() < deadline:
        listing = world.http("carol", f"out = call('GET', '/keys/{alice_key_id}')")
        state = listing[1]["state"]
        if state == "revoked":
            break
        time.sleep(1)
    assert state == "revoked"
    assert "jupyter-vkeys:hub-reaper" in json.dumps(
        world.http("carol", "out = call('GET', '/audit')")[1])
