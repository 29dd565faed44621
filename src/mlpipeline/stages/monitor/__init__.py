"""Monitor stage: is the live endpoint healthy and serving the deployed version, and has the data drifted?

Health problems (endpoint down, failing or slow live predictions, wrong version) raise :class:`MonitorError` after
the report is written; drift only adds alerts, which the DAG emails.

Drift covers every feature, the target and the deployed model's predictions, each compared the way the task says
(classes or numbers).

Modules: :mod:`.drift` (PSI, KS, drift of features, target and predictions), :mod:`.live` (endpoint probes),
:mod:`.report` (the typed report), :mod:`.tracking` (MLflow), :mod:`.stage` (the stage).
"""

from mlpipeline.stages.monitor.drift import (
    PREDICTION_SAMPLE_ROWS,
    PSI_EPSILON,
    DriftReport,
    FeatureDrift,
    categorical_psi,
    class_labels,
    drift_report,
    ks_test,
    outcome_drift,
    population_stability_index,
    prediction_drift,
    target_drift,
)
from mlpipeline.stages.monitor.live import LiveChecks
from mlpipeline.stages.monitor.report import REPORT_FILE, MonitorError, MonitorReport, MonitorResult
from mlpipeline.stages.monitor.stage import monitor

__all__ = [
    "PREDICTION_SAMPLE_ROWS",
    "PSI_EPSILON",
    "REPORT_FILE",
    "DriftReport",
    "FeatureDrift",
    "LiveChecks",
    "MonitorError",
    "MonitorReport",
    "MonitorResult",
    "categorical_psi",
    "class_labels",
    "drift_report",
    "ks_test",
    "monitor",
    "outcome_drift",
    "population_stability_index",
    "prediction_drift",
    "target_drift",
]
