"""The Prefect UI as a user drives it, in headless Chromium (Debian's, no browser download):
open the quick deployment, open the custom-run form, change the parameters, submit, and wait
until the run page shows Completed. A screenshot of the finished run is kept as test output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, UI, ArticleServer, prefect_home
from test_deployments import wait_final

pytestmark = pytest.mark.ui
SCREENSHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-run.png"
REPORT_SHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-report.png"
CARDS_SHOT = ROOT / "artifacts" / "test-output" / "latent-cards.png"
UI_CARDS_SHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-latent-cards.png"
DOCS_SHOT = ROOT / "artifacts" / "test-output" / "docs-options.png"
SWEEP_SHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-sweep.png"
SUBMIT_SHOT = ROOT / "artifacts" / "test-output" / "prefect-ui-submit-failed.png"
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


def custom_run(browser, ui: UI, deployment: str, field_texts: tuple[str, ...], parameters: dict):  # type: ignore[no-untyped-def]
    """A deployment's custom run as a user starts it: open the deployment, Run, Custom run; the
    typed form shows (`field_texts`, words of its descriptions); the parameters typed as JSON,
    submitted, and the new run opened from the "scheduled" toast. Returns the run's page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{ui.url}/deployments")
    page.get_by_text(deployment, exact=True).click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    for text in field_texts:  # the typed form, with descriptions
        page.get_by_text(text).first.wait_for()
    page.get_by_text("Parameters", exact=True).locator("xpath=..").get_by_role("button").click()
    page.get_by_text("Use JSON input", exact=True).click()
    page.locator("textarea").fill(json.dumps(parameters, indent=2))
    failed: list[str] = []  # the API calls that failed, as the browser saw them
    page.on("requestfailed", lambda r: failed.append(f"{r.method} {r.url}: {r.failure}"))
    page.on(
        "response",
        lambda r: (
            failed.append(f"{r.request.method} {r.url}: HTTP {r.status}")
            if r.status >= 500
            else None
        ),
    )
    page.get_by_role("button", name="Submit", exact=True).click()
    # The form shows the toast, then moves to the deployment's page (and on to its Runs tab):
    # a click on the toast's button before those moves land is overridden by them, so the
    # click is repeated while the toast shows. Once it has gone, the user opens the new run
    # from the deployment's Runs tab, as the run's name there.
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    off_the_form = lambda url: not url.split("?")[0].endswith("/run")  # noqa: E731
    try:  # to the deployment's page, or (a fast click) the run's already
        page.wait_for_url(off_the_form)
    except PlaywrightTimeout:
        # The server's answer to Submit got lost under load ("Oops. Something went wrong."
        # toast): what the form showed and the calls that failed are kept, and the user's
        # next move, Submit again, is made once.
        page.screenshot(path=str(SUBMIT_SHOT), full_page=True)
        SUBMIT_SHOT.with_suffix(".txt").write_text("\n".join(failed) + "\n")
        if not page.get_by_text("Something went wrong").first.is_visible():
            raise AssertionError(f"the form did not submit; the browser saw {failed}") from None
        page.get_by_role("button", name="Submit", exact=True).click()
        page.wait_for_url(off_the_form)
    if "/runs/flow-run/" in page.url:
        return page

    view = page.get_by_role("button", name="View run").first
    for _ in range(4):
        if not view.is_visible():
            break
        view.click(force=True)
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_url("**/runs/flow-run/**", timeout=10_000)
            return page
    page.goto(page.url.split("?")[0] + "?tab=Runs")
    page.get_by_text(newest_run_name(ui, deployment), exact=True).first.click()
    page.wait_for_url("**/runs/flow-run/**")
    return page


def run_id_of(page) -> str:  # type: ignore[no-untyped-def]
    """The flow run id in a run page's address (/runs/flow-run/<id>?tab=...)."""
    return page.url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]


