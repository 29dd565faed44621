from __future__ import annotations

import pytest

from mlpipeline.config import build_config
from mlpipeline.dev.mailcatcher import MailCatcher
from mlpipeline.stages.notify import Email
from mlpipeline_airflow.notifications import send_email


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
