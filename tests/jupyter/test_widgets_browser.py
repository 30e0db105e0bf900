"""A real browser on the admin panel: ``jupyter lab`` as installed, Debian's chromium
driven by Playwright (the approach of ``test_browser.py``).

Opens ``notebooks/admin_caps.ipynb``, runs it from the menu, and in the rendered
AdminPanel clicks a user's row, types a lower day budget and clicks *save limits*; the
user's next call (the official SDK, the user's own key) is then refused with 429, and
the row turns red. It also creates a short-lived CI key in the panel and copies its
secret with the copy button (read back from the browser's clipboard), and checks that
no money turned into MathJax. Screenshots: ``admin_caps.png`` (after the cap) and
``admin_caps_secret.png``, copied into ``$VKEYS_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import openai
import pytest
from servers import CHROMIUM, CHROMIUM_ARGS, JupyterProcess, start_idle_session

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "admin_caps.ipynb"
SHARED_SCREENSHOTS = Path(os.environ.get("VKEYS_SCREENSHOT_DIR") or "/nonexistent")
ARGS = CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium "
                                 "(apt-get install -y chromium; .ci/run does)")]


def _accept_kernel_dialog(page) -> None:
    button = page.locator(".jp-Dialog button", has_text="Select")
    if button.count() and button.first.is_visible():
        button.first.click()


def run_all_and_wait_for_panel(page) -> None:
    """Run every cell from the menu until the AdminPanel has drawn its rows. A Run All
    that JupyterLab swallowed (kernel still attaching) shows no output within 20 s and
    is repeated."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=90_000)
    for attempt in range(3):
        _accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        item = page.locator(".lm-Menu:visible .lm-Menu-item", has_text="Run All Cells").first
        item.wait_for(state="visible", timeout=10_000)
        item.click()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _accept_kernel_dialog(page)
            if page.locator(".jp-Notebook .jp-OutputArea-output").count():
                page.wait_for_selector(".vkeys-admin .vkeys-row", timeout=90_000)
                return
            page.wait_for_timeout(250)
    raise AssertionError("Run All Cells ran no cell in 3 tries")


def chat(server: JupyterProcess, secret: str):
    return openai.OpenAI(api_key=secret, base_url=server.base + "/vkeys/openai/v1",
                         max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hello"}])


def test_a_cap_lowered_by_clicking_in_the_admin_panel_refuses_the_users_next_call(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / "admin_caps.ipynb")
    shots = [tmp_path / "admin_caps.png", tmp_path / "admin_caps_secret.png"]
    with JupyterProcess("lab", tmp_path, root=root) as server, \
            sync_api.sync_playwright() as pw:
        status, alice = server.request("POST", "/vkeys/api/keys", {
            "owner": "alice", "team": "ml", "alias": "alice laptop",
            "budgets": [{"usd": 20, "period": "month", "soft": 0.8}]})
        assert status == 201, alice
        chat(server, alice["key"])  # alice is under every cap
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1800})
            context.grant_permissions(["clipboard-read", "clipboard-write"],
                                      origin=server.base)
            page = context.new_page()
            start_idle_session(server.base, server.token, "admin_caps.ipynb")
            page.goto(f"{server.base}/lab/tree/admin_caps.ipynb?token={server.token}",
                      timeout=90_000)
            try:
                run_all_and_wait_for_panel(page)
                # click alice's row, type a day cap below what she has spent, save
                page.locator(".vkeys-admin .vkeys-row-select[title='user:alice']").click()
                page.wait_for_function("document.querySelector('.vkeys-admin .vkeys-editing')"
                                       "?.innerText.includes('user:alice')", timeout=30_000)
                page.locator(".vkeys-admin .vkeys-budget-day input").fill("0.000001")
                page.locator(".vkeys-admin .vkeys-soft-day input").fill("80%")
                page.locator(".vkeys-admin .vkeys-budget-day input").press("Tab")
                page.wait_for_function("document.querySelector('.vkeys-admin .vkeys-budget-day "
                                       "input').value == '0.000001'", timeout=10_000)
                page.locator(".vkeys-admin .vkeys-save").click()
                page.wait_for_selector(".vkeys-admin .vkeys-notice-ok", timeout=30_000)
                notice = page.locator(".vkeys-admin .vkeys-notice").inner_text()
                saved = server.request("GET", "/vkeys/api/policies/user:alice")[1]
                with pytest.raises(openai.RateLimitError) as refused:
                    chat(server, alice["key"])
                page.wait_for_selector(".vkeys-admin .vkeys-s-user-alice "
                                       ".vkeys-row-exhausted", timeout=30_000)
                row_text = page.locator(".vkeys-admin .vkeys-s-user-alice").inner_text()
                audit = page.locator(".vkeys-admin .vkeys-audit").inner_text()
                math = page.locator(".vkeys-admin mjx-container").count()
                page.locator(".vkeys-admin .vkeys-s-user-alice").scroll_into_view_if_needed()
                page.screenshot(path=str(shots[0]), full_page=True)

                # a short-lived CI key, its secret shown once and copied with the button
                page.locator(".vkeys-admin .vkeys-new-owner input").fill("ci-bot")
                page.locator(".vkeys-admin .vkeys-new-ci input").check()
                page.locator(".vkeys-admin .vkeys-new-total input").fill("1")
                page.locator(".vkeys-admin .vkeys-new-total input").press("Tab")
                page.locator(".vkeys-admin .vkeys-create").click()
                page.wait_for_selector(".vkeys-admin .vkeys-secret .vkeys-copy", timeout=30_000)
                secret = page.locator(".vkeys-admin .vkeys-secret-value").inner_text().strip()
                page.locator(".vkeys-admin .vkeys-copy").click()
                page.wait_for_function("document.querySelector('.vkeys-admin .vkeys-copy')"
                                       ".innerText == 'copied'", timeout=10_000)
                copied = page.evaluate("navigator.clipboard.readText()")
                page.locator(".vkeys-admin .vkeys-secret").scroll_into_view_if_needed()
                page.screenshot(path=str(shots[1]), full_page=False)
            except Exception:
                page.screenshot(path=str(shots[0]), full_page=True)
                print(f"\nscreenshot at the failure: {shots[0]}\n{server.log()[-3000:]}")
                raise
        finally:
            browser.close()
        status, keys = server.request("GET", "/vkeys/api/keys?owner=ci-bot")
    for shot in shots:
        print(f"\nscreenshot: {shot}")
        if SHARED_SCREENSHOTS.is_dir():
            shutil.copy(shot, SHARED_SCREENSHOTS / shot.name)

    assert "saved the limits of user:alice" in notice, notice
    assert saved["policy"]["budgets"] == [{"usd": 0.000001, "period": "day", "soft": 0.8}], saved
    message = str(refused.value)
    assert refused.value.status_code == 429 and "user:alice" in message and "day" in message
    assert "exhausted" in row_text and "$0.000001" in row_text, row_text
    assert "policy.set" in audit, audit
    assert math == 0
    assert secret.startswith("vk-") and copied == secret
    ci = keys["keys"][0]
    assert ci["metadata"] == {"kind": "ci"} and ci["expires_at"] > time.time() + 3000
    assert ci["policy"]["budgets"] == [{"usd": 1.0, "period": "total"}]
