"""Orchestration overhead and scale-out, on the production stack (docker-compose.yaml as local processes:
CeleryExecutor, real PostgreSQL and Redis, MLflow server, model server, SMTP catcher).

1. Orchestration: the full ``ml_pipeline`` vs the same stage functions called one after another in one plain
   Python process (bench/plain_pipeline.py) on the same data and services; per-hop gaps from task-instance
   timestamps; Airflow's own floor (bench/dags/noop_chain.py: as many hops, no-op tasks); idle scheduler CPU.
2. Scale-out: a fan-out of 8 candidate models on 1 vs 2 training workers (concurrency 1 each).

One stack serves both (start-up is ~2 minutes); full mode restarts it once with Airflow's default scheduler
idle sleep to show what that setting costs.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from common import PYTHON, REPO_ROOT, Section, Stats, jsonable, markdown_table, ratio, run_json, stats

from mlpipeline.config import RUN_OVERRIDABLE_FIELDS
from mlpipeline.dev.localstack import AirflowClient, ManagedProcess
from mlpipeline.dev.stack import ProcessStack, local_argv
from tests.services import process_stack

DAG = "ml_pipeline"
NOOP_DAG = "bench_noop_chain"
_SEEDS = itertools.count(1)
# The deploy path's tasks that run on a worker, in order (``end`` is an EmptyOperator the scheduler completes
# itself, and ``list_candidates`` runs beside ``crawl_data``, off this path).
CRITICAL_PATH = [
    "start",
    "crawl_data",
    "check_data",
    "data_changed",
    "etl",
    "train_model",
    "validate_model",
    "decide",
    "deploy_model",
    "monitor",
    "success_email",
]
NOOP_LENGTH = len(CRITICAL_PATH)
# Full mode restarts the stack with each of these (on top of the shipped settings) to show what they change.
VARIANTS: list[tuple[str, dict[str, str]]] = [
    ("idle sleep 0.2 s", {"SCHEDULER_IDLE_SLEEP_TIME": "0.2"}),
    ("Airflow defaults (idle sleep 1.0 s, no preload)",
     {"SCHEDULER_IDLE_SLEEP_TIME": "1.0", "ML_PIPELINE_WORKER_PRELOAD": "0"}),
]  # fmt: skip
FAN_OUT = [
    {"name": f"hgb_lr{lr}_leaves{leaves}", "ml_model_type": "hist_gradient_boosting",
     "hyperparameters": {"learning_rate": lr, "max_leaf_nodes": leaves, "max_iter": 100, "early_stopping": False}}
    for lr in (0.05, 0.1) for leaves in (15, 31, 63, 127)
]  # fmt: skip


# --- the stack -----------------------------------------------------------------------------------------------


def _dags_folder(root: Path) -> Path:
    """The product's DAG plus the no-op chain, as copies (the DAG processor would not follow symlinks out)."""
    folder = root / "dags"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "dags" / "ml_pipeline.py", folder / "ml_pipeline.py")
    shutil.copy(REPO_ROOT / "bench" / "dags" / "noop_chain.py", folder / "noop_chain.py")
    return folder


@contextlib.contextmanager
def celery_stack(root: Path, rows: int, **variables: str) -> Iterator[tuple[ProcessStack, AirflowClient]]:
    """The compose services as processes on this machine's PostgreSQL/Redis (or throwaway ones), fresh databases,
    crawling ``rows`` rows of the bundled source as Parquet (``crawl_url`` is an environment Variable in compose,
    which a run may not change: one stack per data size)."""
    overrides = {"AIRFLOW_DAGS_DIR": str(_dags_folder(root)), "BENCH_ROWS": str(rows), **variables}
    with process_stack(root, overrides) as stack, stack:
        stack.overrides["CRAWL_URL"] = f"http://127.0.0.1:{stack.ports['DATASOURCE_PORT']}/data.parquet?rows={rows}"
        started = time.monotonic()
        stack.up()
        secrets = stack.variables()
        client = AirflowClient(stack.api_url, secrets["AIRFLOW_ADMIN_USERNAME"], secrets["AIRFLOW_ADMIN_PASSWORD"])
        client.wait_for_dag(DAG)
        client.wait_for_dag(NOOP_DAG)
        print(f"   stack up in {time.monotonic() - started:.0f} s", flush=True)
        yield stack, client


