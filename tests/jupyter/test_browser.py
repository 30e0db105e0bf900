"""A real browser: ``jupyter lab`` as installed, Debian's chromium driven by Playwright.

Opens ``notebooks/quickstart.ipynb``, runs every cell from the menu (Run > Run All
Cells) and reads the rendered page: the fake model's reply, the spend summary that
``jupyter_vkeys.me()`` and ``%vkeys`` render (a bar per cap, money not turned into
math), the ``MyUsage()`` widget (spend, recent calls, cost per notebook, its chart
drawn), and no error output. A screenshot of the executed notebook is saved (its path
is printed) and copied into ``$VKEYS_SCREENSHOT_DIR`` when that is set.

Needs ``/usr/bin/chromium`` (``.ci/run`` installs it with apt-get) and the
``playwright`` Python package only: never ``playwright install``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import openai
import pytest

from servers import CHROMIUM, CHROMIUM_ARGS, JupyterProcess, start_idle_session

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
SHARED_SCREENSHOTS = Path(os.environ.get("VKEYS_SCREENSHOT_DIR") or "/nonexistent")
ARGS = CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium "
                                 "(apt-get install -y chromium; .ci/run does)")]


def _expected_reply(server: JupyterProcess) -> str:
    """What the deterministic fake answers the notebook's first call (same request)."""
    status, created = server.request("POST", "/vkeys/api/keys", {"owner": "browser-test"})
    assert status in (200, 201), created
    reply = openai.OpenAI(api_key=created["key"], base_url=server.base + "/vkeys/openai/v1",
                          max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=8,
        messages=[{"role": "user", "content": "Say hello to the notebook"}])
    return reply.choices[0].message.content


