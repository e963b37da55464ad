"""Exceptions raised by the pseudonymisation core.

Messages never contain a DICOM value or key material: they name attributes by keyword or tag only,
so an exception can be logged, stored in a result record or shown in Airflow's UI safely.
"""


class PseudonymisationError(Exception):
    """Base class for every error the core raises on purpose."""


class ConfigurationError(PseudonymisationError):
    """The settings cannot work (bad strategy, bad UID root, output inside the input...)."""


class MissingKeyError(ConfigurationError):
    """No usable project key: the keyed strategy cannot run without one."""


class UnsupportedInputError(PseudonymisationError):
    """A file that this tool refuses to pseudonymise, with the reason in the message."""


class BurnedInAnnotationError(UnsupportedInputError):
    """The pixel data is flagged as showing identifying text, which header changes cannot remove."""
