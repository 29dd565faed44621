"""Airflow deployment glue that must be importable by Airflow itself (kept apart from the Airflow-free library)."""
