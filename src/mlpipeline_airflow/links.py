"""Extra links of the pipeline's tasks in the Airflow UI: "MLflow run" and "Report".

How Airflow 3.1 shows a link of a TaskFlow task: the operator's *class* lists its ``operator_extra_links``; when a
try ends, the worker calls each link's ``get_link`` (``task_runner.finalize``) and stores the URL as an XCom
(``_link_<LinkClass>``); the API server serves the stored value (``GET /api/v2/dags/{dag}/dagRuns/{run}/
taskInstances/{task}/links``, as ``XComOperatorLink`` reads it) and never runs our code. So:

* the URL is built where the run's config is known (the worker), from the record the task returned;
* a mapped task is unmapped into a fresh instance of ``operator_class``: the links must be on the class, not on
  the operator instance, which is why :func:`with_links` makes a subclass rather than setting an attribute;
* ``finalize`` logs any exception of ``get_link`` at ERROR level, so ``get_link`` never raises: without an MLflow UI
  (a ``sqlite:`` tracking URI and no ``mlflow_ui_url``) or without what it needs, the link is empty (the UI shows it
  disabled), never a broken URL.

"Report" opens the run's report (``report/report.html``, logged to the chosen candidate's MLflow run) in the MLflow
UI's artifact view: that view renders HTML artifacts in a sandboxed iframe (images as ``data:`` URIs included),
while MLflow's download endpoint (``/get-artifact``) always answers ``Content-Disposition: attachment`` (against XSS
on the tracking server's origin), so a browser would download the file instead of showing it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import attrs
from airflow.sdk import BaseOperatorLink

from mlpipeline.config import PipelineConfig, read_config
from mlpipeline.links import mlflow_run_url, mlflow_ui_base

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator

log = logging.getLogger(__name__)

REPORT_ARTIFACT = "report/report.html"
"""Where the run's report is logged in the chosen candidate's MLflow run (the shared contract)."""


@attrs.define
class _RecordLink(BaseOperatorLink):
    """A link built from a task's returned record (``{"config_path", "train": {"mlflow_run_id"}, ...}``).

    ``record_from``: the task whose record to read, when the linked task returns something else (the email tasks
    return a subject: they link to what ``validate_model`` chose)."""

    record_from: str | None = None

    def get_link(self, operator: BaseOperator, *, ti_key: Any) -> str:
        # In the worker ``ti_key`` is the running task instance (finalize passes it); elsewhere no link is built.
        if not hasattr(ti_key, "xcom_pull") or getattr(ti_key, "state", "success") != "success":
            return ""  # a failed try returned no record (pulling it would log "XCom not found" as an ERROR)
        try:
            record = ti_key.xcom_pull(task_ids=self.record_from or ti_key.task_id, map_indexes=self._map_index(ti_key))
            if not isinstance(record, dict) or not isinstance(record.get("train"), dict):
                return ""
            return self.url(read_config(record["config_path"]), str(record["train"]["mlflow_run_id"])) or ""
        except Exception:  # a link must never fail the task's bookkeeping; said, not raised
            log.warning("no %r link for %s", self.name, getattr(ti_key, "task_id", "?"), exc_info=True)
            return ""

    def _map_index(self, ti: Any) -> int | None:
        # A mapped task reads its own instance's record; another task's record is an unmapped one's.
        return None if self.record_from else getattr(ti, "map_index", -1)

    def url(self, config: PipelineConfig, mlflow_run_id: str) -> str | None:
        raise NotImplementedError


@attrs.define
class MlflowRunLink(_RecordLink):
    """The MLflow run of the task's candidate: each ``train_model`` instance its own; ``validate_model`` and
    ``deploy_model`` the chosen one."""

    name: ClassVar[str] = "MLflow run"

    def url(self, config: PipelineConfig, mlflow_run_id: str) -> str | None:
        if mlflow_ui_base(config) is None:
            return None
        return mlflow_run_url(config, mlflow_run_id, experiment_of(config, mlflow_run_id))


@attrs.define
class ReportLink(_RecordLink):
    """The run's report as logged to the chosen candidate's MLflow run, in the MLflow UI's artifact view.

    ``require_logged``: link only if the artifact is there (tasks that run after the report is logged); otherwise
    the link is built ahead of the report (``validate_model`` runs before the report exists)."""

    require_logged: bool = False
    name: ClassVar[str] = "Report"

    def url(self, config: PipelineConfig, mlflow_run_id: str) -> str | None:
        base = mlflow_ui_base(config)
        if base is None:
            return None
        experiment_id = experiment_of(config, mlflow_run_id)
        if experiment_id is None:
            return None  # the artifact view's route needs the experiment
        if self.require_logged and not report_is_logged(config, mlflow_run_id):
            log.info("no report logged to MLflow run %s yet: no Report link", mlflow_run_id)
            return None
        return artifact_view_url(base, experiment_id, mlflow_run_id, REPORT_ARTIFACT)


def artifact_view_url(base: str, experiment_id: str, mlflow_run_id: str, artifact_path: str) -> str:
    """The MLflow UI page that shows one artifact of a run (``getRunPageRoute(experiment, run, path)`` in its UI)."""
    run = f"{base}/#/experiments/{quote(experiment_id, safe='')}/runs/{quote(mlflow_run_id, safe='')}"
    return f"{run}/artifacts/{quote(artifact_path, safe='/')}"


def experiment_of(config: PipelineConfig, mlflow_run_id: str) -> str | None:
    """The experiment of an MLflow run (one tracking call), None if the tracking server cannot say."""
    from mlflow import MlflowClient

    try:
        return str(MlflowClient(tracking_uri=config.mlflow_tracking_uri).get_run(mlflow_run_id).info.experiment_id)
    except Exception:  # the link degrades (no experiment in it), the task is not concerned
        log.warning("cannot look up MLflow run %s", mlflow_run_id, exc_info=True)
        return None


def report_is_logged(config: PipelineConfig, mlflow_run_id: str) -> bool:
    from mlflow import MlflowClient

    folder, _, _ = REPORT_ARTIFACT.rpartition("/")
    artifacts = MlflowClient(tracking_uri=config.mlflow_tracking_uri).list_artifacts(mlflow_run_id, folder)
    return any(artifact.path == REPORT_ARTIFACT for artifact in artifacts)


def with_links(decorated: Any, *links: BaseOperatorLink) -> Any:
    """The ``@task``-decorated function ``decorated``, its tasks showing ``links`` in the UI (mapped ones too).

    Like ``.override()``, it returns a new decorated function: its operator class is a subclass of the original
    that lists the links (the UI still says ``@task``)."""
    base = decorated.operator_class
    name = f"{base.__name__.lstrip('_')}With{''.join(type(link).__name__ for link in links)}"
    operator_class = type(name, (base,), {"operator_extra_links": tuple(links), "__module__": __name__})
    result = attrs.evolve(decorated, operator_class=operator_class)
    for flag in ("is_setup", "is_teardown", "on_failure_fail_dagrun"):  # as override() keeps them
        setattr(result, flag, getattr(decorated, flag))
    return result
