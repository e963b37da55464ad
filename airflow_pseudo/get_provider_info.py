"""Provider metadata read by Airflow's provider discovery (entry point ``apache_airflow_provider``).

Every Airflow CLI call and component imports this module, so it holds a plain literal dict and
imports nothing. The dict must validate against Airflow's ``provider_info.schema.json`` and its
``package-name`` must equal the distribution name in ``pyproject.toml``.
"""

from __future__ import annotations

from typing import Any

#: Also ``[project.urls] Documentation`` in pyproject.toml, shown on Airflow's providers page.
DOCUMENTATION_URL = "https://github.com/airflow-pseudo/airflow-pseudo/blob/main/docs/provider.md"


def get_provider_info() -> dict[str, Any]:
    """Return the provider metadata for ``airflow-pseudo``."""
    return {
        "package-name": "airflow-pseudo",
        "documentation-url": DOCUMENTATION_URL,
        "name": "DICOM pseudonymisation",
        "description": (
            "Pseudonymise DICOM files with a keyed strategy, validate the outputs and publish "
            "them, as Airflow operators, a deferrable directory sensor and a ``pseudo`` connection."
        ),
        "integrations": [
            {
                "integration-name": "DICOM pseudonymisation",
                "external-doc-url": DOCUMENTATION_URL,
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
        "extra-links": ["airflow_pseudo.report.link.ReportLink"],
        "plugins": [
            {
                "name": "airflow_pseudo_reports",
                "plugin-class": "airflow_pseudo.report.plugin.ReportPlugin",
            }
        ],
        "config": {
            "pseudo": {
                "description": "Options of the airflow-pseudo provider.",
                "options": {
                    "reports_root": {
                        "description": (
                            "Folder the API server serves run reports from (the publish "
                            "destinations of the DAGs). Unset: $AIRFLOW_PSEUDO_DATA_DIR/published, "
                            "else $AIRFLOW_HOME/pseudo-data/published."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/data/pseudo/published",
                        "default": None,
                    }
                },
            }
        },
        "connection-types": [
            {
                "connection-type": "pseudo",
                "hook-class-name": "airflow_pseudo.hooks.pseudo.PseudoHook",
                "hook-name": "DICOM pseudonymisation key",
                "ui-field-behaviour": {
                    # Every option has its own field below; a raw JSON box would compete with them.
                    "hidden-fields": ["host", "schema", "port", "login", "extra"],
                    "relabeling": {"password": "Pseudonymisation key"},
                    "placeholders": {
                        "password": "Secret key, at least 16 bytes (will be masked)",
                    },
                },
                "conn-fields": {
                    "strategy": {
                        "label": "Strategy",
                        "description": (
                            "keyed: HMAC with the key (default). pymedphys: PyMedPhys-compatible "
                            "values from its config.toml."
                        ),
                        "schema": {
                            "type": ["string", "null"],
                            "enum": ["keyed", "pymedphys"],
                            "default": "keyed",
                        },
                    },
                    "profile": {
                        "label": "Profile",
                        "description": (
                            "'basic', 'default', 'research', 'pymedphys' or the path of a "
                            "project profile file (.yaml); see "
                            "'airflow-pseudo explain' and docs/profiles.md."
                        ),
                        "schema": {"type": ["string", "null"], "default": "default"},
                    },
                    "uid_root": {
                        "label": "UID root",
                        "description": (
                            "Your organisation's UID root for new UIDs; empty for the 2.25. form."
                        ),
                        "schema": {"type": ["string", "null"], "default": None},
                    },
                    "date_shift_min_days": {
                        "label": "Date shift, minimum days",
                        "description": "Each patient's dates move by a keyed number of days.",
                        "schema": {"type": ["integer", "null"], "default": -3650},
                    },
                    "date_shift_max_days": {
                        "label": "Date shift, maximum days",
                        "description": "Upper end of the per-patient date shift (inclusive).",
                        "schema": {"type": ["integer", "null"], "default": -366},
                    },
                    "pymedphys_config": {
                        "label": "PyMedPhys config.toml path",
                        "description": (
                            "Pepper and epoch jitter for the 'pymedphys' strategy, readable on "
                            "the workers."
                        ),
                        "schema": {"type": ["string", "null"], "default": None},
                    },
                },
            }
        ],
    }
