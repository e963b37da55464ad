"""Triggers of the airflow-pseudo provider."""
