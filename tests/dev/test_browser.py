"""The UIs as a person uses them, in a real browser (chromium under Playwright) against the production process stack:
log in to Airflow (FAB's form), trigger ``ml_pipeline`` from its form with changed settings, follow the run, and
go from its task page to the MLflow run and the run's report. Screenshots of every step are kept under
``test-artifacts/browser/``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest

from mlpipeline.dev.localstack import AirflowClient
from mlpipeline.dev.stack import ProcessStack
from mlpipeline.storage import DataLayout, read_json, run_key
from tests.browser_support import Screenshots, chromium_browser, require_chromium, undecoded_images

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Frame, Page

# A whole pipeline run on the shared stack, on a machine that may be busy: longer than the default test timeout.
pytestmark = [pytest.mark.airflow, pytest.mark.timeout(2400)]
DAG = "ml_pipeline"
# What the form changes: a seed no other stack test uses (so the run trains whatever ran before it), and a bar the
# churn data's noisy labels cannot reach, so the run is rejected and leaves the champion to the other stack tests.
FORM_VALUES = {"random_state": 23, "metric_threshold": 0.99}
FORM_SECTIONS = {"random_state": "The model", "metric_threshold": "Judging it"}
RUN_TIMEOUT_SECONDS = 1200


@dataclass
class UiRun:
    """The run the browser triggered, and the logged-in browser context that did it."""

    run_id: str
    state: str
    context: BrowserContext
    shots: Screenshots


@pytest.fixture(scope="package", autouse=True)
def chromium() -> str:
    """Checked first (autouse: before the stack starts): without a browser there is nothing to start it for."""
    return require_chromium()


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with chromium_browser(chromium) as running:
        yield running


def _secrets(stack: ProcessStack) -> dict[str, str]:
    return json.loads((stack.root / "secrets.json").read_text())


def _client(stack: ProcessStack) -> AirflowClient:
    secrets = _secrets(stack)
    return AirflowClient(stack.api_url, secrets["AIRFLOW_ADMIN_USERNAME"], secrets["AIRFLOW_ADMIN_PASSWORD"])


def _log_in(page: Page, stack: ProcessStack, shots: Screenshots) -> None:
    """FAB's login form: anonymous visitors land on it, the admin's credentials get through it."""
    page.goto(f"{stack.api_url}/dags/{DAG}")
    page.wait_for_url("**/auth/login/**")
    shots.take(page, "login-form")
    secrets = _secrets(stack)
    page.locator("#username").fill(secrets["AIRFLOW_ADMIN_USERNAME"])
    page.locator("#password").fill(secrets["AIRFLOW_ADMIN_PASSWORD"])
    page.locator("input[type=submit]").click()
    page.wait_for_url(f"{stack.api_url}/dags/{DAG}")
    page.get_by_role("button", name="Trigger").wait_for()
    shots.take(page, "dag-page")


def _trigger_from_form(page: Page, shots: Screenshots) -> dict[str, Any]:
    """Fill the trigger form's fields (one per run-changeable setting) and press Trigger; the run the UI created."""
    page.get_by_role("button", name="Trigger").click()
    dialog = page.get_by_role("dialog")
    for name, value in FORM_VALUES.items():
        field = dialog.get_by_label(name, exact=True)
        if not field.is_visible():  # its section is folded (the form shows one section at a time)
            dialog.get_by_role("button", name=FORM_SECTIONS[name]).click()
        field.fill(str(value))
    shots.take(page, "trigger-form-filled")
    with page.expect_response(
        lambda response: response.url.endswith(f"/dags/{DAG}/dagRuns") and response.request.method == "POST"
    ) as created:
        dialog.get_by_role("button", name="Trigger", exact=True).click()
    response = created.value
    assert response.status == 200, response.text()
    run = response.json()
    page.wait_for_url(f"**/dags/{DAG}/runs/**")
    shots.take(page, "run-page-queued")
    return run


