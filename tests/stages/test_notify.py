from __future__ import annotations

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
