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
