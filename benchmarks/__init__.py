"""Side-by-side throughput benchmarks for airflow-pseudo and its peers (issue 6, item 5).

Run with ``make bench`` or ``python -m benchmarks.run --help``. Each measurement runs in its own
subprocess (:mod:`benchmarks.measure`) so imports, caches and peak memory never mix between tools.

This package must stay importable with the standard library alone: the dcmanon measurement may
run under another interpreter (a scratch venv holding dcmanon) that has neither pydicom nor
airflow-pseudo installed.
"""
