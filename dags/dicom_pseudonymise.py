"""
Pseudonymise the DICOM files that land in an incoming folder, on a schedule.

wait (DirectorySensor) -> ingest (claim the settled files) -> pseudonymise -> validate -> publish

- **wait** waits, in reschedule mode, for settled files in ``params.incoming_dir``. If nothing
  settles before the sensor's timeout the run ends as *skipped*, so an empty folder never pages
  anyone; a folder that does not exist fails the run at once.
- **ingest** (:class:`~airflow_pseudo.operators.ingest.IngestOperator`) checks the connection
  and folders, then moves the files into this run's staging folder (one atomic rename per file),
  so two overlapping runs never take the same file. They get neutral names (``000001.dcm``...)
  so no file or folder name, which may carry PHI, reaches XCom, logs or manifests; the original
  relative paths are kept only in ``claims.jsonl`` in the staging folder. The sensor pushes
  only a count for the same reason. Files left in the staging folder of a failed run are
  adopted by the next run.
- **pseudonymise** returns one result record per file (XCom); failed files are quarantined, and
  the task fails (without retrying: bad data stays bad) if more than ``params.max_failed_files``
  failed.
- **validate** re-checks every output against its original and fails on any residual identifier.
- **publish** copies the validated outputs to ``params.publish_dir/<run_id>`` with a
  ``manifest.jsonl``, emits an event on the ``dicom_pseudonymised`` Asset, then moves the
  processed inputs to ``params.archive_dir/<run_id>`` and deletes the work outputs (unless
  ``params.keep_outputs``). Its run report counts the settled files that ``params.max_files``
  left in the incoming folder for the next run.

After a failure, see ``docs/operations.md``: clearing ``ingest`` (with its downstream tasks) is
always safe, and so is doing nothing (the next run adopts the files).

The key comes from the ``pseudo_default`` connection (``AIRFLOW_CONN_PSEUDO_DEFAULT``). Folder
defaults live under ``$AIRFLOW_PSEUDO_DATA_DIR`` (default ``$AIRFLOW_HOME/pseudo-data``); the
schedule is ``$AIRFLOW_PSEUDO_SCHEDULE`` (default every 30 minutes). Staging sits in
``params.work_dir`` and must be on the same file system as the incoming folder.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Asset, Param, TriggerRule

from airflow_pseudo.operators.ingest import IngestOperator
from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator
from airflow_pseudo.operators.publish import PublishOperator
from airflow_pseudo.operators.validate import ValidateOperator
from airflow_pseudo.sensors.directory import DirectorySensor

DATA_DIR = os.environ.get("AIRFLOW_PSEUDO_DATA_DIR") or os.path.join(
    os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow"), "pseudo-data"
)
SCHEDULE = os.environ.get("AIRFLOW_PSEUDO_SCHEDULE", "*/30 * * * *")

#: Emitted by ``publish`` with the run's counts in its extra; schedule downstream DAGs on it.
PUBLISHED = Asset(name="dicom_pseudonymised")

# Run-scoped folders, rendered per run.
STAGING = "{{ params.work_dir }}/staging/{{ run_id }}"
OUTPUT = "{{ params.work_dir }}/output/{{ run_id }}"
QUARANTINE = "{{ params.work_dir }}/quarantine/{{ run_id }}"

PARAMS = {
    "incoming_dir": Param(f"{DATA_DIR}/incoming", type="string", description="Folder to watch"),
    "work_dir": Param(
        f"{DATA_DIR}/work",
        type="string",
        description="Staging, outputs and quarantine, per run; same file system as incoming",
    ),
    "publish_dir": Param(f"{DATA_DIR}/published", type="string", description="Published files"),
    "archive_dir": Param(f"{DATA_DIR}/archive", type="string", description="Processed inputs"),
    "pattern": Param("**/*", type="string", description="Glob of files to take"),
    "settle_seconds": Param(60, type="number", minimum=0, description="Unchanged for this long"),
    "min_files": Param(
        1, type="integer", minimum=0, description="0: do not wait (e.g. to adopt a failed run)"
    ),
    "max_files": Param(1000, type="integer", minimum=1, description="Files taken per run"),
    "marker": Param(None, type=["null", "string"], description="e.g. _SUCCESS"),
    "max_failed_files": Param(0, type="integer", minimum=0, description="Failure policy"),
    "workers": Param(1, type="integer", minimum=1),
    "profile": Param(
        "",
        type="string",
        description="basic, default, research, pymedphys or a profile file (empty: connection's)",
    ),
    "delete_inputs": Param(False, type="boolean", description="Delete instead of archive"),
    "keep_outputs": Param(
        False, type="boolean", description="Keep work outputs after publishing them"
    ),
}


with DAG(
    dag_id="dicom_pseudonymise",
    description="Pseudonymise, validate and publish DICOM from an incoming folder",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    dagrun_timeout=timedelta(hours=6),
    params=PARAMS,
    render_template_as_native_obj=True,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=15),
    },
    tags=["dicom", "pseudonymisation"],
    doc_md=__doc__,
) as dag:
    wait = DirectorySensor(
        task_id="wait",
        folder="{{ params.incoming_dir }}",
        pattern="{{ params.pattern }}",
        settle_seconds="{{ params.settle_seconds }}",
        min_files="{{ params.min_files }}",
        max_files="{{ params.max_files }}",
        marker="{{ params.marker }}",
        return_files=False,  # names may carry PHI: push only the count
        mode="reschedule",
        poke_interval=60,
        timeout=timedelta(minutes=25).total_seconds(),
        soft_fail=True,
        retries=0,
    )

    ingest = IngestOperator(
        task_id="ingest",
        incoming_dir="{{ params.incoming_dir }}",
        staging_dir=STAGING,
        pattern="{{ params.pattern }}",
        settle_seconds="{{ params.settle_seconds }}",
        min_files="{{ params.min_files }}",
        max_files="{{ params.max_files }}",
        marker="{{ params.marker }}",
        # Also when wait was skipped (nothing new): files this run (cleared) or a failed run
        # left in staging are still processed.
        trigger_rule=TriggerRule.NONE_FAILED,
    )
    wait >> ingest

    pseudonymise = PseudonymiseOperator(
        task_id="pseudonymise",
        files=ingest.output,
        input_root=STAGING,
        output_dir=OUTPUT,
        quarantine_dir=QUARANTINE,
        workers="{{ params.workers }}",
        max_failed_files="{{ params.max_failed_files }}",
        profile="{{ params.profile }}",
    )

    validate = ValidateOperator(
        task_id="validate",
        results=pseudonymise.output,
        quarantine_dir=QUARANTINE,
        workers="{{ params.workers }}",
        profile="{{ params.profile }}",
    )

    publish = PublishOperator(
        task_id="publish",
        results=validate.output,
        pseudonymise_results=pseudonymise.output,
        destination="{{ params.publish_dir }}/{{ run_id }}",
        output_root=OUTPUT,
        input_root=STAGING,
        archive_dir="{{ params.archive_dir }}/{{ run_id }}",
        delete_inputs="{{ params.delete_inputs }}",
        keep_outputs="{{ params.keep_outputs }}",
        # A count only: how many settled files max_files left for the next run.
        left_for_next_run="{{ ti.xcom_pull(task_ids='ingest', key='left_for_next_run') }}",
        outlets=[PUBLISHED],
    )

    validate >> publish
