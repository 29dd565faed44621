"""The baseline of the orchestration benchmark: ml_pipeline's stage functions called one after another in one
plain Python process, on the same data and services, with no Airflow. Prints one JSON line: wall seconds
(process start to end, imports included, like a task's) and each stage's seconds.

    python bench/plain_pipeline.py '<config overrides as JSON>' <run key> <smtp host> <smtp port>
"""

from __future__ import annotations

import json
import smtplib
import sys
import time
from email.message import EmailMessage

PROCESS_STARTED = time.perf_counter()

from mlpipeline.config import PipelineConfig, build_config  # noqa: E402
from mlpipeline.stages import notify  # noqa: E402
from mlpipeline.stages.crawl import crawl  # noqa: E402
from mlpipeline.stages.deploy import deploy  # noqa: E402
from mlpipeline.stages.etl import etl, resolved_config  # noqa: E402
from mlpipeline.stages.monitor import monitor  # noqa: E402
from mlpipeline.stages.train import check_candidates, train  # noqa: E402
from mlpipeline.stages.validate import select_best, validate  # noqa: E402
from mlpipeline.storage import DataLayout, atomic_write_json  # noqa: E402


def send(config: PipelineConfig, email: notify.Email, host: str, port: int) -> None:
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = email.subject, config.email_from, config.notification_email
    message.set_content(email.html, subtype="html")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.send_message(message)


def main() -> None:
    overrides, run, smtp_host, smtp_port = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    seconds: dict[str, float] = {}

    def timed(stage: str, function, *args, **kwargs):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        result = function(*args, **kwargs)
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        return result

    def start() -> PipelineConfig:
        config = build_config(overrides)
        check_candidates(config)
        atomic_write_json(DataLayout.of(config.data_dir).run_records(run) / "config.json", json.loads(config.to_json()))
        return config

    config = timed("start", start)
    crawled = timed("crawl_data", crawl, config, run)
    cleaned = timed("etl", etl, config, run=run, raw_data_path=crawled.data_path, raw_format=crawled.format)
    config = resolved_config(config, cleaned)  # as the DAG's etl task: the later stages get the resolved config
    trained = [
        timed(
            "train_model",
            train,
            config,
            run=run,
            processed_data_path=cleaned.data_path,
            data_sha256=crawled.sha256,
            candidate=candidate,
        )
        for candidate in config.training_candidates()
    ]

    def choose():  # type: ignore[no-untyped-def]
        best, ranking = select_best(trained, config.validation_metric)
        return best, validate(config, run=run, candidate=best, ranking=ranking)

    best, decision = timed("validate_model", choose)
    if not decision.deploy:
        raise SystemExit(f"the baseline must take the deploy path like the Airflow run; it did not: {decision}")
    deployed = timed("deploy_model", deploy, config, run=run, candidate=best, decision=decision)
    monitored = timed(
        "monitor",
        monitor,
        config,
        run=run,
        current_path=best.processed_data_path,
        reference_path=deployed.reference_data_path or best.processed_data_path,
        holdout_path=best.holdout_path,
        expected_version=deployed.version,
    ).to_dict()
    if monitored["alerts"]:
        send(config, notify.drift_alert_email(dag_run=run, monitoring=monitored), smtp_host, smtp_port)
    email = notify.success_email(
        dag_run=run,
        validation=decision.to_dict(),
        training=best.to_dict(),
        deployment=deployed.to_dict(),
        monitoring=monitored,
        etl=cleaned.to_dict(),
    )
    timed("success_email", send, config, email, smtp_host, smtp_port)
    print(json.dumps({"wall_seconds": time.perf_counter() - PROCESS_STARTED, "stages": seconds}))


if __name__ == "__main__":
    main()
