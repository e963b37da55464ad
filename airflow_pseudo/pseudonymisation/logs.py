"""pydicom's warnings and log records, re-emitted without the values they quote.

pydicom reports what it finds odd by quoting it: ``Invalid value for VR UI: '1.2.03...'`` goes
to both :mod:`warnings` and the ``pydicom`` logger, and from there to stderr and Airflow's task
logs. Inside the core, each message is replaced by what can be said without a value: its opening
words (up to the first quote, colon, bracket or digit), the tags, VRs and keywords it names, and
nothing else.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.datadict import keyword_for_tag, tag_for_keyword

log = logging.getLogger(__name__)

_PYDICOM_LOGGER = "pydicom"
_OPENING = re.compile(r"^[^'\"`:=<>{}\[\]()0-9]*")
_VR_CODE = re.compile(r"^[A-Z]{2}$")
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")
_VR = re.compile(r"\bVR\s+([A-Z]{2})\b")
_WORD = re.compile(r"\b[A-Z][A-Za-z0-9]{2,63}\b")
_MAX_OPENING = 120


def without_values(message: str) -> str:
    """The part of a pydicom message that cannot hold a DICOM value, and the attributes it names."""
    opening = " ".join(_plain_words(_OPENING.match(message)[0]))[:_MAX_OPENING]  # type: ignore[index]
    named: list[str] = []
    for group, element in _TAG.findall(message):
        tag = int(group + element, 16)
        named.append(
            f"({group},{element})" + (f" {keyword_for_tag(tag)}" if keyword_for_tag(tag) else "")
        )
    named += [f"VR {vr}" for vr in _VR.findall(message)]
    named += [word for word in _WORD.findall(message) if tag_for_keyword(word) is not None]
    text = opening or "a problem"
    unique = list(dict.fromkeys(named))
    return text + (f" [{', '.join(unique)}]" if unique else "") + " (value withheld)"


def _plain_words(text: str) -> list[str]:
    """The words of pydicom's own wording: the first word, lower-case words and VR codes.

    A value pydicom does not quote would be a capitalised or upper-case word, or hold digits or
    other characters: all dropped.
    """
    words = [word.strip(",.;-") for word in text.split()]
    return [
        word
        for index, word in enumerate(words)
        if word.isascii()
        and word.isalpha()
        and (
            index == 0
            or word.islower()
            or word == "VR"
            or (_VR_CODE.match(word) and index > 0 and words[index - 1] == "VR")
        )
    ]


class _WithoutValues(logging.Filter):
    """Rewrites a pydicom record's message in place, before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = without_values(record.getMessage())
        record.args = None
        record.exc_info = record.exc_text = None
        return True


_FILTER = _WithoutValues()


class OutermostWarnings:
    """Record warnings in the outermost of nested blocks only, per thread.

    A batch opens one block per chunk of files; the reads inside it, which open blocks of their
    own when called alone, are then spared a capture each.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def record(self) -> Iterator[list[warnings.WarningMessage] | None]:
        """Yield the list the block's warnings go to, or ``None`` inside an enclosing block."""
        if getattr(self._local, "active", False):
            yield None
            return
        self._local.active = True
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield caught
        finally:
            self._local.active = False


_MESSAGES = OutermostWarnings()


def install() -> None:
    """Rewrite every record of the ``pydicom`` logger in this process (idempotent)."""
    logger = logging.getLogger(_PYDICOM_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@contextmanager
def pydicom_messages_by_tag() -> Iterator[None]:
    """Catch the warnings raised in the block; log each once, without its values.

    The ``pydicom`` logger is rewritten for good (:func:`install`): its records are the same
    messages as the warnings. Inside another such block (a batch's chunk) this one adds
    nothing: the outer block logs each message once for all the files it encloses.
    """
    with _MESSAGES.record() as caught:
        if caught is not None:
            install()
        yield
    for message in dict.fromkeys(without_values(str(w.message)) for w in caught or ()):
        log.warning("pydicom: %s", message)


def printable(name: str | os.PathLike[str]) -> str:
    """A file name safe to print: control characters (newlines, ANSI escapes...) escaped.

    A name is the sender's text: printed raw, a newline forges a line of output and an escape
    sequence rewrites the terminal.
    """
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in os.fspath(name)
    )
