from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlpipeline.config import PipelineConfig, build_config
from mlpipeline.dev.mailcatcher import MailCatcher
from mlpipeline.registry import ensure_experiment, use_tracking
from mlpipeline.stages.notify import Email, InlineImage
from mlpipeline.storage import DataLayout
from mlpipeline_airflow.notifications import send_email, send_run_email


def test_sends_to_the_configured_recipients_from_the_configured_sender(mail: MailCatcher) -> None:
    config = build_config({"notification_email": "ops@example.com, ml@example.com", "email_from": "bot@example.com"})
    send_email(config, Email(subject="[ml_pipeline] hello", html="<p>the <b>report</b></p>"))

    [message] = mail.messages()
    assert message["Subject"] == "[ml_pipeline] hello"
    assert message["From"] == "bot@example.com"
    assert message["To"] == "ops@example.com, ml@example.com"
    assert "<p>the <b>report</b></p>" in message.get_body(("html",)).get_content()


@pytest.mark.usefixtures("mail_server_down")
def test_an_unreachable_mail_server_raises() -> None:
    """Tasks that send (success email, retrain alert, drift alert) must fail then, so Airflow retries them."""
    with pytest.raises(OSError):
        send_email(build_config({}), Email(subject="s", html="h"))


def _mlflow_run(root: Path) -> tuple[PipelineConfig, str]:
    """A config with its own MLflow store and data dir, and one finished run in it (the "chosen candidate")."""
    config = build_config(
        {
            "data_dir": str(root / "data"),
            "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "mlflow_artifact_location": str(root / "artifacts"),
            "notification_email": "ops@example.com",
            "airflow_ui_url": "http://airflow.example:8080",
            "mlflow_ui_url": "http://mlflow.example:5000",
        }
    )
    client = use_tracking(config)
    experiment = ensure_experiment(client, config.mlflow_experiment, config.mlflow_artifact_location)
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id)
    return config, run_id


def test_a_run_email_carries_links_the_report_attached_and_its_picture_inline(
    mail: MailCatcher, tmp_path: Path
) -> None:
    config, run_id = _mlflow_run(tmp_path)
    email = Email(subject="[ml_pipeline] retrain needed", html="<h2>The candidate model was not deployed</h2>")
    for _ in range(2):  # a retried email task: the same report, logged and sent again
        send_run_email(config, email, dag_id="ml_pipeline", airflow_run_id="manual__1", run="r1", mlflow_run_id=run_id)

    report = DataLayout.of(config.data_dir).run_records("r1") / "report.html"
    logged = MlflowClient(config.mlflow_tracking_uri).list_artifacts(run_id, "report")
    assert [artifact.path for artifact in logged] == ["report/report.html"]
    first, second = mail.messages()
    assert first["Subject"] == second["Subject"] == email.subject
    html = first.get_body(("html",)).get_content()
    assert '<a href="http://airflow.example:8080/dags/ml_pipeline/runs/manual__1">Airflow run</a>' in html
    assert f'<a href="http://mlflow.example:5000/#/runs/{run_id}?workflowType=machine_learning">MLflow run</a>' in html
    assert f"runs:/{run_id}/report/report.html" in html and "Not available" not in html
    [image] = [part for part in first.walk() if part.get_content_type() == "image/png"]
    assert f'src="cid:{image["Content-ID"].strip("<>")}"' in html and image.get_content().startswith(b"\x89PNG")
    [attached] = [part for part in second.iter_attachments() if part.get_filename() == "report.html"]
    assert attached.get_payload(decode=True) == report.read_bytes()  # the second send's report, rewritten


def test_a_report_that_cannot_be_built_does_not_stop_the_email(
    mail: MailCatcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, run_id = _mlflow_run(tmp_path)
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the data directory should be")
    config = config.model_copy(update={"data_dir": str(blocked)})
    email = Email(  # long enough that Python's default policy folds it before its first word
        subject="[ml_pipeline] deployed penguins_classifier v1: accuracy 1.0000 >= 0.7500", html="<h2>New champion</h2>"
    )
    send_run_email(config, email, dag_id="ml_pipeline", airflow_run_id="manual__1", run="r1", mlflow_run_id=run_id)

    [message] = mail.messages()
    assert message["Subject"] == email.subject  # no leading space from a fold
    html = message.get_body(("html",)).get_content()
    assert "<h2>New champion</h2>" in html
    assert "Not available: the report could not be built: NotADirectoryError" in html
    assert not [part.get_filename() for part in message.iter_attachments() if part.get_filename()]
    assert not MlflowClient(config.mlflow_tracking_uri).list_artifacts(run_id, "report")
    assert any("the report could not be built" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


@pytest.mark.usefixtures("mail_server_down")
def test_an_unreachable_mail_server_fails_a_rich_email_too() -> None:
    email = Email(subject="s", html="h", inline_images=(InlineImage("x@mlpipeline", b"\x89PNG"),))
    with pytest.raises(OSError):
        send_email(build_config({}), email)
