"""The dashboard in a real browser: Debian's Chromium, driven by Playwright (pointed at that executable;
Playwright downloads no browser here). Every page loads without a console error, a running study's table
gains a trial without a reload, and a promotion goes through the gate from the page."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tuneloop.store.registry import Registry
from tuneloop.store.workspace import Workspace

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is a test dependency: make test installs it")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium'; "
                                                         "make test installs it where it can)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """A browser tab that keeps every console error and uncaught exception of the pages it shows."""

    def __init__(self, browser):
        self.tab = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.tab.on("console", lambda message: self.errors.append(message.text) if message.type == "error" else None)
        self.tab.on("pageerror", lambda error: self.errors.append(str(error)))

    def open(self, address: str) -> None:
        response = self.tab.goto(address)
        assert response is not None and response.ok, f"{address}: {response and response.status}"
        self.tab.wait_for_load_state("networkidle")  # the plot panels, fetched after the page


def test_every_page_loads_without_console_errors_and_draws_its_charts(browser, serve, filled_workspace):
    base = serve(filled_workspace)
    page = Page(browser)
    page.open(base + "/")
    page.tab.click("text=digits-study")
    page.tab.wait_for_load_state("networkidle")
    assert page.tab.locator("#trials tr.trial").count() == 4
    # Chart.js drew on both canvases (a canvas it drew on has a chart instance attached).
    assert page.tab.evaluate("() => ['chart-metric', 'chart-loss'].every(id => Chart.getChart(id) !== undefined)")
    assert page.tab.evaluate("() => Chart.getChart('chart-metric').data.datasets.length") == 4
    for heading in ("Parameter importance", "Seed check", "Confusion matrix of the best model"):
        assert page.tab.locator("h2", has_text=heading).count() == 1, heading
    run_link = page.tab.locator("#trials a[href^='/runs/']").first.get_attribute("href")
    page.open(base + "/runs")
    page.open(base + run_link)
    assert page.tab.evaluate("() => Chart.getChart('chart-run-loss').data.datasets.length") == 2
    assert page.tab.locator("img[alt='confusion matrix heatmap']").count() == 1
    page.open(base + "/registry")
    page.tab.click("text=digits")
    page.tab.wait_for_load_state("networkidle")
    assert page.tab.locator("#versions tbody tr").count() == 3
    assert page.errors == []


def test_a_running_studys_table_gains_a_trial_without_a_reload(browser, serve, digit_files, tmp_path):
    workspace = tmp_path / "ws"
    # A random search runs every trial it is asked for, one after another: a study that keeps going.
    tune = subprocess.Popen([sys.executable, "-m", "tuneloop", "tune", str(digit_files["old"]), "--workspace",
                             str(workspace), "--name", "live", "--strategy", "random", "--budget", "40trials",
                             "--epochs", "6", "--prune", "none", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        finished = wait_for(lambda: completed_trials(workspace) >= 1, tune)
        assert finished, "the study recorded no trial"
        page = Page(browser)
        page.open(serve(workspace) + "/studies/live")
        page.tab.evaluate("() => { window.sameDocument = true; }")  # gone if the page reloads
        shown = page.tab.locator("#trials tr.trial").count()
        assert 1 <= shown and page.tab.locator(".live").inner_text().startswith("running")
        page.tab.wait_for_function(f"() => document.querySelectorAll('#trials tr.trial').length > {shown}",
                                   timeout=60_000)
        assert page.tab.evaluate("() => window.sameDocument === true"), "updated in place, not reloaded"
        lines = page.tab.evaluate("() => Chart.getChart('chart-metric').data.datasets.length")
        assert lines >= 1
        assert page.errors == []
    finally:
        tune.kill()
        tune.wait()


def completed_trials(workspace: Path) -> int:
    try:
        with Workspace.open(workspace, read_only=True) as store:
            return sum(t["status"] == "completed" for s in store.studies() for t in store.trials(s["id"]))
    except Exception:  # not made yet
        return 0


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_promotion_from_the_page_goes_through_the_gate(browser, serve, workspace_copy):
    page = Page(browser)
    page.open(serve(workspace_copy) + "/registry/digits")
    # The update on shuffled labels: the gate refuses it, and the page says why.
    page.tab.select_option("#promote-form select", "2")
    page.tab.fill("#promote-form input[name=reason]", "try the shuffled update")
    page.tab.click("#promote-form button")
    notice = page.tab.locator("#notice")
    assert "The gate refused digits:2; production is unchanged" in notice.inner_text()
    assert "FAILED: new holdout" in notice.inner_text() and "most common class" in notice.inner_text()
    with Workspace.open(workspace_copy, read_only=True) as store:
        assert Registry(store).production("digits").version == 1
        assert Registry(store).get("digits", 2).stage == "candidate"
    # The update on real new digits passes, and the reason is in the history.
    page.tab.select_option("#promote-form select", "3")
    page.tab.fill("#promote-form input[name=reason]", "digits 5 to 9 arrived")
    page.tab.click("#promote-form button")
    assert "digits:3 is production" in page.tab.locator("#notice").inner_text()
    assert "digits 5 to 9 arrived" in page.tab.locator("#history").inner_text()
    with Workspace.open(workspace_copy, read_only=True) as store:
        assert Registry(store).production("digits").version == 3
    assert page.errors == []
