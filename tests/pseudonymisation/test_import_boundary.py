"""The core imports nothing from Airflow, so it is fast to import and usable on its own."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_airflow():
    """Importing airflow_pseudo.pseudonymisation (and using it) loads no airflow module."""
    script = (
        "import sys\n"
        "import airflow_pseudo.pseudonymisation as p\n"
        "from airflow_pseudo.testing import make_instance\n"
        "p.pseudonymise(make_instance('ct'), key=b'k' * 32)\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
