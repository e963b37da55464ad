"""Operators of the airflow-pseudo provider."""
