from __future__ import annotations

from email import message_from_bytes, policy

from mlpipeline.config import build_config
from mlpipeline.stages import notify

VALIDATION = {
    "deploy": True,
    "metric": "accuracy",
    "candidate_score": 0.8512,
    "threshold": 0.75,
    "champion_version": "2",
    "champion_score": 0.84,
    "reasons": ["candidate accuracy 0.8512 >= threshold 0.7500", "candidate accuracy 0.8512 >= champion v2 0.8400"],
}
TRAINING = {"model_type": "random_forest", "metrics": {"accuracy": 0.8512, "roc_auc": 0.9}, "data_sha256": "ab" * 32}


def test_success_email_carries_metrics_decision_version_and_drift() -> None:
    email = notify.success_email(
        dag_run="manual__1",
        validation=VALIDATION,
        training=TRAINING,
        deployment={"model_name": "churn", "version": "3", "previous_version": "2", "serving_url": "http://x"},
        monitoring={"healthy": True, "drifted_features": ["monthly_charges"], "max_psi": 0.31, "alerts": ["drift!"]},
    )
    assert email.subject == "[ml_pipeline] deployed churn v3: accuracy 0.8512 >= 0.7500"
    for expected in ("0.8512", "champion v2", "monthly_charges", "0.3100", "drift!", "random_forest"):
        assert expected in email.html


def test_retrain_alert_says_what_still_serves() -> None:
    decision = {**VALIDATION, "deploy": False, "candidate_score": 0.61, "threshold": 0.9, "reasons": ["too low <b>"]}
    email = notify.retrain_alert_email(dag_run="manual__1", validation=decision, training=TRAINING)
    assert "retrain needed" in email.subject and "0.6100" in email.subject and "0.9000" in email.subject
    assert "v2" in email.html
    assert "too low &lt;b&gt;" in email.html, "content is HTML-escaped"


def test_failure_email_names_the_task_and_the_error() -> None:
    email = notify.failure_email(
        dag_id="ml_pipeline", task_id="etl", dag_run="r", try_number=2, error="EtlError: bad", log_url=None
    )
    assert email.subject == "[ml_pipeline] FAILED: ml_pipeline.etl in run r"
    assert "EtlError: bad" in email.html


def test_success_email_adds_the_data_section_only_with_an_etl_record() -> None:
    common = {
        "dag_run": "r",
        "validation": VALIDATION,
        "training": TRAINING,
        "deployment": {"model_name": "churn", "version": "3"},
        "monitoring": {"drifted_features": []},
    }
    without = notify.success_email(**common)
    assert "<h3>Data</h3>" not in without.html and "<td>none</td>" in without.html  # no drifted feature
    etl = {"rows_in": 1000, "rows_out": 990, "rows_quarantined": 4, "duplicates_dropped": 6}
    email = notify.success_email(**common, etl=etl)
    assert email.html.startswith(without.html) and email.subject == without.subject
    data = email.html.split("<h3>Data</h3>", 1)[1]
    for label, value in [("rows fetched", 1000), ("rows used", 990), ("rows quarantined", 4), ("duplicates", 6)]:
        assert f"{label}" in data and f"<td>{value}</td>" in data


REGRESSION_VALIDATION = {
    "deploy": True,
    "metric": "rmse",
    "candidate_score": 3.2,
    "threshold": 4.0,
    "champion_version": "2",
    "champion_score": 3.5,
    "reasons": ["candidate rmse 3.2000 <= threshold 4.0000 (lower is better)"],
    "task": "regression",
}
REGRESSION_TRAINING = {
    "model_type": "ridge",
    "task": "regression",
    "classes": [],
    "metrics": {"rmse": 3.2, "mae": 2.5, "r2": 0.41},
}


def test_a_lower_is_better_metric_is_shown_with_its_direction_and_no_accuracy_is_assumed() -> None:
    email = notify.success_email(
        dag_run="r",
        validation=REGRESSION_VALIDATION,
        training=REGRESSION_TRAINING,
        deployment={"model_name": "house_prices", "version": "3"},
        monitoring={"healthy": True, "drifted_features": [], "target_drifted": None, "predictions_drifted": False},
    )
    assert email.subject == "[ml_pipeline] deployed house_prices v3: rmse 3.2000 (lower is better) <= 4.0000"
    assert "rmse 3.2000 (lower is better) &lt;= threshold 4.0000" in email.html
    assert "<th align='left' style='padding-right:1em'>rmse (lower is better)</th><td>3.2000</td>" in email.html
    assert "mae (lower is better)" in email.html and "<th align='left' style='padding-right:1em'>r2</th>" in email.html
    assert "<td>regression</td>" in email.html and "classes" not in email.html
    assert "target drifted</th><td>not compared</td>" in email.html
    assert "accuracy" not in email.subject + email.html


