"""Sending the pipeline's emails through Airflow's SMTP connection (composing them is ``mlpipeline.stages.notify``)."""

from __future__ import annotations

import logging
import os

from airflow.providers.smtp.hooks.smtp import SmtpHook

from mlpipeline.config import PipelineConfig
from mlpipeline.stages.notify import Email

log = logging.getLogger(__name__)

# Read once per process: the connection (host, port, TLS, retries) is configured in Airflow, not here.
SMTP_CONN_ID = os.environ.get("ML_PIPELINE_SMTP_CONN_ID", "smtp_default")


def send_email(config: PipelineConfig, email: Email) -> None:
    """Send ``email`` to the config's ``notification_email``, from its ``email_from``."""
    with SmtpHook(smtp_conn_id=SMTP_CONN_ID) as smtp:
        smtp.send_email_smtp(
            to=config.notification_email,
            subject=email.subject,
            html_content=email.html,
            from_email=config.email_from,
        )
    log.info("sent %r to %s", email.subject, config.notification_email)
