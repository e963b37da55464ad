"""Moved to :mod:`airflow_pseudo.pseudonymisation.policy.tables.ps315`; kept importable."""

from airflow_pseudo.pseudonymisation.policy.tables.ps315 import EDITION, ROWS

__all__ = ["EDITION", "ROWS"]
