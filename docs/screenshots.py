"""The README's screenshots of the dashboard, taken in Chromium (Debian's, driven by Playwright) from a workspace
made here: a guided study of the tabular MLP on scikit-learn's digits 0-4 (BSD licence, from the UCI repository)
with its seed check, a production model, a drift check on digits 5-9 and two updates left as candidates, one of
which, trained on shuffled labels, is then refused by the gate from the registry page.

    HF_HUB_OFFLINE=1 .venv/bin/python docs/screenshots.py     # writes docs/images/dashboard-*.png, about 1 minute
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from tuneloop import api
from tuneloop.config import Recipe
from tuneloop.data.demo import digit_update_files

IMAGES = Path(__file__).parent / "images"


def make_workspace(folder: Path) -> Path:
    from tuneloop.continual import versions
    from tuneloop.continual.drift import drift
    from tuneloop.continual.update import adapt

    digit_update_files(folder, old_rows=700)
    workspace = folder / "ws"
    api.tune(folder / "old.csv", workspace=workspace, name="digits", budget="8trials", recipe=Recipe(epochs=6),
             seed_check=True)
    run = api.fit(folder / "old.csv", workspace=workspace, recipe=Recipe(epochs=10, learning_rate=1e-3))
    versions.register("digits", run.id, workspace=workspace)
    versions.promote("digits:1", workspace=workspace, reason="first model")
    drift("digits", folder / "new.csv", workspace=workspace)
    adapt("digits", folder / "poisoned.csv", workspace=workspace, promote=False, budget="1trials")
    adapt("digits", folder / "new.csv", workspace=workspace, promote=False, budget="1trials")
    return workspace


def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("Chromium is needed: apt-get install chromium")
    IMAGES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        workspace = make_workspace(Path(scratch))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "tuneloop", "dashboard", "--workspace", str(workspace),
                                   "--port", str(port)], stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            time.sleep(4)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(base + "/")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=IMAGES / "dashboard-studies.png")
                page.goto(base + "/studies/digits")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=IMAGES / "dashboard-study.png", full_page=False)
                page.locator("h2", has_text="Learning curves").scroll_into_view_if_needed()
                page.screenshot(path=IMAGES / "dashboard-curves.png", full_page=False)
                page.goto(base + "/registry/digits")
                page.select_option("#promote-form select", "2")
                page.fill("#promote-form input[name=reason]", "new digits arrived")
                page.click("#promote-form button")
                page.wait_for_load_state("networkidle")
                page.screenshot(path=IMAGES / "dashboard-registry.png", full_page=False)
                browser.close()
        finally:
            server.terminate()
            server.wait()
    for image in sorted(IMAGES.glob("dashboard-*.png")):
        print(f"{image} ({image.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
