"""Moved to :mod:`airflow_pseudo.pseudonymisation.policy.recipe`; ``Settings`` is ``Recipe``."""

from airflow_pseudo.pseudonymisation.policy.recipe import (
    DURABILITY,
    ENGINES,
    OUTPUT_LAYOUTS,
    STRATEGIES,
    Recipe,
    Settings,
    build_recipe,
    parse_date_shift_days,
)

__all__ = [
    "DURABILITY",
    "ENGINES",
    "OUTPUT_LAYOUTS",
    "STRATEGIES",
    "Recipe",
    "Settings",
    "build_recipe",
    "parse_date_shift_days",
]
