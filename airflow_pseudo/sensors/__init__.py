"""Sensors of the airflow-pseudo provider."""
