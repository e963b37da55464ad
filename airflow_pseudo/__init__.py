"""DICOM pseudonymisation as an Apache Airflow provider.

This top-level package imports neither pydicom nor Airflow, so provider discovery and DAG parsing
stay cheap. The pseudonymisation core is :mod:`airflow_pseudo.pseudonymisation`.
"""

__version__ = "0.1.0"
