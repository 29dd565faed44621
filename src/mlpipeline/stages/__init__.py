"""The pipeline's stages, one module each: crawl → etl → train → validate → deploy → monitor, plus notify.

Each is a plain typed function: config + paths in, paths + a small result record out. No Airflow imports.
"""