def server_story(log: str, limit: int = 12_000) -> str:
    """The server log's lines about kernels, sessions, websockets and errors (the
    language-server and static-file noise left out), for a failure's report."""
    keep = ("ernel", "ession", "channels", "rror", "Traceback", "  File", "raise ",
            "restart", "died", "jupyter_vkeys", "jupyter-vkeys", "WARNING", "[W ", "[E ")
    lines = [line for line in log.splitlines() if any(k in line for k in keep)
             and "language-server" not in line and "/static/" not in line]
    text = "\n".join(lines)
    return text[:limit // 3] + "\n...\n" + text[-2 * limit // 3:] if len(text) > limit else text


def _accept_kernel_dialog(page) -> None:
    """Click "Select" in JupyterLab's kernel dialog if it is open (default kernel)."""
    button = page.locator(".jp-Dialog button", has_text="Select")
    if button.count() and button.first.is_visible():
        button.first.click()


def notebook_kernel(server: JupyterProcess) -> dict:
    """The kernel of the notebook's session as the server reports it (``{}`` if none)."""
    status, sessions = server.request("GET", "/api/sessions")
    for session in sessions if status == 200 else []:
        if session.get("path", "").endswith("quickstart.ipynb"):
            return session.get("kernel") or {}
    return {}


def wait_for_idle_kernel(page, server: JupyterProcess, timeout: float = 120) -> None:
    """Until the server says the notebook's kernel is idle (alive and answering), not
    only the page's indicator: on a loaded machine the page can show "idle" for a kernel
    that is still starting, or that died starting. A kernel that is dead or stuck is
    restarted once through the REST API and the page reloaded, as a user would."""
    deadline = time.monotonic() + timeout
    restarted = False
    while time.monotonic() < deadline:
        kernel = notebook_kernel(server)
        state = kernel.get("execution_state")
        if state == "idle":
            return
        if not restarted and kernel and (state == "dead" or
                                         time.monotonic() > deadline - timeout / 2):
            print(f"kernel {kernel.get('id')} is {state!r}: restarting it")
            server.request("POST", f"/api/kernels/{kernel['id']}/restart")
            page.reload(timeout=90_000)
            restarted = True
        page.wait_for_timeout(500)
    raise AssertionError(f"the notebook's kernel never became idle: {notebook_kernel(server)}")


def run_all_cells(page, server: JupyterProcess) -> None:
    """Wait for the kernel, run every cell from the menu (Run > Run All Cells), and return
    once the last cells (%vkeys, the dry run, the estimate) have rendered."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # The kernel is up when the toolbar's status says so, and the server agrees.
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=90_000)
    wait_for_idle_kernel(page, server)
    for attempt in range(3):
        # On a loaded machine JupyterLab may still be attaching the notebook to its kernel
        # and ask which kernel to use ("Select Kernel"): accept the default, as a user
        # would, and run all cells again until the first one has run (harmless).
        _accept_kernel_dialog(page)
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        item = page.locator(".lm-Menu:visible .lm-Menu-item", has_text="Run All Cells").first
        item.wait_for(state="visible", timeout=10_000)
        item.click()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            _accept_kernel_dialog(page)
            if page.locator(".jp-Notebook .jp-OutputArea-output").count():
                break
            page.wait_for_timeout(250)
        else:
            if attempt == 2:
                raise AssertionError("Run All Cells ran no cell in 3 tries")
            print(f"Run All Cells ran nothing (try {attempt + 1}); kernel: "
                  f"{notebook_kernel(server)}")
            page.reload(timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            wait_for_idle_kernel(page, server)
            continue
        break
    page.wait_for_function(
        "document.querySelectorAll('.jp-OutputArea-output .vkeys-report').length >= 2"
        " && document.querySelector('.jp-OutputArea-output .vkeys-estimate')",
        timeout=180_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                           timeout=60_000)


def test_quickstart_runs_in_jupyterlab_in_a_real_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / "quickstart.ipynb")
    shot = tmp_path / "quickstart.png"
    usage_shot = tmp_path / "quickstart_my_usage.png"
    with JupyterProcess("lab", tmp_path, root=root) as server, \
            sync_api.sync_playwright() as pw:
        expected = _expected_reply(server)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2200})
            start_idle_session(server.base, server.token, "quickstart.ipynb")
            page.goto(f"{server.base}/lab/tree/quickstart.ipynb?token={server.token}",
                      timeout=90_000)
            try:
                run_all_cells(page, server)
            except Exception:
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nscreenshot at the failure: {shot}\nkernel: {notebook_kernel(server)}"
                      f"\n{server_story(server.log())}")
                raise
            text = page.locator(".jp-Notebook").inner_text()
            errors = page.locator(".jp-OutputArea-output[data-mime-type="
                                  "'application/vnd.jupyter.stderr'], .jp-RenderedText"
                                  "[data-mime-type='application/vnd.jupyter.error']")
            error_texts = [errors.nth(i).inner_text() for i in range(errors.count())]
            reports = page.locator(".jp-OutputArea-output .vkeys-report")
            report_texts = [reports.nth(i).inner_text() for i in range(reports.count())]
            bars = page.locator(".jp-OutputArea-output .vkeys-report .vkeys-bar").count()
            math = page.locator(".jp-OutputArea-output .vkeys-report mjx-container, "
                                ".vkeys-cell-cost mjx-container, .vkeys-dry-run mjx-container"
                                ).count()
            cost_lines = page.locator(".jp-OutputArea-output .vkeys-cell-cost")
            cost_texts = [cost_lines.nth(i).inner_text() for i in range(cost_lines.count())]
            dry_run = page.locator(".jp-OutputArea-output .vkeys-dry-run").inner_text()
            estimate = page.locator(".jp-OutputArea-output .vkeys-estimate").inner_text()
            # MyUsage: the live widget of the same spend, recent calls and a chart
            page.wait_for_selector(".vkeys-usage .vkeys-usage-recent td", timeout=60_000)
            usage = page.locator(".vkeys-usage").inner_text()
            usage_math = page.locator(".vkeys-usage mjx-container").count()
            page.wait_for_selector(".vkeys-usage .vega-embed svg, .vkeys-usage .vega-embed "
                                   "canvas", timeout=60_000)
            page.locator(".jp-OutputArea-output .vkeys-report").last.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
            page.locator(".vkeys-usage").scroll_into_view_if_needed()
            page.locator(".vkeys-usage").screenshot(path=str(usage_shot))
        finally:
            browser.close()
    print(f"\nscreenshot of the executed notebook: {shot}")
    print(f"screenshot of MyUsage: {usage_shot}")
    if SHARED_SCREENSHOTS.is_dir():
        shutil.copy(shot, SHARED_SCREENSHOTS / "quickstart.png")
        shutil.copy(usage_shot, SHARED_SCREENSHOTS / "quickstart_my_usage.png")

    assert not error_texts, error_texts
    assert expected and expected in text, (expected, text[:3000])
    assert "output tokens: 8" in text and "output tokens: 6" in text
    assert "/vkeys/openai/v1" in text and "vk-" in text
    assert len(report_texts) == 2 and bars >= 2 and math == 0, (report_texts, bars, math)
    assert len(cost_texts) == 2, cost_texts  # the two cells that called a model
    assert all("1 call" in t and "left" in t for t in cost_texts), cost_texts
    assert "gpt-4o" in dry_run and "worst case" in dry_run and "nothing spent" in dry_run
    assert "3" in dry_run and "allowed" in dry_run, dry_run
    assert "claude-sonnet-4-5" in estimate and "worst case" in estimate, estimate
    for report in report_texts:
        assert "$20.00 / month" in report, report  # dollars as typed, not MathJax
        assert "spent $0.0" in report and "resets in" in report, report
        assert "quickstart.ipynb" in report, report
    assert "left in your tightest window" in usage and "$20.00" in usage, usage
    assert "quickstart.ipynb" in usage and "gpt-4o-mini" in usage, usage  # per notebook, calls
    assert "claude-haiku-4-5" in usage and usage_math == 0, usage
