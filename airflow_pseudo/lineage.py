"""OpenLineage datasets for the operators: folders in, folders out, never a file name.

Used only when the OpenLineage provider is installed (the ``openlineage`` extra); its listener
calls the operators' ``get_openlineage_facets_on_complete``. Datasets name folders, never files:
file names may carry patient names, and lineage events leave the deployment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


def folder_dataset(location: str | os.PathLike[str] | Any) -> Any:
    """Return the OpenLineage dataset of a folder: a local path or an object-store URI.

    Local folders follow OpenLineage's naming for local files (namespace ``file``, name the
    absolute path); a URI gives namespace ``scheme://authority`` and name its path.

    :param location: a path, a URI or an ``ObjectStoragePath``.
    """
    from airflow.providers.common.compat.openlineage.facet import Dataset

    text = str(location)
    if "://" not in text or text.startswith("file://"):
        path = os.path.abspath(text.removeprefix("file://"))
        return Dataset(namespace="file", name=path)
    parts = urlsplit(text)
    return Dataset(namespace=f"{parts.scheme}://{parts.netloc}", name=parts.path.lstrip("/"))


def folder_lineage(
    inputs: Iterable[str | os.PathLike[str] | Any], outputs: Iterable[str | os.PathLike[str] | Any]
) -> OperatorLineage:
    """Return the lineage of a task that reads folders `inputs` and writes folders `outputs`.

    :param inputs: folders read (``None`` entries are left out).
    :param outputs: folders written (``None`` entries are left out).
    """
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(
        inputs=[folder_dataset(i) for i in dict.fromkeys(inputs) if i],
        outputs=[folder_dataset(o) for o in dict.fromkeys(outputs) if o],
    )
