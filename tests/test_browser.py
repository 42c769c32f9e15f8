"""The Prefect UI as a user drives it, in headless Chromium (Debian's, no browser download):
open the quick deployment, open the custom-run form, change the parameters, submit, and wait
until the run page shows Completed. A screenshot of the finished run is kept as test output."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, UI, ArticleServer

pytestmark = pytest.mark.ui
SCREENSHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-run.png"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    chromium = shutil.which("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Debian's chromium and playwright (.ci/run installs them)")
        pytest.skip("needs Debian's chromium and the playwright package")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_custom_run_from_the_ui_completes(
    browser,
    ui: UI,
    tiny_model: Path,
    article_server: ArticleServer,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{ui.url}/deployments")
    page.get_by_text("quick", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.get_by_text("Sequences per batch.").wait_for()  # the typed form, with descriptions
    page.get_by_text("Parameters", exact=True).locator("xpath=..").get_by_role("button").click()
    page.get_by_text("Use JSON input", exact=True).click()
    config = {
        "models": [str(tiny_model)],
        "url": article_server.url("/wiki/Light-emitting_diode"),
        "layers": "0,2",
        "n_seqs": 2,
        "seq_len": 32,
        "epochs": 2,
        "device": "cpu",
        "artifacts_dir": str(tmp_path),
    }
    page.locator("textarea").fill(json.dumps({"config": config}, indent=2))
    page.get_by_role("button", name="Submit", exact=True).click()
    page.get_by_role("button", name="View run").first.click(force=True)  # the "scheduled" toast
    page.wait_for_url("**/runs/flow-run/**")
    page.get_by_text("Completed", exact=True).first.wait_for(timeout=240_000)
    page.wait_for_timeout(1000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    reports = list((tmp_path / "reports").glob("*/metrics.csv"))
    assert len(reports) == 1 and len(reports[0].read_text().splitlines()) == 3  # L0, L2