def _time(value: str | None) -> datetime:
    if value is None:
        raise RuntimeError("a task instance has no timestamp: did it run?")
    return datetime.fromisoformat(value)


def run_dag(client: AirflowClient, dag_id: str, conf: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    """Trigger, wait, and return the run and its task instances (the run must succeed).

    Settings a run may not change (the source, say) are set as Variables first, as an operator would."""
    for key, value in conf.items():
        if key not in RUN_OVERRIDABLE_FIELDS:
            client.set_variable(key, value if isinstance(value, str) else json.dumps(value))
    run_conf = {k: v for k, v in conf.items() if k in RUN_OVERRIDABLE_FIELDS}
    if dag_id == DAG:
        run_conf["random_state"] = next(_SEEDS)  # same data and settings as the champion would train nothing
    run_id = client.trigger(dag_id, run_conf)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        if run["state"] in ("success", "failed"):
            break
        time.sleep(1)
    else:
        raise RuntimeError(f"{dag_id} run {run_id} did not finish in {timeout:.0f} s")
    tis = client.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    if run["state"] != "success":
        states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in tis}
        raise RuntimeError(f"{dag_id} run {run_id} failed: {states}")
    return {"run": run, "task_instances": tis}


def spans(task_instances: list[dict[str, Any]]) -> dict[str, tuple[datetime, datetime]]:
    """(first start, last end) per task id; a mapped task spans all its instances."""
    result: dict[str, tuple[datetime, datetime]] = {}
    for ti in task_instances:
        if ti["state"] != "success":
            continue
        start, end = _time(ti["start_date"]), _time(ti["end_date"])
        if ti["task_id"] in result:
            first, last = result[ti["task_id"]]
            start, end = min(start, first), max(end, last)
        result[ti["task_id"]] = (start, end)
    return result


def hop_gaps(task_instances: list[dict[str, Any]], path: list[str]) -> list[float]:
    """Seconds between one task's end and the next one's start, along ``path``."""
    span = spans(task_instances)
    return [(span[b][0] - span[a][1]).total_seconds() for a, b in itertools.pairwise(path)]


def hop_parts(task_instances: list[dict[str, Any]], path: list[str]) -> list[tuple[float, float]]:
    """Each hop split in two: (scheduler: end -> next queued, dispatch: queued -> started on a worker)."""
    span = spans(task_instances)
    queued: dict[str, datetime] = {}
    for ti in task_instances:
        if ti["state"] == "success" and ti.get("queued_when"):
            when = _time(ti["queued_when"])
            queued[ti["task_id"]] = min(when, queued.get(ti["task_id"], when))
    return [
        ((queued[b] - span[a][1]).total_seconds(), (span[b][0] - queued[b]).total_seconds())
        for a, b in itertools.pairwise(path)
        if b in queued
    ]


def run_seconds(result: dict[str, Any]) -> float:
    """Trigger (queued) to the run's end, as the API records them."""
    run = result["run"]
    return (_time(run["end_date"]) - _time(run["queued_at"])).total_seconds()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        for each in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = each.cpu_times()
                total += times.user + times.system
    return total


