"""Operator that publishes validated outputs, writes a manifest and archives the inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from airflow_pseudo.operators.pseudonymise import flatten_paths, flatten_records
from airflow_pseudo.report.link import ReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

_CHUNK = 1024 * 1024


def _sha256_of(path: Path | ObjectStoragePath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _to_storage_path(value: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    if isinstance(value, ObjectStoragePath):
        return value
    text = os.fspath(value)
    if "://" not in text:
        text = "file://" + os.path.abspath(text)
    return ObjectStoragePath(text)


class PublishOperator(BaseOperator):
    """
    Copy validated outputs to a destination, write a manifest, emit an Asset event, archive inputs.

    ``results`` are the records of :class:`~airflow_pseudo.operators.validate.ValidateOperator`
    (a list of lists from a mapped task is flattened). Every output whose validation status is
    ``ok`` is copied to ``destination`` under its path relative to ``output_root``. The
    destination is an :class:`~airflow.sdk.ObjectStoragePath` or a URI: ``file://`` (or a plain
    path) works out of the box, ``s3://``, ``gs://`` and others once the matching Airflow provider
    is installed.

    Then ``manifest.jsonl`` is written beside the published files, last: one JSON record per input
    file (``"record": "file"``: source, published URI, status, size, sha256, validation problems,
    pseudonymise reason, quarantine path) followed by one summary record (``"record": "summary"``)
    with the counts. The same counts go into the ``extra`` of an Asset event for each of the task's
    ``outlets``, and are the task's return value.

    Beside the manifest, ``report.json`` and ``report.html`` (see :mod:`airflow_pseudo.report`)
    show the run at a glance: counts, one row per file under a neutral name, quarantine reasons,
    profile, key id and the duration of each task. The publish task's "De-identification report"
    link opens the HTML page.

    Publishing is idempotent: a file already at the destination with the same size and SHA-256 is
    left alone (``unchanged``), so a retry does not copy twice. Only once everything is published
    are the processed inputs (the ``source`` of each record) moved to ``archive_dir``, keeping their
    paths relative to ``input_root``, or deleted when ``delete_inputs`` is set; without either they
    stay where they are. A failed input is archived too: its copy is in quarantine.

    :param results: The validate task's records. (templated)
    :param destination: Where to publish: URI, path or ``ObjectStoragePath``. (templated)
    :param pseudonymise_results: The pseudonymise task's records, to enrich the manifest with
        reasons and change counts. (templated)
    :param output_root: The pseudonymise output folder; published paths are relative to it.
        Defaults to the common folder of all outputs. (templated)
    :param input_root: The folder the inputs were read from; archived paths are relative to it.
        Defaults to the common folder of all inputs. (templated)
    :param archive_dir: Where processed inputs are moved after publishing. (templated)
    :param delete_inputs: Delete processed inputs instead of archiving them. Defaults to ``False``.
        (templated; the strings ``"true"``/``"false"`` are accepted)
    :param manifest_name: File name of the manifest. Defaults to ``manifest.jsonl``. (templated)
    :param conn_id: Airflow connection for the destination's object store, if not in the URI.
    :param pseudo_conn_id: The ``pseudo`` connection the outputs were made with: the report
        names its key id (a fingerprint, never the key). ``None`` leaves the key id out.
    :param report_notes: Sentences about the run for the top of the report, e.g. how many
        files were left for the next run. (templated)
    """

    template_fields: Sequence[str] = (
        "results",
        "destination",
        "pseudonymise_results",
        "output_root",
        "input_root",
        "archive_dir",
        "manifest_name",
        "delete_inputs",
        "report_notes",
    )
    ui_color = "#e8daef"
    operator_extra_links = (ReportLink(),)

    def __init__(
        self,
        *,
        results: Any,
        destination: str | ObjectStoragePath,
        pseudonymise_results: Any = None,
        output_root: str | None = None,
        input_root: str | None = None,
        archive_dir: str | None = None,
        delete_inputs: bool | str = False,
        manifest_name: str = "manifest.jsonl",
        conn_id: str | None = None,
        pseudo_conn_id: str | None = "pseudo_default",
        report_notes: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.results = results
        self.destination = destination
        self.pseudonymise_results = pseudonymise_results
        self.output_root = output_root
        self.input_root = input_root
        self.archive_dir = archive_dir
        self.delete_inputs = delete_inputs
        self.manifest_name = manifest_name
        self.conn_id = conn_id
        self.pseudo_conn_id = pseudo_conn_id
        self.report_notes = report_notes

    def _destination(self) -> ObjectStoragePath:
        if self.conn_id and not isinstance(self.destination, ObjectStoragePath):
            return ObjectStoragePath(str(self.destination), conn_id=self.conn_id)
        return _to_storage_path(self.destination)

    def _publish_one(self, source: Path, target: ObjectStoragePath) -> tuple[str, int, str]:
        """Copy one file unless an identical copy exists; return (status, size, sha256)."""
        size = source.stat().st_size
        sha = _sha256_of(source)
        if target.exists() and target.stat().st_size == size and _sha256_of(target) == sha:
            return "unchanged", size, sha
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        return "published", size, sha

    def execute(self, context: Context) -> dict[str, Any]:
        """Publish, write the manifest, record the Asset event, then archive the inputs."""
        started = time.monotonic()
        validations = flatten_records(self.results)
        by_source = {r["source"]: r for r in flatten_records(self.pseudonymise_results)}
        for record in validations:
            by_source.setdefault(record["source"], {"source": record["source"]})
        validation_by_source = {r["source"]: r for r in validations}

        destination = self._destination()
        outputs = [r["output"] for r in validations if r.get("status") == "ok" and r.get("output")]
        output_root = self.output_root or (
            os.path.commonpath([os.path.dirname(o) for o in outputs]) if outputs else None
        )

        manifest: list[dict[str, Any]] = []
        counts = {"published": 0, "unchanged": 0, "failed": 0, "skipped": 0, "quarantined": 0}
        for source, pseudo in by_source.items():
            check = validation_by_source.get(source, {})
            entry: dict[str, Any] = {
                "record": "file",
                "source": source,
                "published": None,
                "status": None,
                "size": None,
                "sha256": None,
                "pseudonymise_status": pseudo.get("status"),
                "reason": pseudo.get("reason"),
                "validation_status": check.get("status"),
                "problems": check.get("problems", []),
                "quarantine": check.get("quarantine") or pseudo.get("quarantine"),
                "changes": pseudo.get("changes"),
                "profile": pseudo.get("profile"),
                "profile_digest": pseudo.get("profile_digest"),
                "method_codes": pseudo.get("method_codes"),
            }
            if check.get("status") == "ok" and check.get("output"):
                output = Path(check["output"])
                assert output_root is not None
                relative = output.relative_to(output_root).as_posix()
                target = destination / relative
                try:
                    status, size, sha = self._publish_one(output, target)
                except FileNotFoundError as exc:
                    raise AirflowFailException(f"Validated output is missing: {output}") from exc
                entry.update(published=str(target), status=status, size=size, sha256=sha)
            elif entry["quarantine"]:
                entry["status"] = "quarantined"
            elif "failed" in (check.get("status"), pseudo.get("status")):
                entry["status"] = "failed"
            else:
                entry["status"] = "skipped"
            counts[entry["status"]] += 1
            manifest.append(entry)

        summary: dict[str, Any] = {
            "record": "summary",
            "dag_id": getattr(context.get("dag"), "dag_id", None) if context else None,
            "run_id": context.get("run_id") if context else None,
            "destination": str(destination),
            "files": len(manifest),
            **counts,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        destination.mkdir(parents=True, exist_ok=True)
        manifest_path = destination / self.manifest_name
        with manifest_path.open("w") as handle:
            for entry in [*manifest, summary]:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self.log.info(
            "Published %d file(s) (%d new, %d unchanged) to %s; %d quarantined, %d failed, "
            "%d skipped; manifest %s",
            counts["published"] + counts["unchanged"],
            counts["published"],
            counts["unchanged"],
            destination,
            counts["quarantined"],
            counts["failed"],
            counts["skipped"],
            manifest_path,
        )

        _, report_html = self._write_report(context, manifest, by_source, counts, started)
        extra: dict[str, Any] = {
            "files": len(manifest),
            **counts,
            "destination": str(destination),
            "manifest": str(manifest_path),
            "report": str(report_html),
        }
        outlet_events = context.get("outlet_events") if context else None
        if outlet_events is not None:
            for outlet in self.outlets or []:
                outlet_events[outlet].extra = extra

        self._lineage_folders = ([output_root], [destination, self.archive_dir])
        archived = self._archive_inputs(list(by_source), manifest)
        return {**extra, "archived": archived, "run_id": summary["run_id"]}

    def _write_report(
        self,
        context: Context,
        manifest: list[dict[str, Any]],
        by_source: dict[str, dict[str, Any]],
        counts: dict[str, int],
        started: float,
    ) -> tuple[Any, Any]:
        """Write ``report.json`` and ``report.html`` beside the manifest; return their paths."""
        from airflow_pseudo.report import build_report, write_report
        from airflow_pseudo.report.model import files_by_batch, steps_with_files

        files = []
        for entry in manifest:
            pseudo = by_source.get(entry["source"], {})
            files.append({**pseudo, **entry, "output": pseudo.get("output")})
        ti = context.get("ti") if context else None
        dag_id = getattr(context.get("dag"), "dag_id", None) if context else None
        run_id = context.get("run_id") if context else None
        steps: list[dict[str, Any]] = []
        if ti is not None and dag_id and run_id and hasattr(ti, "get_task_breadcrumbs"):
            handled = {
                **files_by_batch("PseudonymiseOperator", self.pseudonymise_results),
                **files_by_batch("ValidateOperator", self.results),
            }
            steps = steps_with_files(ti.get_task_breadcrumbs(dag_id, run_id), handled)
        steps.append(
            {
                "task_id": self.task_id,
                "map_index": -1,
                "operator": type(self).__name__,
                "state": "running",
                "seconds": time.monotonic() - started,
                "files": len(manifest),
            }
        )
        report = build_report(
            files,
            counts=counts,
            steps=steps,
            key_id=self._key_id(files),
            run={"dag_id": dag_id, "run_id": run_id},
            notes=[str(n) for n in flatten_paths(self.report_notes)],
        )
        json_path, html_path = write_report(report, self._destination())
        self.log.info("Wrote the run report %s", html_path)
        return json_path, html_path

    def _key_id(self, files: list[dict[str, Any]]) -> str | None:
        """Return the key's fingerprint: from the records, else from the ``pseudo`` connection."""
        recorded = {f["key_id"] for f in files if f.get("key_id")}
        if recorded:
            return ", ".join(sorted(recorded))
        if not self.pseudo_conn_id:
            return None
        from airflow_pseudo.hooks.pseudo import PseudoHook
        from airflow_pseudo.pseudonymisation import ConfigurationError

        try:
            return PseudoHook(pseudo_conn_id=self.pseudo_conn_id).get_key().key_id
        except (AirflowNotFoundException, ConfigurationError):
            self.log.info("No key in connection %r: the report has no key id", self.pseudo_conn_id)
            return None

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Report the pseudonymised folder and the destination (and archive) to OpenLineage."""
        from airflow_pseudo.lineage import folder_lineage

        inputs, outputs = getattr(self, "_lineage_folders", ([], []))
        return folder_lineage(inputs, outputs)

    def _archive_inputs(self, sources: list[str], manifest: list[dict[str, Any]]) -> int:
        """Move (or delete) processed inputs; return how many were handled."""
        delete = str(self.delete_inputs).strip().lower() in {"true", "1", "yes"}
        if not self.archive_dir and not delete:
            return 0
        handled = {"published", "unchanged", "quarantined", "skipped"}
        done = [e["source"] for e in manifest if e["status"] in handled]
        if not done:
            return 0
        root = Path(self.input_root or os.path.commonpath([os.path.dirname(s) for s in sources]))
        count = 0
        for source in map(Path, done):
            if delete:
                source.unlink(missing_ok=True)
                count += 1
                continue
            assert self.archive_dir is not None
            target = Path(self.archive_dir) / source.relative_to(root)
            if not source.exists():
                count += target.exists()  # archived by an earlier try
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            count += 1
        from airflow_pseudo.pseudonymisation.incoming import CLAIMS_FILE

        claims = root / CLAIMS_FILE
        if self.archive_dir and not delete and claims.is_file():
            # Keep ingest's record of the original names with the inputs it names.
            shutil.copyfile(claims, Path(self.archive_dir) / CLAIMS_FILE)
        self.log.info(
            "%s %d processed input(s)%s",
            "Deleted" if delete else "Archived",
            count,
            "" if delete else f" to {self.archive_dir}",
        )
        return count
