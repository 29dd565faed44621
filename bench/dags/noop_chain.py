"""Airflow's own floor on the stack: a straight chain of no-op Python tasks, as many hops as ml_pipeline's
deploy path. Each task is sent through Celery to a worker like a real one (EmptyOperators never leave the
scheduler, so they would measure less than a real hop). Used by bench/bench_stack.py only."""

from __future__ import annotations

import os
from datetime import datetime

from airflow.sdk import chain, dag, task

# As long as ml_pipeline's critical path (bench_stack.CRITICAL_PATH), so the two chains compare hop for hop.
CHAIN_LENGTH = int(os.environ.get("BENCH_NOOP_CHAIN_LENGTH", "11"))


@dag(dag_id="bench_noop_chain", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["bench"])
def bench_noop_chain() -> None:
    @task(retries=0)
    def noop() -> None:
        return None

    chain(*[noop.override(task_id=f"noop_{index:02d}")() for index in range(CHAIN_LENGTH)])


bench_noop_chain()
