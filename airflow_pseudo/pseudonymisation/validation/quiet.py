"""Reading without leaking: pydicom's warnings and log records hold values, so none pass.

pydicom warns, and logs, with the offending value in the message (an invalid UID, a name too
long for its VR). While the validator reads and decodes, both are captured; what reaches the
log afterwards says how many there were and names no value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from airflow_pseudo.pseudonymisation.logs import OutermostWarnings

log = logging.getLogger(__name__)
_PYDICOM_LOGGER = logging.getLogger("pydicom")
_CAPTURE = OutermostWarnings()


class _Swallow(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return False


@contextmanager
def quiet_pydicom(what: str) -> Iterator[None]:
    """Capture pydicom's warnings and log records; report their number, never their text.

    Inside another such block (a batch's chunk, say) this one adds nothing: the outer block
    captures and counts, and the reads it encloses are spared a capture of their own each.

    :param what: what is being read (``output``, ``original``), for the summary line.
    """
    with _CAPTURE.record() as caught:
        if caught is None:  # the enclosing block captures and counts
            yield
            return
        swallow = _Swallow()
        _PYDICOM_LOGGER.addFilter(swallow)
        try:
            yield
        finally:
            _PYDICOM_LOGGER.removeFilter(swallow)
    count = swallow.count + len(caught)
    if count:
        log.warning(
            "pydicom reported %d problem(s) while the validator read the %s (values withheld)",
            count,
            what,
        )
