"""mlpipeline: the ML library behind the ``ml_pipeline`` Airflow DAG. Nothing here imports Airflow.

- ``stages/``: one module per stage (crawl, etl, train, validate, deploy, monitor, notify), each a plain typed
  function from config + paths to paths + a small result record;
- ``serving/``: the model server (FastAPI, hot swap of the registry's champion);
- ``dev/``: the embedded and process stacks, demo data source, mail catcher (never imported by the above);
- the shared core: ``config``, ``storage``, ``registry`` (MLflow helpers), ``features`` (transformers the model
  carries), ``payload`` (JSON rows).
"""

__version__ = "0.1.0"