def _wait_for_end(client: AirflowClient, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    state = ""
    while time.monotonic() < deadline:
        state = client.run_state(DAG, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(3)
    raise AssertionError(
        f"run {run_id} did not finish in {RUN_TIMEOUT_SECONDS} s (last state {state}): "
        f"{client.task_states(DAG, run_id)}"
    )


@pytest.fixture(scope="module")
def ui_run(browser: Browser, stack: ProcessStack, request: pytest.FixtureRequest) -> Iterator[UiRun]:
    """Log in, trigger from the form, and follow the run to its end (over the REST API)."""
    shots = Screenshots.for_test(Path(request.node.name).stem)
    secrets = _secrets(stack)
    # A person's MLflow login, answered only to MLflow's origin (its basic-auth challenge), never to Airflow's.
    mlflow_login = {
        "username": secrets["MLFLOW_ADMIN_USERNAME"],
        "password": secrets["MLFLOW_ADMIN_PASSWORD"],
        "origin": stack.mlflow_url,
    }
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, http_credentials=mlflow_login)
    page = context.new_page()
    try:
        client = _client(stack)
        client.wait_for_dag(DAG, timeout=900)  # parsing is slow on a busy machine
        _log_in(page, stack, shots)
        run_id = str(_trigger_from_form(page, shots)["dag_run_id"])
        page.close()
        yield UiRun(run_id=run_id, state=_wait_for_end(client, run_id), context=context, shots=shots)
    finally:
        context.close()


def test_the_trigger_form_starts_a_run_with_the_values_entered(ui_run: UiRun, stack: ProcessStack) -> None:
    client = _client(stack)
    stored = client.get(f"/api/v2/dags/{DAG}/dagRuns/{ui_run.run_id}")
    assert (
        stored["triggered_by"] == "ui" and stored["triggering_user_name"] == _secrets(stack)["AIRFLOW_ADMIN_USERNAME"]
    )
    for name, value in FORM_VALUES.items():
        assert stored["conf"][name] == value, (name, stored["conf"])
    # The fields left empty mean "the Variable": the form sends them as null, never as a made-up value.
    assert {name for name, value in stored["conf"].items() if value is not None} == set(FORM_VALUES)

    assert ui_run.state == "success", client.task_states(DAG, ui_run.run_id)
    states = client.task_states(DAG, ui_run.run_id)
    # The form's bar decided the run: trained and judged, rejected, the champion left alone.
    assert states["train_model"] == "success" and states["validate_model"] == "success", states
    assert states["retrain_alert"] == "success" and states["deploy_model"] == "skipped", states
    records = DataLayout.of(stack.root / "data").run_records(run_key(ui_run.run_id))
    frozen = read_json(records / "config.json")
    assert {name: frozen[name] for name in FORM_VALUES} == FORM_VALUES
    judged = read_json(records / "validate.json")
    assert judged["threshold"] == FORM_VALUES["metric_threshold"] and judged["deploy"] is False, judged

    page = ui_run.context.new_page()
    page.goto(f"{stack.api_url}/dags/{DAG}/runs/{quote(ui_run.run_id, safe='')}")
    page.get_by_text("retrain_alert").first.wait_for()
    ui_run.shots.take(page, "run-page-finished")
    page.close()


def _chosen_mlflow_run(stack: ProcessStack, run_id: str) -> str:
    """The MLflow run of the candidate validate_model judged, from the run's records."""
    layout = DataLayout.of(stack.root / "data")
    candidate = read_json(layout.run_records(run_key(run_id)) / "validate.json")["candidate"]
    return str(read_json(layout.models(run_key(run_id)) / candidate / "train.json")["mlflow_run_id"])


def _open_extra_link(ui_run: UiRun, stack: ProcessStack, task_id: str, name: str) -> Page:
    """From the task instance page's Details tab, follow the extra link ``name`` (it opens a new tab)."""
    page = ui_run.context.new_page()
    page.goto(f"{stack.api_url}/dags/{DAG}/runs/{quote(ui_run.run_id, safe='')}/tasks/{task_id}")
    page.get_by_role("link", name="Details", exact=True).click()
    link = page.get_by_role("link", name=name, exact=True)
    link.wait_for(timeout=60_000)
    ui_run.shots.take(page, f"{task_id}-extra-links")
    with page.expect_popup() as opened:
        link.click()
    page.close()
    return opened.value


def test_the_task_page_links_to_its_mlflow_run(ui_run: UiRun, stack: ProcessStack) -> None:
    assert ui_run.state == "success"
    mlflow_run_id = _chosen_mlflow_run(stack, ui_run.run_id)
    mlflow_page = _open_extra_link(ui_run, stack, "validate_model", "MLflow run")
    assert mlflow_page.url.startswith(f"{stack.mlflow_url}/") and mlflow_run_id in mlflow_page.url, mlflow_page.url
    # MLflow's run page: its name (the Airflow run and the candidate) and id, once the UI has fetched the run.
    mlflow_page.get_by_text(f"train-{run_key(ui_run.run_id)}", exact=False).first.wait_for(timeout=120_000)
    mlflow_page.get_by_text(mlflow_run_id, exact=True).first.wait_for()
    ui_run.shots.take(mlflow_page, "mlflow-run-page")
    mlflow_page.close()


def test_the_report_link_shows_the_report_with_its_plots(ui_run: UiRun, stack: ProcessStack) -> None:
    assert ui_run.state == "success"
    report_page = _open_extra_link(ui_run, stack, "validate_model", "Report")
    assert report_page.url.startswith(f"{stack.mlflow_url}/"), report_page.url
    report = _report_frame(report_page)
    ui_run.shots.take(report_page, "report-in-mlflow")
    # The report of this run, with the bar the form set deciding it.
    decision = report.locator("section#decision").inner_text()
    assert "REJECT" in decision.upper() and f"{FORM_VALUES['metric_threshold']:.4f}" in decision, decision
    assert report.locator("section#confusion img").count() > 0, "the report shows no confusion matrix"
    images = report.locator("img").count()
    assert undecoded_images(report) == [], f"plots that did not render (of {images})"
    ui_run.shots.take(report_page, "report-plots")  # scrolled to its last plot
    report_page.close()


def _report_frame(page: Page) -> Frame:
    """The frame MLflow's artifact view shows the HTML report in (the page itself if it is not framed)."""
    from playwright.sync_api import Error as PlaywrightError

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if frame.locator("section#decision").count():
                    return frame
            except PlaywrightError:  # a frame detached while looking
                continue
        page.wait_for_timeout(1000)
    raise AssertionError(f"no report (section#decision) in {page.url} or its frames")
