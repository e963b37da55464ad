"""Validation: an independent check of a pseudonymised output against its original.

It trusts nothing the pseudonymiser says. The original's identifiers are derived from the
original alone and searched for in every byte of the output outside pixel data; with the key,
the pseudonyms of a few anchors are recomputed and must be exactly the output's; the values the
tool wrote must be valid, every UID too, and the markers must name the profile actually used.
Problems name attributes and kinds of identifier, never values.
"""

from airflow_pseudo.pseudonymisation.validation.runner import (
    Expectations,
    KeyChecks,
    Verdict,
    check,
    validate_dataset,
    validate_file,
    validate_output,
)

__all__ = [
    "Expectations",
    "KeyChecks",
    "Verdict",
    "check",
    "validate_dataset",
    "validate_file",
    "validate_output",
]
