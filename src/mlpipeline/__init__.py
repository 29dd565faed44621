"""mlpipeline: the ML library behind the ``ml_pipeline`` Airflow DAG.

One module per stage (crawl, etl, train, validate, deploy, monitor, notify), each a plain typed function from
paths/URIs + config to paths/URIs + a small result record. Nothing here imports Airflow.
"""

__version__ = "0.1.0"