def cpu_shares(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU used by each process (with its children) over the same ``seconds``, as a fraction of one core."""
    before, started = {name: _cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {name: (_cpu_seconds(pid) - before[name]) / elapsed for name, pid in pids.items()}


def pid_of(stack: ProcessStack, service: str) -> int:
    popen = stack.processes[service].popen
    assert popen is not None
    return popen.pid


# --- 1. orchestration ----------------------------------------------------------------------------------------


def pipeline_conf(stack: ProcessStack, rows: int) -> dict[str, Any]:
    """Per-run settings shared by the Airflow run and the baseline: the stack's source (``crawl_url`` is the
    stack's, see ``celery_stack``: an environment Variable wins over one set through the API), always the deploy
    path. ``run_dag`` adds a fresh seed to every pipeline run so none stops early as 'unchanged'."""
    if stack.overrides.get("BENCH_ROWS") != str(rows):
        raise ValueError(f"this stack crawls {stack.overrides.get('BENCH_ROWS')} rows, not {rows}")
    return {
        "crawl_format": "parquet",
        "accuracy_threshold": 0,
        "champion_tolerance": 1.0,  # every run deploys, so both contenders do the same work every time
    }


def variables_of(stack: ProcessStack) -> dict[str, str]:
    """The Airflow Variables the compose file gives the pipeline (AIRFLOW_VAR_*), as config overrides."""
    environment = stack.services()["airflow-worker"].environment
    prefix = "AIRFLOW_VAR_"
    return {key[len(prefix) :].lower(): value for key, value in environment.items() if key.startswith(prefix)}


def run_plain(stack: ProcessStack, conf: dict[str, Any], run: str) -> dict[str, Any]:
    overrides = {**variables_of(stack), **conf, "data_dir": str(stack.root / "plain-data")}
    return run_json(
        [PYTHON, str(REPO_ROOT / "bench" / "plain_pipeline.py"), json.dumps(overrides), run, "127.0.0.1",
         str(stack.ports["SMTP_PORT"])],
        env={
            "OMP_NUM_THREADS": "1",
            "MLFLOW_TRACKING_URI": stack.mlflow_url,
            # What the workers get from .env: the MLflow service account and the model signing key.
            "MLFLOW_TRACKING_USERNAME": stack.mlflow_auth[0],
            "MLFLOW_TRACKING_PASSWORD": stack.mlflow_auth[1],
            "MLPIPELINE_MODEL_SIGNING_KEY": stack.variables()["MLPIPELINE_MODEL_SIGNING_KEY"],
            "MLPIPELINE_SERVING_TOKEN": stack.variables()["MLPIPELINE_SERVING_TOKEN"],
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
    )  # fmt: skip


def measure_orchestration(stack: ProcessStack, client: AirflowClient, sizes: list[int], repeats: int) -> dict:
    by_size: dict[int, dict[str, Any]] = {}
    for rows in sizes:
        conf = pipeline_conf(stack, rows)
        airflow_seconds, plain_seconds, gaps, parts, durations, stages = [], [], [], [], {}, {}
        for repeat in range(repeats):
            # Interleaved (Airflow, plain, Airflow, ...) so drifting background load hits both alike.
            result = run_dag(client, DAG, conf)
            airflow_seconds.append(run_seconds(result))
            gaps.extend(hop_gaps(result["task_instances"], CRITICAL_PATH))
            parts.extend(hop_parts(result["task_instances"], CRITICAL_PATH))
            for task_id, (start, end) in spans(result["task_instances"]).items():
                durations.setdefault(task_id, []).append((end - start).total_seconds())
            plain = run_plain(stack, conf, f"plain_{rows}_{repeat}_{int(time.time())}")
            plain_seconds.append(plain["wall_seconds"])
            for stage, seconds in plain["stages"].items():
                stages.setdefault(stage, []).append(seconds)
            print(f"   {rows:>9,} rows: airflow {airflow_seconds[-1]:.1f} s, plain {plain_seconds[-1]:.1f} s",
                  flush=True)  # fmt: skip
        by_size[rows] = {
            "airflow": stats(airflow_seconds),
            "plain": stats(plain_seconds),
            "gaps": stats(gaps),
            "scheduler_part": stats([part[0] for part in parts]),
            "dispatch_part": stats([part[1] for part in parts]),
            "task_seconds": {task: statistics.median(values) for task, values in durations.items()},
            "stage_seconds": {stage: statistics.median(values) for stage, values in stages.items()},
        }
    return by_size


def measure_floor(client: AirflowClient, repeats: int) -> dict[str, Stats]:
    totals, gaps, parts = [], [], []
    path = [f"noop_{index:02d}" for index in range(NOOP_LENGTH)]
    for _ in range(repeats):
        result = run_dag(client, NOOP_DAG, {})
        totals.append(run_seconds(result))
        gaps.extend(hop_gaps(result["task_instances"], path))
        parts.extend(hop_parts(result["task_instances"], path))
    return {
        "total": stats(totals),
        "gaps": stats(gaps),
        "scheduler_part": stats([part[0] for part in parts]),
        "dispatch_part": stats([part[1] for part in parts]),
    }


def measure_idle_cpu(stack: ProcessStack, seconds: float) -> dict[str, float]:
    """Each Airflow component's CPU while nothing runs, all over the same window."""
    time.sleep(3)  # let the last run's bookkeeping settle
    services = ["airflow-scheduler", "airflow-dag-processor", "airflow-apiserver", "airflow-triggerer",
                "airflow-worker", "airflow-worker-training", "flower"]  # fmt: skip
    return cpu_shares({service: pid_of(stack, service) for service in services}, seconds)


# --- 2. scale-out ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def second_training_worker(stack: ProcessStack) -> Iterator[None]:
    """What ``docker compose up --scale airflow-worker-training=2`` adds: the same service once more."""
    spec = stack.services()["airflow-worker-training"]
    argv = [arg.replace("training@", "training2@") for arg in local_argv(spec)]
    log = stack.root / "logs" / "airflow-worker-training-2.log"
    worker = ManagedProcess("airflow-worker-training-2", argv, stack._process_env(spec), log).start()
    try:
        worker.wait_until(lambda: " ready." in log.read_text(errors="replace"), 120, "Celery 'ready'")
        yield
    finally:
        worker.stop(timeout=60)


def most_at_once(result: dict[str, Any]) -> int:
    """The most candidates training at the same moment: proof that a second worker was used."""
    trains = [
        (_time(ti["start_date"]), _time(ti["end_date"]))
        for ti in result["task_instances"]
        if ti["task_id"] == "train_model" and ti["state"] == "success"
    ]
    return max(sum(1 for start, end in trains if start <= moment < end) for moment, _ in trains)


def fan_out_seconds(result: dict[str, Any]) -> float:
    """First candidate's start to the last one's end."""
    start, end = spans(result["task_instances"])["train_model"]
    return (end - start).total_seconds()


def measure_scale_out(stack: ProcessStack, client: AirflowClient, rows: int, repeats: int) -> dict[str, Any]:
    conf = {**pipeline_conf(stack, rows), "candidates": FAN_OUT}
    one, two, one_run, two_run, concurrency = [], [], [], [], {"one": 0, "two": 0}
    for _ in range(repeats):
        result = run_dag(client, DAG, conf)
        one.append(fan_out_seconds(result))
        one_run.append(run_seconds(result))
        concurrency["one"] = max(concurrency["one"], most_at_once(result))
        with second_training_worker(stack):
            result = run_dag(client, DAG, conf)
        two.append(fan_out_seconds(result))
        two_run.append(run_seconds(result))
        concurrency["two"] = max(concurrency["two"], most_at_once(result))
        hosts = sorted({ti["hostname"] for ti in result["task_instances"] if ti["task_id"] == "train_model"})
        print(
            f"   fan-out of {len(FAN_OUT)}: 1 worker {one[-1]:.1f} s, 2 workers {two[-1]:.1f} s ({hosts})", flush=True
        )
    return {
        "one": stats(one),
        "two": stats(two),
        "one_run": stats(one_run),
        "two_run": stats(two_run),
        "most_at_once": concurrency,
    }


# --- report ----------------------------------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def _split(measured: dict[str, Any]) -> str:
    return f"{measured['scheduler_part'].median:.3f} / {measured['dispatch_part'].median:.3f} s"


def orchestration_markdown(
    by_size: dict[int, dict[str, Any]],
    floor: dict[str, Stats],
    idle: dict[str, float],
    worker_rss: float,
    variants: list[tuple[str, dict[str, Any]]],
) -> str:
    rows = []
    for size, m in by_size.items():
        stage_work = sum(m["stage_seconds"].values())
        rows.append(
            [f"{size:,}", m["airflow"].fmt(), m["plain"].fmt(), f"{ratio(m['airflow'], m['plain']):.2f}x",
             f"{stage_work:.2f} s", f"{m['airflow'].median / stage_work:.2f}x", m["gaps"].fmt(digits=3), _split(m)]
        )  # fmt: skip
    largest = max(by_size)
    m = by_size[largest]
    overhead_rows = []
    for task in CRITICAL_PATH:
        task_seconds = m["task_seconds"].get(task)
        stage_seconds = m["stage_seconds"].get(task)
        if task_seconds is None:
            continue
        inside = "" if stage_seconds is None else f"{stage_seconds:.2f}"
        extra = "" if stage_seconds is None else f"{task_seconds - stage_seconds:+.2f}"
        overhead_rows.append([task, f"{task_seconds:.2f}", inside, extra])
    hop_target = m["gaps"].median <= 0.2
    ratio_largest = ratio(m["airflow"], m["plain"])
    ratio_largest_stages = m["airflow"].median / sum(m["stage_seconds"].values())
    scheduler_idle = idle["airflow-scheduler"]
    lines = [
        "Baseline: the same stage functions called one after another in one plain Python process "
        "(`bench/plain_pipeline.py`: same source URL, same MLflow server, same model server, same SMTP catcher, "
        "deploy path every time). Airflow: `ml_pipeline` triggered through the REST API on the Celery stack "
        "(PostgreSQL + Redis), trigger to end of run. Hop = one task's end to the next one's start on the deploy "
        f"path ({' → '.join(CRITICAL_PATH)}), from task-instance timestamps.",
        "",
        markdown_table(
            [
                "rows",
                "Airflow (Celery)",
                "plain Python",
                "ratio",
                "plain: stages only",
                "ratio",
                "per-hop gap",
                "of which scheduler / dispatch",
            ],
            rows,
        ),
        "",
        '"plain Python" is the baseline process\'s wall time, interpreter start and imports included (a plain '
        'script pays them once; the Celery workers paid them at start, see below); "stages only" is the sum of '
        "its stage functions' times, the strictest baseline.",
        "",
        f"Where the time goes at {largest:,} rows (medians, seconds): a task's duration on the worker vs the "
        "same stage in the plain process; the difference is the task's own start-up and bookkeeping (fork, DAG "
        "parse, API calls, XCom, imports not preloaded).",
        "",
        markdown_table(["task", "Airflow task", "plain stage", "difference"], overhead_rows),
        "",
        f"Airflow's floor on the same stack: a chain of {NOOP_LENGTH} no-op Python tasks (`bench/dags/noop_chain.py`)"
        f" takes {floor['total'].fmt()} trigger to end, per-hop gap {floor['gaps'].fmt(digits=3)}; of which "
        f"scheduler / dispatch {_split(floor)}. Scheduler = a task's end to the next one queued (the scheduler "
        "notices on its next loop: up to one idle sleep plus the loop's own queries); dispatch = queued to running "
        "on a worker (Celery via Redis, the worker forks the task process, which reports in).",
        "",
        "Idle CPU, share of one core (nothing running, all over the same window): "
        + ", ".join(f"{name.replace('airflow-', '')} {share:.1%}" for name, share in idle.items())
        + f". A general worker's resident memory with the preloaded libraries: {worker_rss:.0f} MiB.",
    ]
    if variants:
        header = ["", "shipped", *[name for name, _ in variants]]
        size = variants[0][1]["rows"]
        table = [
            [f"ml_pipeline, {size:,} rows", by_size[size]["airflow"].fmt(),
             *[v["pipeline"].fmt() for _, v in variants]],
            ["per-hop gap (pipeline)", by_size[size]["gaps"].fmt(digits=3),
             *[v["gaps"].fmt(digits=3) for _, v in variants]],
            ["no-op chain", floor["total"].fmt(), *[v["floor"]["total"].fmt() for _, v in variants]],
            ["per-hop gap (no-op chain)", floor["gaps"].fmt(digits=3),
             *[v["floor"]["gaps"].fmt(digits=3) for _, v in variants]],
            ["idle scheduler CPU", f"{scheduler_idle:.1%}", *[f"{v['idle']:.1%}" for _, v in variants]],
            ["worker resident memory", f"{worker_rss:.0f} MiB", *[f"{v['worker_rss']:.0f} MiB" for _, v in variants]],
        ]  # fmt: skip
        lines += [
            "",
            "Which settings matter: the same stack restarted with other values of the two settings the product "
            "changes from Airflow's defaults: the scheduler's idle sleep (`SCHEDULER_IDLE_SLEEP_TIME`, shipped 0.1 s, "
            "Airflow 1.0 s) and preloading the pipeline's libraries in the workers (`ML_PIPELINE_WORKER_PRELOAD`, "
            "shipped on):",
            "",
            markdown_table(header, table),
        ]
    lines += [
        "",
        "Targets:",
        f"- per-hop overhead ≤ 0.2 s median: {m['gaps'].median:.3f} s at {largest:,} rows, {_verdict(hop_target)};",
        f"- idle scheduler CPU ≤ 15 % of a core: {scheduler_idle:.1%}, {_verdict(scheduler_idle <= 0.15)};",
        "- whole pipeline ≤ 1.2x plain Python at 1,000,000 rows: "
        + (
            f"{ratio_largest:.2f}x the plain process, {_verdict(ratio_largest <= 1.2)} "
            f"({ratio_largest_stages:.2f}x its stage time alone, {_verdict(ratio_largest_stages <= 1.2)} by that "
            "stricter measure)."
            if largest >= 1_000_000
            else f"not run in quick mode (largest here {largest:,} rows: {ratio_largest:.2f}x)."
        ),
    ]
    return "\n".join(lines)


def scale_out_markdown(result: dict[str, Any], rows: int) -> str:
    fan_ratio = ratio(result["two"], result["one"])
    run_ratio = ratio(result["two_run"], result["one_run"])
    table = markdown_table(
        ["training workers", "8-candidate fan-out", "whole run", "fan-out vs 1 worker", "most trained at once"],
        [
            ["1 (baseline)", result["one"].fmt(), result["one_run"].fmt(), "1.00x", result["most_at_once"]["one"]],
            ["2", result["two"].fmt(), result["two_run"].fmt(), f"{fan_ratio:.2f}x", result["most_at_once"]["two"]],
        ],
    )
    return "\n".join(
        [
            f"`ml_pipeline` with 8 candidates (`candidates` setting: hist_gradient_boosting, learning rate x "
            f"max_leaf_nodes, 100 iterations) on {rows:,} rows. Each training worker runs one task at a time "
            "(`TRAINING_WORKER_CONCURRENCY=1`, one OpenMP thread), the `training` pool has 2 slots; the second worker "
            "is the same compose service started once more (what `docker compose up --scale "
            "airflow-worker-training=2` does). Fan-out = first candidate's start to the last one's end.",
            "",
            table,
            "",
            f"Target ≤ 0.6x the 1-worker time: {fan_ratio:.2f}x, {_verdict(fan_ratio <= 0.6)} "
            f"(whole run {run_ratio:.2f}x). This machine has 2 cores, so 2 workers is as far as it scales; the "
            "scheduler, API server and the other services share those cores.",
        ]
    )


def worker_rss_mib(stack: ProcessStack) -> float:
    """Resident memory of the general worker's main process (what each preloading worker holds once)."""
    return psutil.Process(pid_of(stack, "airflow-worker")).memory_info().rss / 2**20


def _revive(value: Any) -> Any:
    """Results JSON back to what the report functions take (Stats, int row counts)."""
    if isinstance(value, dict):
        if set(value) == {"median", "min", "max", "n", "values"}:
            return stats(value["values"])
        return {(int(k) if k.isdigit() else k): _revive(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_revive(item) for item in value]
    if isinstance(value, str) and (match := re.fullmatch(r"Stats\(values=\((.*?),?\)\)", value)):
        return stats([float(number) for number in match.group(1).split(",")])  # written by an older version
    return value


def render_saved(results: dict[str, dict[str, Any]]) -> list[Section]:
    """Re-write the sections from saved results (bench/results/*.json) after a change to the report only."""
    o, f = _revive(results["orchestration"]), _revive(results["scaleout"])
    variants = [(name, data) for name, data in o["variants"]]
    return [
        Section("orchestration", orchestration_markdown(o["by_size"], o["floor"], o["idle_cpu"], o["worker_rss_mib"],
                                                        variants), results["orchestration"]),
        Section("scaleout", scale_out_markdown(f, f["rows"]), results["scaleout"]),
    ]  # fmt: skip


def run(quick: bool) -> list[Section]:
    sizes = [10_000] if quick else [10_000, 100_000, 1_000_000]
    repeats = 1 if quick else 2
    fan_rows = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        root = Path(tmp)
        shipped = {"TRAINING_WORKER_CONCURRENCY": "1", "TRAINING_POOL_SLOTS": "2"}
        by_size: dict[int, dict[str, Any]] = {}
        for rows in sizes:  # one stack per data size: the source is the stack's setting
            with celery_stack(root / f"shipped-{rows}", rows, **shipped) as (stack, client):
                run_dag(client, NOOP_DAG, {})  # warm-up: first runs pay one-off costs (DAG bundle, imports)
                if rows == sizes[0]:
                    floor = measure_floor(client, 3 if quick else 5)
                    idle = measure_idle_cpu(stack, 15 if quick else 30)
                    rss = worker_rss_mib(stack)
                by_size.update(measure_orchestration(stack, client, [rows], repeats))
        with celery_stack(root / "fan-out", fan_rows, **shipped) as (stack, client):
            run_dag(client, NOOP_DAG, {})
            fan = measure_scale_out(stack, client, fan_rows, 1 if quick else 3)
        variants: list[tuple[str, dict[str, Any]]] = []
        if not quick:
            for name, variables in VARIANTS:
                with celery_stack(root / name.replace(" ", "-"), sizes[0], **shipped, **variables) as (stack, client):
                    run_dag(client, NOOP_DAG, {})
                    rows = sizes[0]
                    results = [run_dag(client, DAG, pipeline_conf(stack, rows)) for _ in range(2)]
                    variants.append(
                        (
                            name,
                            {
                                "rows": rows,
                                "pipeline": stats([run_seconds(result) for result in results]),
                                "gaps": stats(
                                    [g for r in results for g in hop_gaps(r["task_instances"], CRITICAL_PATH)]
                                ),
                                "floor": measure_floor(client, 5),
                                "idle": measure_idle_cpu(stack, 30)["airflow-scheduler"],
                                "worker_rss": worker_rss_mib(stack),
                            },
                        )
                    )

    return [
        Section(
            "orchestration",
            orchestration_markdown(by_size, floor, idle, rss, variants),
            jsonable(
                {"by_size": by_size, "floor": floor, "idle_cpu": idle, "worker_rss_mib": rss, "variants": variants}
            ),
        ),
        Section("scaleout", scale_out_markdown(fan, fan_rows), jsonable({"rows": fan_rows, **fan})),
    ]
