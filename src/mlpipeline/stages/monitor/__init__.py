"""Monitor stage: is the live endpoint healthy and serving the deployed version, and has the data drifted?

Health problems (endpoint down, failing or slow live predictions, wrong version) raise :class:`MonitorError` after
the report is written; drift only adds alerts, which the DAG emails.

Modules: :mod:`.drift` (PSI, KS, per-feature drift), :mod:`.live` (endpoint probes), :mod:`.report` (the typed
report), :mod:`.tracking` (MLflow), :mod:`.stage` (the stage).
"""

from mlpipeline.stages.monitor.drift import (
    PSI_EPSILON,
    DriftReport,
    FeatureDrift,
    categorical_psi,
    drift_report,
    ks_test,
    population_stability_index,
)
from mlpipeline.stages.monitor.live import LiveChecks
from mlpipeline.stages.monitor.report import REPORT_FILE, MonitorError, MonitorReport, MonitorResult
from mlpipeline.stages.monitor.stage import monitor

__all__ = [
    "PSI_EPSILON",
    "REPORT_FILE",
    "DriftReport",
    "FeatureDrift",
    "LiveChecks",
    "MonitorError",
    "MonitorReport",
    "MonitorResult",
    "categorical_psi",
    "drift_report",
    "ks_test",
    "monitor",
    "population_stability_index",
]
