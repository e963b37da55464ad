"""Hooks of the airflow-pseudo provider."""
