"""
Scale-out variant of ``dicom_pseudonymise``: batches of files mapped over parallel tasks.

wait -> ingest (claim, split into batches) -> pseudonymise[batch] -> validate[batch] -> publish

``ingest`` claims the settled files like ``dicom_pseudonymise`` does, then splits them into
batches of at least ``params.batch_size`` files, enlarged so that there are at most
``params.max_batches`` (by default as many as may run at once: one wave of tasks handles the run,
each paying its start-up once). ``pseudonymise`` and ``validate`` are mapped over the batches with
dynamic task mapping, so each batch runs as its own task instance (on any worker of a Celery or
Kubernetes deployment); each returns the per-file records of its batch. One ``publish`` collects
every batch, writes one manifest and archives the inputs. ``params.max_failed_files`` applies per
batch. All batches write into the same run-scoped output folder.
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
SCHEDULE = os.environ.get("AIRFLOW_PSEUDO_MAPPED_SCHEDULE", "0 * * * *")

PUBLISHED = Asset(name="dicom_pseudonymised")
PARALLEL_BATCHES = 8
"""Mapped pseudonymise (and validate) tasks of a run that may run at once."""

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
    "max_files": Param(20000, type="integer", minimum=1, description="Files taken per run"),
    "marker": Param(None, type=["null", "string"], description="e.g. _SUCCESS"),
    "batch_size": Param(
        1000, type="integer", minimum=1, description="Files per mapped task, at least"
    ),
    "max_batches": Param(
        PARALLEL_BATCHES,
        type="integer",
        minimum=1,
        description=f"Mapped tasks at most: batches grow to fit ({PARALLEL_BATCHES} run at once)",
    ),
    "max_failed_files": Param(0, type="integer", minimum=0, description="Per batch"),
    "workers": Param(1, type="integer", minimum=1, description="Processes per batch"),
    "delete_inputs": Param(False, type="boolean", description="Delete instead of archive"),
    "keep_outputs": Param(
        False, type="boolean", description="Keep work outputs after publishing them"
    ),
}


with DAG(
    dag_id="dicom_pseudonymise_mapped",
    description="Pseudonymise DICOM in parallel batches (dynamic task mapping)",
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
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
        timeout=timedelta(minutes=50).total_seconds(),
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
        batch_size="{{ params.batch_size }}",
        max_batches="{{ params.max_batches }}",
        # Also when wait was skipped (nothing new): files this run (cleared) or a failed run
        # left in staging are still processed.
        trigger_rule=TriggerRule.NONE_FAILED,
    )
    wait >> ingest

    pseudonymise = PseudonymiseOperator.partial(
        task_id="pseudonymise",
        input_root=STAGING,
        output_dir=OUTPUT,
        quarantine_dir=QUARANTINE,
        workers="{{ params.workers }}",
        max_failed_files="{{ params.max_failed_files }}",
        max_active_tis_per_dagrun=PARALLEL_BATCHES,
    ).expand(files=ingest.output)

    validate = ValidateOperator.partial(
        task_id="validate",
        quarantine_dir=QUARANTINE,
        workers="{{ params.workers }}",
        max_active_tis_per_dagrun=PARALLEL_BATCHES,
    ).expand(results=pseudonymise.output)

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
