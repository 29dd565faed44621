"""Development and test tooling: the embedded stack behind ``make demo``, the production stack as local processes,
the demo data source and the mail catcher. Never imported by the stages, the model server or the DAG."""