def newest_run_name(ui: UI, deployment: str) -> str:
    """The name of the newest flow run of the deployment called `deployment`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with ui.client() as client:
        [run] = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # a custom run expects to start now
            limit=1,
        )
    return run.name


def test_custom_run_from_the_ui_completes(
    browser,
    ui: UI,
    tiny_model: Path,
    article_server: ArticleServer,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    config = {
        "models": [str(tiny_model)],
        "urls": [article_server.url("/wiki/Light-emitting_diode")],
        "layers": "0,2",
        "n_seqs": 2,
        "seq_len": 32,
        "epochs": 2,
        "device": "cpu",
        "artifacts_dir": str(tmp_path),
    }
    # --precision's description warns where bf16 is emulated (tasks/config_sae.py)
    texts = ("Sequences per batch.", "a CPU without them emulates bf16, which trained about 100x")
    page = custom_run(browser, ui, "quick", texts, {"config": config})
    # a task run shows Completed on this page before the flow run does
    assert wait_final(ui, run_id_of(page)).state.is_completed()
    page.reload()
    page.get_by_text("Completed", exact=True).first.wait_for()
    page.wait_for_timeout(1000)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    reports = list((tmp_path / "reports").glob("*/metrics.csv"))
    assert len(reports) == 1 and len(reports[0].read_text().splitlines()) == 3  # L0, L2

    # The run's report artifact, opened as a user would: every figure shows.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    from tasks.report import REPORT_KEY

    run_id = run_id_of(page)
    with ui.client() as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[REPORT_KEY]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    page.goto(f"{ui.url}/artifacts/artifact/{artifact.id}")
    page.get_by_text("The claims").first.wait_for()
    page.locator("img[src^='data:image/png']").nth(3).wait_for()  # laminar + 3 of the model's
    page.wait_for_load_state("load")
    shown = page.locator("img").evaluate_all(
        "els => els.map(e => [e.src.slice(0, 22), e.complete ? e.naturalWidth : 0])"
    )
    assert all(width > 0 for _, width in shown), shown  # no broken image on the page
    assert sum(src == "data:image/png;base64," for src, _ in shown) == 4, shown
    page.screenshot(path=str(REPORT_SHOT), full_page=True)

    # The latent cards page of the same run, as a browser shows it: 24 cards per layer, each
    # token marked as latents.json has it.
    folder = reports[0].parent
    cards = json.loads((folder / "tiny-gpt2-latents.json").read_text())
    page.goto((folder / "tiny-gpt2-latents.html").as_uri())
    for layer, expected in cards.items():
        section = page.locator(f"section#L{int(layer):02d}")
        assert section.locator(".card").count() == 24
        marked = section.locator(".card").first.locator("mark").all_inner_texts()
        assert marked == [c["token"].replace("\n", "↵") for c in expected[0]["contexts"]]
    page.locator("section#L02").screenshot(path=str(CARDS_SHOT))

    # The same cards as the run's artifact in the Prefect UI: what the latents respond to,
    # readable where the run is (the HTML page sits on the worker's disk).
    from tasks.latents import CARDS_KEY

    with ui.client() as client:
        [shown_cards] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[f"{CARDS_KEY}-tiny-gpt2"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    page.goto(f"{ui.url}/artifacts/artifact/{shown_cards.id}")
    page.get_by_text("tiny-gpt2: latent cards").first.wait_for()
    first = cards["0"][0]
    page.get_by_text(f"latent {first['latent']}", exact=True).first.wait_for()
    bold = page.locator(".markdown-renderer__text--strong").all_inner_texts()  # Prefect's bold
    token = first["contexts"][0]["token"].replace("\n", "↵").strip() or "␣"
    assert f"latent {first['latent']}" in bold and token in bold, (token, bold[:12])
    page.screenshot(path=str(UI_CARDS_SHOT), full_page=False)


def test_a_value_the_form_lets_through_fails_its_run_with_the_sentence(
    browser,
    ui: UI,
    tiny_model: Path,
    article_server: ArticleServer,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The form checks the schema's types; what the config model checks beyond them (here an
    empty hook, a cleared field) fails the run as it starts: Failed, laminar's sentence in the
    run's log on its page, and nothing fetched or computed."""
    from test_deployments import run_config

    config = run_config(tiny_model, article_server, tmp_path) | {"hook": ""}
    page = custom_run(browser, ui, "quick", ("Sequences per batch.",), {"config": config})
    assert wait_final(ui, run_id_of(page)).state.is_failed()
    page.reload()
    page.get_by_text("Failed", exact=True).first.wait_for()
    sentence = "config.hook: --hook is empty: give the hook inside each block to read, e.g."
    page.get_by_text(sentence).first.wait_for()
    assert not (tmp_path / "pages").exists() and not (tmp_path / ".cache").exists()


