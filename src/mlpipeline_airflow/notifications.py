"""Sending the pipeline's emails through Airflow's SMTP connection (composing them is ``mlpipeline.stages.notify``;
the report they carry, ``mlpipeline.stages.report.publish``)."""

from __future__ import annotations

import logging
import os
import smtplib
from email.policy import SMTP as SMTP_POLICY

from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.sdk import get_current_context

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.notify import Email, mime_message, run_links, with_links

log = logging.getLogger(__name__)

# CRLF line ends (smtplib sends bytes as they are), and headers folded only past RFC 5322's hard limit: Python folds
# a long subject *before its first word* ("Subject:\r\n [ml_pipeline] ..."), which readers show with a leading space.
# The bodies were encoded when the message was built (quoted-printable, 76-character lines), so only headers change.
WIRE_POLICY = SMTP_POLICY.clone(max_line_length=998)

# Read once per process: the connection (host, port, TLS, retries) is configured in Airflow, not here.
SMTP_CONN_ID = os.environ.get("ML_PIPELINE_SMTP_CONN_ID", "smtp_default")


def send_email(config: PipelineConfig, email: Email) -> None:
    """Send ``email`` to the config's ``notification_email``, from its ``email_from``. One with attachments or
    inline images is built here (``notify.mime_message``) and sent over the hook's connection: the hook's own
    builder attaches every file as application/octet-stream, which mail readers do not show inline."""
    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as smtp:
        if email.attachments or email.inline_images:
            _send_mime(smtp, config, email)
        else:
            smtp.send_email_smtp(
                to=config.notification_email,
                subject=email.subject,
                html_content=email.html,
                from_email=config.email_from,
            )
    log.info("sent %r to %s", email.subject, config.notification_email)


def _send_mime(smtp: SmtpHook, config: PipelineConfig, email: Email) -> None:
    recipients = list(config.notification_email)
    message = mime_message(email, sender=config.email_from, recipients=recipients)
    # The hook connects (TLS, login) on entering its context and keeps the client; it has no public accessor.
    client = getattr(smtp, "_smtp_client", None)
    if not isinstance(client, (smtplib.SMTP, smtplib.SMTP_SSL)):
        raise RuntimeError(f"the SMTP hook of connection {SMTP_CONN_ID!r} has no connected client")
    for attempt in range(smtp.smtp_retry_limit + 1):  # as the hook's own send_email_smtp retries
        try:
            client.sendmail(config.email_from, recipients, message.as_bytes(policy=WIRE_POLICY))
            return
        except smtplib.SMTPException:
            if attempt == smtp.smtp_retry_limit:
                raise


def send_run_email(
    config: PipelineConfig,
    email: Email,
    *,
    run: str,
    mlflow_run_id: str | None = None,
    dag_id: str | None = None,
    airflow_run_id: str | None = None,
) -> Email:
    """Send an email about pipeline run ``run`` (the run key), with links to its Airflow run and to
    ``mlflow_run_id`` (the chosen candidate's MLflow run), and the run's report: written, logged to that MLflow run,
    attached with its summary picture inline. A report that fails is left out and the email says why. ``dag_id``
    and ``airflow_run_id`` default to the running task's. Returns what was sent."""
    # Imported here, not at the top: the report brings matplotlib, scikit-learn and MLflow, which the DAG files
    # (parsed often) and the failure callback (this module's other users) do not need.
    from mlpipeline.stages.report.publish import publish_report, with_report

    if dag_id is None or airflow_run_id is None:
        context = get_current_context()
        dag_id = dag_id or context["dag"].dag_id
        airflow_run_id = airflow_run_id or context["run_id"]
    links = run_links(config, dag_id=dag_id, airflow_run_id=airflow_run_id, mlflow_run_id=mlflow_run_id)
    sent = with_report(with_links(email, links), publish_report(config, run=run, mlflow_run_id=mlflow_run_id))
    send_email(config, sent)
    return sent