def test_retrain_alert_for_a_lower_is_better_metric_with_and_without_a_bar() -> None:
    failed = {**REGRESSION_VALIDATION, "deploy": False, "candidate_score": 5.1}
    email = notify.retrain_alert_email(dag_run="r", validation=failed, training=REGRESSION_TRAINING)
    assert email.subject.endswith("not deployed (rmse 5.1000, lower is better, threshold 4.0000)")
    assert "<td>rmse (lower is better)</td>" in email.html
    unbarred = notify.retrain_alert_email(
        dag_run="r", validation={**failed, "threshold": None}, training=REGRESSION_TRAINING
    )
    assert unbarred.subject.endswith("(rmse 5.1000, lower is better, no threshold)")
    assert "threshold</th><td>none</td>" in unbarred.html
    deployed = notify.success_email(
        dag_run="r",
        validation={**REGRESSION_VALIDATION, "metric": "mae", "threshold": None},
        training=REGRESSION_TRAINING,
        deployment={"model_name": "m", "version": "1"},
        monitoring={},
    )
    assert deployed.subject.endswith(": mae 3.2000 (lower is better), no threshold")


def test_a_multiclass_record_renders_its_classes_and_skips_the_confusion_matrix() -> None:
    training = {
        "model_type": "logistic_regression",
        "task": "multiclass",
        "classes": ["setosa", "versicolor", "virginica"],
        "metrics": {"accuracy": 0.9667, "f1_macro": 0.9665, "log_loss": 0.12, "roc_auc_ovr": 0.99},
    }
    validation = {**VALIDATION, "metric": "log_loss", "candidate_score": 0.12, "threshold": 0.3}
    email = notify.success_email(
        dag_run="r",
        validation=validation,
        training={**training, "metrics": {**training["metrics"], "confusion_matrix": [[10, 0, 0], [0, 9, 1]]}},
        deployment={"model_name": "iris", "version": "1"},
        monitoring={"live_accuracy": 0.95},
    )
    assert email.subject.endswith(": log_loss 0.1200 (lower is better) <= 0.3000")
    assert "<td>setosa, versicolor, virginica</td>" in email.html and "<td>multiclass</td>" in email.html
    assert "live accuracy</th><td>0.9500</td>" in email.html and "confusion" not in email.html
    many = {**training, "classes": list(range(25))}
    alert = notify.retrain_alert_email(dag_run="r", validation={**validation, "deploy": False}, training=many)
    assert (
        "<td>0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, ... (25 in all)</td>" in alert.html
    )


# --- links, and the message as sent -------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # bytes a text encoding would mangle


def test_links_go_under_the_heading_and_only_where_a_ui_is_configured() -> None:
    email = notify.retrain_alert_email(dag_run="r", validation={**VALIDATION, "deploy": False}, training=TRAINING)
    assert notify.with_links(email, notify.run_links(build_config({}), dag_id="d", airflow_run_id="x")) == email
    config = build_config({"airflow_ui_url": "https://airflow.example/", "mlflow_ui_url": "https://mlflow.example"})
    linked = notify.run_links(
        config, dag_id="ml_pipeline", airflow_run_id="manual__1+0", mlflow_run_id="abc", task_id="etl"
    )
    assert linked.airflow_run == "https://airflow.example/dags/ml_pipeline/runs/manual__1%2B0"
    assert linked.airflow_task == linked.airflow_run + "/tasks/etl"
    assert linked.mlflow_run == "https://mlflow.example/#/runs/abc?workflowType=machine_learning"
    html = notify.with_links(email, linked).html
    heading, rest = html.split("</h2>", 1)
    assert heading == email.html.split("</h2>", 1)[0]
    assert rest.lstrip().startswith(
        '<p><a href="https://airflow.example/dags/ml_pipeline/runs/manual__1%2B0">Airflow run</a> | '
    )
    assert '<a href="https://mlflow.example/#/runs/abc?workflowType=machine_learning">MLflow run</a></p>' in rest


def test_a_message_with_an_inline_image_and_an_attachment_parses_back() -> None:
    image = notify.InlineImage(notify.inline_image_id("summary"), PNG)
    page = "<!DOCTYPE html><html><body><h1>ml_pipeline run r</h1>" + "é" * 5000 + "</body></html>"
    email = notify.Email(
        subject="[ml_pipeline] deployed",
        html=f'<p><img src="cid:{image.content_id}"></p><h2>New champion</h2>',
        attachments=(notify.Attachment("report.html", page.encode(), "text/html"),),
        inline_images=(image,),
    )
    recipients = ["ops@example.com", "ml@example.com"]
    sent = notify.mime_message(email, sender="bot@example.com", recipients=recipients).as_bytes()

    message = message_from_bytes(sent, policy=policy.default)
    assert message.get_content_type() == "multipart/mixed" and message["To"] == "ops@example.com, ml@example.com"
    related, attached = message.get_payload()
    assert related.get_content_type() == "multipart/related"
    body, picture = related.get_payload()
    assert body.get_content_type() == "text/html" and f'src="cid:{image.content_id}"' in body.get_content()
    assert picture.get_content_type() == "image/png" and picture["Content-ID"] == f"<{image.content_id}>"
    assert picture.get_content_disposition() == "inline" and picture.get_content() == PNG
    assert attached.get_content_type() == "text/html" and attached.get_filename() == "report.html"
    assert attached.get_content_disposition() == "attachment"
    assert attached.get_payload(decode=True) == page.encode()
    assert message.get_body(("html",)) is body
    assert max(len(line) for line in sent.splitlines()) <= 998  # SMTP's line limit


def test_a_plain_email_stays_a_single_html_part() -> None:
    sent = notify.mime_message(notify.Email("s", "<p>h</p>"), sender="a@example.com", recipients=["b@example.com"])
    assert sent.get_content_type() == "text/html" and not sent.is_multipart()