def test_a_sweep_from_the_ui_form_publishes_its_matrix(
    browser,
    ui: UI,
    tiny_model: Path,
    article_server: ArticleServer,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """sweep/recipes from its form, the base and the grid typed in: each point a laminar
    subflow run of this one, completed, on Dask at once (their reports drawn at the same time),
    and the verdict matrix as the laminar-sweep artifact (the page a user opens) and sweep.md."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )
    from test_deployments import run_config

    base = run_config(tiny_model, article_server, tmp_path) | {"layers": "0", "epochs": 2}
    base |= {"task_runner": "dask", "dask_workers": 1}  # the points at once, each a thread
    base |= {"aux_coefficient": 0.5}  # read by topk's SAE, not the course's: the run says so
    grid = {"sae_arch": ["course", "topk"], "k": ["8"]}
    page = custom_run(
        browser,
        ui,
        "recipes",
        ("The settings of every point.",),
        {"sweep": {"base": base, "grid": grid}},
    )
    run_id = run_id_of(page)
    # a point's subflow shows Completed on this page before the sweep's run does
    assert wait_final(ui, run_id).state.is_completed()
    page.reload()
    page.get_by_text("Completed", exact=True).first.wait_for()
    with ui.client() as client:
        run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
        children = client.read_flow_runs()
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    assert run.parameters["sweep"]["grid"] == grid  # the form's grid, as typed
    [artifact] = [a for a in artifacts if a.key == "laminar-sweep"]
    assert "| sae_arch=course | tiny-gpt2 |" in artifact.data  # the course's SAE reads no k
    assert "| sae_arch=topk k=8 | tiny-gpt2 |" in artifact.data
    mine = {t.id for t in tasks}  # a subflow hangs from a task run of the flow run it is in
    points = [r for r in children if r.parent_task_run_id in mine]
    assert len(points) == 2 and all(r.state and r.state.is_completed() for r in points)
    assert max(r.start_time for r in points) < min(r.end_time for r in points)  # at once
    [md] = (tmp_path / "sweeps").glob("*/sweep.md")
    table, figure = md.read_text().split("![")  # the figure: sweep.png beside it, embedded here
    assert table in artifact.data and figure.endswith("(sweep.png)\n")
    unread = (  # on the sweep's own page, in its log (the single run's notice, for the sweep)
        "laminar-sweep: --sae-arch course does not read --aux-coefficient 0.5, so the run "
        "records it at its default (1)."
    )
    page.get_by_text(unread).first.wait_for()
    page.goto(f"{ui.url}/artifacts/artifact/{artifact.id}")  # the matrix as the UI shows it
    page.get_by_text("laminar sweep").first.wait_for()
    page.get_by_text("sae_arch=topk k=8").first.wait_for()
    page.locator("img[src^='data:image/png']").first.wait_for()
    page.wait_for_load_state("load")
    shown = page.locator("img").evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
    assert shown and all(width > 0 for width in shown), shown  # no broken image on the page
    page.screenshot(path=str(SWEEP_SHOT), full_page=True)


def test_the_docs_site_reads_in_a_browser(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The built docs as a newcomer opens them: the home page with its figure, the navigation,
    and the options page generated from the config model."""
    import subprocess
    import sys

    from tasks.config import Config

    site = tmp_path / "site"
    subprocess.run(
        [Path(sys.executable).parent / "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto((site / "index.html").as_uri())
    page.locator("h1").first.wait_for()
    assert page.locator("h1").first.inner_text().startswith("laminar")
    figure = page.locator("img[src$='laminar-demo.png']")
    assert figure.evaluate("e => e.complete && e.naturalWidth") > 0
    page.get_by_role("link", name="Options").first.click()
    page.wait_for_url("**/options.html")
    for name in Config.model_fields:
        page.get_by_text(f"--{name.replace('_', '-')}", exact=True).first.wait_for()
    page.screenshot(path=str(DOCS_SHOT), full_page=False)


def test_password_protected_server(
    browser,
    tmp_path: Path,
    tiny_model: Path,
    article_server: ArticleServer,  # type: ignore[no-untyped-def]
) -> None:
    """PREFECT_SERVER_API_AUTH_STRING set: the API refuses a request without it, the worker
    (given it by the launcher) runs a deployment, and the browser is asked to log in."""
    import urllib.error
    import urllib.request

    from test_deployments import run_config, run_deployment

    auth = "laminar:correct-horse-battery"
    ui = UI(prefect_home(tmp_path / "home"), auth=auth)
    try:
        request = urllib.request.Request(f"{ui.url}/api/flows/filter", data=b"{}", method="POST")
        request.add_header("Content-Type", "application/json")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        run = run_deployment(ui, "quick", run_config(tiny_model, article_server, tmp_path / "a"))
        assert run.state.type.value == "COMPLETED", run.state.message

        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(60_000)
        page.goto(f"{ui.url}/deployments")
        password = page.locator("input[type=password]")
        password.wait_for()  # the login prompt, not the deployments
        page.get_by_text("Login").first.wait_for()
        password.fill(auth)
        page.get_by_role("button", name="Login").click()
        page.goto(f"{ui.url}/deployments")
        page.get_by_text("quick", exact=True).wait_for()  # logged in: the deployments show
    finally:
        ui.stop()
