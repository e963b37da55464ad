"""Build script: what pyproject.toml cannot say; every other setting is there.

- The C element scanner, ``airflow_pseudo.pseudonymisation._scanner``, compiled when a C compiler
  and Python's headers are present. ``optional=True``: without them the install still succeeds
  and the fast path uses the Python scanner (``scanner.py``) the C one is tested against.
- The one-line summary (``description``, dynamic in pyproject.toml): the first line of the
  package docstring.
"""

import ast
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def summary() -> str:
    tree = ast.parse((HERE / "airflow_pseudo" / "__init__.py").read_text(encoding="utf-8"))
    docstring = ast.get_docstring(tree)
    assert docstring, "airflow_pseudo/__init__.py needs a docstring: its first line is the summary"
    return docstring.lstrip().splitlines()[0]


setup(
    description=summary(),
    ext_modules=[
        Extension(
            "airflow_pseudo.pseudonymisation._scanner",
            sources=["airflow_pseudo/pseudonymisation/_scanner.c"],
            optional=True,
        )
    ],
)
