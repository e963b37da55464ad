"""The pseudonymisation core: pydicom only, never Airflow.

It keeps the API of PyMedPhys's pseudonymisation module (``pseudonymise``,
``get_default_pseudonymisation_keywords``, ``is_valid_strategy_for_keywords``,
``pseudonymisation_dispatch``, ``anonymise_dataset``) and adds keyed pseudonyms, the PS3.15
Annex E Basic Profile, valid output, consistent references, de-identification markers, batch
processing with per-file results, and validation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from airflow_pseudo.pseudonymisation._seed_keywords import SEED_KEYWORDS
from airflow_pseudo.pseudonymisation.engine import Pseudonymiser
from airflow_pseudo.pseudonymisation.errors import (
    BurnedInAnnotationError,
    ConfigurationError,
    MissingKeyError,
    PseudonymisationError,
    UnsupportedInputError,
)
from airflow_pseudo.pseudonymisation.io.batch import (
    default_output_dir,
    default_quarantine_dir,
    pseudonymise_directory,
    pseudonymise_files,
    validate_results,
)
from airflow_pseudo.pseudonymisation.keys import KEY_ENV_VAR, PseudonymKey, load_key
from airflow_pseudo.pseudonymisation.policy.profile import (
    Action,
    Profile,
    default_profile,
    keyword_profile,
    pymedphys_profile,
)
from airflow_pseudo.pseudonymisation.policy.recipe import Recipe, Settings, build_recipe
from airflow_pseudo.pseudonymisation.results import FileResult, ValidationResult
from airflow_pseudo.pseudonymisation.strategies import (
    PseudonymContext,
    Strategy,
    pseudonymisation_dispatch,
)
from airflow_pseudo.pseudonymisation.validation import validate_dataset, validate_file

__all__ = [
    "KEY_ENV_VAR",
    "Action",
    "BurnedInAnnotationError",
    "ConfigurationError",
    "FileResult",
    "MissingKeyError",
    "Profile",
    "PseudonymContext",
    "PseudonymKey",
    "PseudonymisationError",
    "Pseudonymiser",
    "Recipe",
    "Settings",
    "Strategy",
    "UnsupportedInputError",
    "ValidationResult",
    "anonymise_dataset",
    "build_recipe",
    "default_output_dir",
    "default_profile",
    "default_quarantine_dir",
    "get_default_pseudonymisation_keywords",
    "is_valid_strategy_for_keywords",
    "keyword_profile",
    "load_key",
    "pseudonymisation_dispatch",
    "pseudonymise",
    "pseudonymise_directory",
    "pseudonymise_files",
    "pymedphys_profile",
    "validate_dataset",
    "validate_file",
    "validate_results",
]


def get_default_pseudonymisation_keywords() -> list[str]:
    """The seed's 204 identifying keywords (PyMedPhys 0.41's list), sorted."""
    return sorted(SEED_KEYWORDS)


def is_valid_strategy_for_keywords(
    identifying_keywords: Iterable[str] | None = None,
    replacement_strategy: Mapping[str, Any] | None = None,
) -> bool:
    """Whether the strategy has a function for the VR of every keyword (sequences are recursed).

    :raises KeyError: for a keyword that is not in the DICOM dictionary.
    """
    keywords = (
        get_default_pseudonymisation_keywords()
        if identifying_keywords is None
        else identifying_keywords
    )
    strategy = pseudonymisation_dispatch if replacement_strategy is None else replacement_strategy
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"{keyword!r} is not a DICOM keyword")
        vr = dictionary_VR(tag)
        if vr != "SQ" and vr not in strategy:
            return False
    return True


def _settings_from(settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    if settings is not None:
        if overrides:
            raise TypeError("pass either settings or individual options, not both")
        return settings
    strategy = overrides.get("strategy", "keyed")
    if strategy == "keyed" and overrides.get("key") is None:
        overrides["key"] = load_key(overrides.pop("key_file", None))
    overrides.pop("key_file", None)
    if isinstance(overrides.get("key"), bytes | str):
        key = overrides["key"]
        overrides["key"] = (
            PseudonymKey(key) if isinstance(key, bytes) else PseudonymKey.from_text(key)
        )
    return build_recipe(check=False, **overrides)


def anonymise_dataset(
    ds: Dataset,
    replacement_strategy: Mapping[str, Any] | None = None,
    identifying_keywords: Iterable[str] | None = None,
    *,
    keywords_to_leave_unchanged: Iterable[str] = (),
    settings: Settings | None = None,
    **options: Any,
) -> Dataset:
    """Return a pseudonymised copy of ``ds`` (the input is never changed).

    :param replacement_strategy: VR → strategy; defaults to :data:`pseudonymisation_dispatch`.
        Strategies may take ``(value, context)`` or, as in PyMedPhys, ``(value)``.
    :param identifying_keywords: pseudonymise exactly these keywords; ``None`` applies the
        default profile (seed keywords + PS3.15 Basic Profile).
    :param keywords_to_leave_unchanged: attributes kept as they are.
    :param settings: a :class:`Settings`; or pass its fields (``key``, ``strategy``...) directly.
    """
    resolved = _settings_from(settings, options)
    keep = tuple(keywords_to_leave_unchanged) + resolved.keep_keywords
    if identifying_keywords is None:
        profile = (default_profile if resolved.profile == "default" else pymedphys_profile)(keep)
    else:
        profile = keyword_profile(identifying_keywords, keep)
    pseudonymiser = Pseudonymiser(
        resolved.source, profile, replacement_strategy, allow_burned_in=resolved.allow_burned_in
    )
    return pseudonymiser.pseudonymise_dataset(ds)[0]


@overload
def pseudonymise(dicom_input: Dataset, output_path: None = None, **options: Any) -> Dataset: ...
@overload
def pseudonymise(
    dicom_input: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> str | list[str]: ...


def pseudonymise(
    dicom_input: Dataset | str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Dataset | str | list[str]:
    """Pseudonymise a dataset, a file or a directory, as the seed's convenience API.

    A Dataset returns a new pseudonymised Dataset (the input is unchanged). A file returns the
    output path; ``output_path`` is the folder for it (default: the file's own folder). A
    directory returns the output paths of the files that succeeded; ``output_path`` is the
    output folder (default: the sibling ``<input>-pseudonymised``), failed files are copied to
    ``<output>-quarantine`` with their reason.

    :param options: :class:`Settings` fields (``key``, ``key_file``, ``strategy``, ``profile``,
        ``uid_root``...), or ``settings=``; plus ``workers=`` and ``quarantine_path=`` for folders.
    :raises FileNotFoundError: when ``dicom_input`` does not exist.
    :raises PseudonymisationError: when a single file cannot be pseudonymised (with the reason).
    """
    workers = int(options.pop("workers", 1))
    quarantine_path = options.pop("quarantine_path", None)
    settings = _settings_from(options.pop("settings", None), options)
    if isinstance(dicom_input, Dataset):
        return settings.pseudonymiser.pseudonymise_dataset(dicom_input)[0]
    path = Path(dicom_input)
    if path.is_dir():
        results = pseudonymise_directory(
            path, output_path, settings=settings, quarantine_dir=quarantine_path, workers=workers
        )
        return [r.output for r in results if r.status == "ok" and r.output]
    if path.is_file():
        flat = dataclasses.replace(settings, output_layout="flat")
        output_dir = Path(output_path) if output_path is not None else path.parent
        (result,) = pseudonymise_files(
            [path], output_dir, settings=flat, quarantine_dir=quarantine_path
        )
        if result.status != "ok" or result.output is None:
            raise PseudonymisationError(result.reason or "not pseudonymised")
        return result.output
    raise FileNotFoundError(f"Unable to find {dicom_input}")
