"""Live monitoring (the ``model_monitoring`` DAG): the champion's traffic, as the model server logs it, against the
champion's own reference, bound to its registered version at deploy.

Modules: :mod:`.reference` (the reference: written at deploy, read from the registry), :mod:`.traffic` (reading a
window of the prediction log), :mod:`.scoring` (the live score from feedback), :mod:`.check` (the check and its
verdict), :mod:`.records` (JSON, dashboard rows, MLflow), :mod:`.retrain` (the retraining cool-down),
:mod:`.alert` (the email), :mod:`.purge` (the log's retention).
"""

from mlpipeline.stages.live.check import (
    DEGRADED,
    HEALTHY,
    NOT_ENOUGH_TRAFFIC,
    LiveCheck,
    LiveMonitoringError,
    NothingToMonitor,
    check_live_traffic,
)
from mlpipeline.stages.live.purge import PurgeResult, purge_prediction_log
from mlpipeline.stages.live.reference import Reference, ReferenceError, bind_reference, champion_reference

__all__ = [
    "DEGRADED",
    "HEALTHY",
    "NOT_ENOUGH_TRAFFIC",
    "LiveCheck",
    "LiveMonitoringError",
    "NothingToMonitor",
    "PurgeResult",
    "Reference",
    "ReferenceError",
    "bind_reference",
    "champion_reference",
    "check_live_traffic",
    "purge_prediction_log",
]
