"""Provider metadata read by Airflow's provider discovery (entry point ``apache_airflow_provider``).

Every Airflow CLI call and component imports this module, so it holds a plain literal dict and
imports nothing. The dict must validate against Airflow's ``provider_info.schema.json`` and its
``package-name`` must equal the distribution name in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata for ``airflow-pseudo``."""
    return {
        "package-name": "airflow-pseudo",
        "name": "DICOM pseudonymisation",
        "description": (
            "Pseudonymise DICOM files with a keyed strategy, validate the outputs and publish "
            "them, as Airflow operators, a deferrable directory sensor and a ``pseudo`` connection."
        ),
        "integrations": [
            {
                "integration-name": "DICOM pseudonymisation",
                "external-doc-url": "https://github.com/airflow-pseudo/airflow-pseudo#readme",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "DICOM pseudonymisation",
                "python-modules": [
                    "airflow_pseudo.operators.ingest",
                    "airflow_pseudo.operators.pseudonymise",
                    "airflow_pseudo.operators.validate",
                    "airflow_pseudo.operators.publish",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "DICOM pseudonymisation",
                "python-modules": ["airflow_pseudo.sensors.directory"],
            }
        ],
        "hooks": [
            {
                "integration-name": "DICOM pseudonymisation",
                "python-modules": ["airflow_pseudo.hooks.pseudo"],
            }
        ],
        "triggers": [
            {
                "integration-name": "DICOM pseudonymisation",
                "python-modules": ["airflow_pseudo.triggers.directory"],
            }
        ],
        "connection-types": [
            {
                "connection-type": "pseudo",
                "hook-class-name": "airflow_pseudo.hooks.pseudo.PseudoHook",
                "hook-name": "DICOM pseudonymisation key",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "port", "login"],
                    "relabeling": {"password": "Pseudonymisation key"},
                    "placeholders": {
                        "password": "Secret key, at least 16 bytes (will be masked)",
                    },
                },
                "conn-fields": {
                    "strategy": {
                        "label": "Strategy",
                        "description": "'keyed' (HMAC with the key, default) or 'pymedphys'.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["keyed", "pymedphys", None],
                            "default": "keyed",
                        },
                    },
                    "profile": {
                        "label": "Profile",
                        "description": "'default' or 'pymedphys'.",
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["default", "pymedphys", None],
                            "default": "default",
                        },
                    },
                    "uid_root": {
                        "label": "UID root",
                        "description": "Organisation UID root; empty for the 2.25 form.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "date_shift_min_days": {
                        "label": "Date shift, minimum days",
                        "schema": {"type": ["integer", "null"], "default": -3650},
                    },
                    "date_shift_max_days": {
                        "label": "Date shift, maximum days",
                        "schema": {"type": ["integer", "null"], "default": -366},
                    },
                    "pymedphys_config": {
                        "label": "PyMedPhys config.toml path",
                        "description": "Pepper and epoch jitter for the 'pymedphys' strategy.",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
