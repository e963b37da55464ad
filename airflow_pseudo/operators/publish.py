"""Operator that publishes validated outputs, writes a manifest and archives the inputs."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException, AirflowNotFoundException

from airflow_pseudo.operators.bulk_fields import BulkFieldsMixin
from airflow_pseudo.operators.pseudonymise import flatten_paths, flatten_records
from airflow_pseudo.report.link import ReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context

_CHUNK = 1024 * 1024


def _sha256_of(path: Path | ObjectStoragePath) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _size_and_sha256(path: Path) -> tuple[int, str]:
    """The size and SHA-256 of a local file, read unbuffered: whole in one read if it fits a chunk.

    A buffered handle, or :func:`hashlib.file_digest` (a fresh 256 KiB buffer per file), costs
    more than hashing a typical 40 KB instance does.
    """
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        wanted = min(os.fstat(handle.fileno()).st_size + 1, _CHUNK)
        while chunk := handle.read(wanted):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _local_path(path: ObjectStoragePath) -> Path | None:
    """The path of a destination on the local file system, else ``None`` (an object store)."""
    return Path(path.path) if path.protocol in ("file", "local") else None


class _LocalFolders:
    """Publish into and archive within this machine's file systems, each folder made once.

    :param link: publish by hard link (the work output is deleted after publishing, so the
        published file ends with one name); else, or across file systems, by an atomic copy.
    """

    def __init__(self, *, link: bool) -> None:
        self.link = link
        umask = os.umask(0o022)
        os.umask(umask)
        self.mode = 0o666 & ~umask  # what a copy gets; work outputs are owner-only
        self._made: set[Path] = set()

    def make(self, folder: Path) -> None:
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)

    def link_new(self, source: Path, target: Path) -> bool:
        """Hard-link ``source`` at ``target`` if linking is on and nothing is there yet.

        ``False``: a file exists at ``target`` (an earlier try's, say), or the file system
        refuses the link; see :meth:`copy`. One system call for a new file, no lookup first.
        """
        if not self.link:
            return False
        self.make(target.parent)
        try:
            os.link(source, target)
        except OSError as exc:
            if exc.errno not in _LINK_REFUSED:
                raise
            return False
        os.chmod(target, self.mode)
        return True

    def copy(self, source: Path, target: Path) -> None:
        """Copy ``source`` to ``target`` atomically, replacing a different file there."""
        self.make(target.parent)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.publishing")
        try:
            shutil.copyfile(source, temporary)
            os.chmod(temporary, self.mode)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def move(self, source: Path, target: Path) -> bool:
        """Move ``source`` to ``target``; ``False`` if it is gone (moved by an earlier try)."""
        self.make(target.parent)
        try:
            os.rename(source, target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.move(source, target)
        return True


_LINK_REFUSED = frozenset({errno.EEXIST, errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP})


def _to_storage_path(value: str | os.PathLike[str] | ObjectStoragePath) -> ObjectStoragePath:
    if isinstance(value, ObjectStoragePath):
        return value
    text = os.fspath(value)
    if "://" not in text:
        text = "file://" + os.path.abspath(text)
    return ObjectStoragePath(text)


def _published_output(validation: dict[str, Any]) -> str:
    """The output a validation record lets publish read ("" for none)."""
    return str(validation.get("output") or "") if validation.get("status") == "ok" else ""


def _pulled(value: Any) -> Any:
    """A task's XCom as a list, fetched once.

    A mapped task's XCom is a lazy sequence: iterated, it asks the API for each map index and
    for one past the last (logged as an error, "XCom not found"); sliced, it asks once.
    """
    if value is None or isinstance(value, Mapping | str | list):
        return value
    if isinstance(value, Sequence):
        return list(value[:])
    return list(value)


def _as_bool(value: bool | str) -> bool:
    """Read a flag that may arrive as a rendered template string."""
    return str(value).strip().lower() in {"true", "1", "yes"}


class PublishOperator(BulkFieldsMixin, BaseOperator):
    """
    Publish validated outputs, write a manifest, emit an Asset event, archive the inputs.

    ``results`` are the records of :class:`~airflow_pseudo.operators.validate.ValidateOperator`
    (a list of lists from a mapped task is flattened). Every output whose validation status is
    ``ok`` is published to ``destination`` under its path relative to ``output_root``. The
    destination is an :class:`~airflow.sdk.ObjectStoragePath` or a URI: ``file://`` (or a plain
    path) works out of the box, ``s3://``, ``gs://`` and others once the matching Airflow provider
    is installed. On the local file system each file appears whole: hard-linked into place when
    the work output is deleted afterwards, else copied to a temporary name and renamed; an object
    store gets a copy.

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
    stay where they are. A failed input is archived too: its copy is in quarantine. The staging
    folder's ``claims.jsonl`` (original names) goes with the archived inputs (mode 0600), or is
    deleted with them, and the emptied staging folder is removed. Inputs left in it (not
    published) stay adoptable by a later run; with neither ``archive_dir`` nor ``delete_inputs``
    the folder is marked as done, so its published inputs are never adopted.

    Work outputs are not kept twice: once published, each output is deleted from ``output_root``
    (and emptied folders with it) unless ``keep_outputs`` is set.

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
    :param report_notes: Sentences about the run for the top of the report. (templated)
    :param left_for_next_run: How many settled files the run left in the incoming folder because
        it was capped at ``max_files``, e.g.
        ``"{{ ti.xcom_pull(task_ids='ingest', key='left_for_next_run') }}"`` (see
        :class:`~airflow_pseudo.operators.ingest.IngestOperator`); shown in the report. (templated)
    :param keep_outputs: Keep the work outputs after publishing them. Defaults to ``False``:
        they are deleted. (templated; the strings ``"true"``/``"false"`` are accepted)
    """

    bulk_fields = ("results", "pseudonymise_results")
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
        "left_for_next_run",
        "keep_outputs",
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
        keep_outputs: bool | str = False,
        left_for_next_run: int | str | None = None,
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
        self.keep_outputs = keep_outputs
        self.left_for_next_run = left_for_next_run

    def _destination(self) -> ObjectStoragePath:
        if self.conn_id and not isinstance(self.destination, ObjectStoragePath):
            return ObjectStoragePath(str(self.destination), conn_id=self.conn_id)
        return _to_storage_path(self.destination)

    def _publish_one(
        self, source: Path, target: Path | ObjectStoragePath, published_sha: str | None = None
    ) -> tuple[str, int, str]:
        """
        Copy one file unless an identical copy exists; return (status, size, sha256).

        :param target: A :class:`~pathlib.Path` for a destination on the local file system.
        :param published_sha: The SHA-256 an earlier try's manifest recorded for this target.
        """
        try:
            size, sha = _size_and_sha256(source)
        except FileNotFoundError:
            if published_sha is None or not target.exists():
                raise
            # Published by an earlier try, whose work output was then deleted (retention).
            sha = _sha256_of(target)
            if sha != published_sha:
                from airflow_pseudo.pseudonymisation.logs import printable

                raise AirflowFailException(
                    f"{printable(str(target))} differs from what an earlier try published, and "
                    "its work output was deleted after publishing: delete the damaged copy and "
                    "put the archived input back into the incoming folder to publish it again"
                ) from None
            return "unchanged", target.stat().st_size, sha
        if isinstance(target, Path):
            if self._local.link_new(source, target):
                return "published", size, sha
            if target.exists() and (
                target.samefile(source)
                or (target.stat().st_size == size and _sha256_of(target) == sha)
            ):
                return "unchanged", size, sha
            self._local.copy(source, target)
            return "published", size, sha
        if target.exists() and target.stat().st_size == size and _sha256_of(target) == sha:
            return "unchanged", size, sha
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        return "published", size, sha

    def execute(self, context: Context) -> dict[str, Any]:
        """Publish, write the manifest, record the Asset event, then archive the inputs."""
        from airflow_pseudo.pseudonymisation.io.inputs import ReadAhead
        from airflow_pseudo.pseudonymisation.logs import printable
        from airflow_pseudo.report.model import files_by_batch

        started = time.monotonic()
        self._keep_outputs = _as_bool(self.keep_outputs)
        self._local = _LocalFolders(link=not self._keep_outputs)
        # Pulled once: a mapped task's XCom is fetched from the API each time it is iterated.
        validation_batches = _pulled(self.results)
        pseudonymise_batches = _pulled(self.pseudonymise_results)
        validations = flatten_records(validation_batches)
        by_source = {r["source"]: r for r in flatten_records(pseudonymise_batches)}
        for record in validations:
            by_source.setdefault(record["source"], {"source": record["source"]})
        validation_by_source = {r["source"]: r for r in validations}

        destination = self._destination()
        earlier = self._published_digests(destination / self.manifest_name)
        local_root = _local_path(destination)
        outputs = [r["output"] for r in validations if r.get("status") == "ok" and r.get("output")]
        output_root = self.output_root or (
            os.path.commonpath([os.path.dirname(o) for o in outputs]) if outputs else None
        )

        manifest: list[dict[str, Any]] = []
        counts = {"published": 0, "unchanged": 0, "failed": 0, "skipped": 0, "quarantined": 0}
        published_root = str(destination).rstrip("/")  # formatted once, not per file
        ahead = ReadAhead([_published_output(validation_by_source.get(s, {})) for s in by_source])
        for done, (source, pseudo) in enumerate(by_source.items()):
            ahead.reached(done)
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
                target = local_root / relative if local_root else destination / relative
                try:
                    status, size, sha = self._publish_one(output, target, earlier.get(source))
                except FileNotFoundError as exc:
                    raise AirflowFailException(
                        f"Validated output is missing: {printable(output)}"
                    ) from exc
                published = f"{published_root}/{relative}" if local_root else target
                entry.update(published=str(published), status=status, size=size, sha256=sha)
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
            printable(str(destination)),
            counts["quarantined"],
            counts["failed"],
            counts["skipped"],
            printable(str(manifest_path)),
        )

        handled = {
            **files_by_batch("PseudonymiseOperator", pseudonymise_batches),
            **files_by_batch("ValidateOperator", validation_batches),
        }
        _, report_html = self._write_report(context, manifest, by_source, counts, started, handled)
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
        if not self._keep_outputs:
            self._delete_outputs(manifest, validation_by_source, output_root)
        return {**extra, "archived": archived, "run_id": summary["run_id"]}

    def _write_report(
        self,
        context: Context,
        manifest: list[dict[str, Any]],
        by_source: dict[str, dict[str, Any]],
        counts: dict[str, int],
        started: float,
        handled: dict[tuple[str, int], int],
    ) -> tuple[Any, Any]:
        """Write ``report.json`` and ``report.html`` beside the manifest; return their paths.

        :param handled: files per task and map index, from :func:`.files_by_batch`.
        """
        from airflow_pseudo.pseudonymisation.logs import printable
        from airflow_pseudo.report import build_report, write_report
        from airflow_pseudo.report.model import steps_with_files

        files = []
        for entry in manifest:
            pseudo = by_source.get(entry["source"], {})
            files.append({**pseudo, **entry, "output": pseudo.get("output")})
        ti = context.get("ti") if context else None
        dag_id = getattr(context.get("dag"), "dag_id", None) if context else None
        run_id = context.get("run_id") if context else None
        steps: list[dict[str, Any]] = []
        if ti is not None and dag_id and run_id and hasattr(ti, "get_task_breadcrumbs"):
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
            left_for_next_run=self._left_for_next_run(),
        )
        json_path, html_path = write_report(report, self._destination())
        self.log.info("Wrote the run report %s", printable(str(html_path)))
        return json_path, html_path

    def _left_for_next_run(self) -> int | None:
        """Return the count of files left for the next run, or ``None`` if it is not known."""
        if self.left_for_next_run in (None, "", "None"):
            return None
        try:
            return int(self.left_for_next_run)
        except (TypeError, ValueError):
            self.log.warning("left_for_next_run is not a count: left out of the report")
            return None

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

    @staticmethod
    def _published_digests(manifest_path: ObjectStoragePath) -> dict[str, str]:
        """Return source -> SHA-256 from the manifest an earlier try wrote, if any."""
        if not manifest_path.exists():
            return {}
        digests: dict[str, str] = {}
        with manifest_path.open("r") as handle:
            for line in handle:
                entry = json.loads(line) if line.strip() else {}
                if entry.get("record") == "file" and entry.get("sha256"):
                    digests[entry["source"]] = entry["sha256"]
        return digests

    def _delete_outputs(
        self,
        manifest: list[dict[str, Any]],
        validation_by_source: dict[str, dict[str, Any]],
        output_root: str | None,
    ) -> None:
        """Delete the published work outputs, and the folders they leave empty."""
        from airflow_pseudo.pseudonymisation.logs import printable

        done = {"published", "unchanged"}
        outputs = [
            Path(validation_by_source[e["source"]]["output"])
            for e in manifest
            if e["status"] in done and e["source"] in validation_by_source
        ]
        for output in outputs:
            output.unlink(missing_ok=True)
        if output_root is None:
            return
        root = Path(output_root)
        folders: set[Path] = set()
        for output in outputs:
            parent = output.parent
            while parent not in folders and parent.is_relative_to(root):
                folders.add(parent)
                parent = parent.parent
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty: something else lives there
                folder.rmdir()
        self.log.info("Deleted %d published work output(s) from %s", len(outputs), printable(root))

    def _archive_inputs(self, sources: list[str], manifest: list[dict[str, Any]]) -> int:
        """Move (or delete) processed inputs; return how many were handled."""
        from airflow_pseudo.incoming import RUN_FILE
        from airflow_pseudo.pseudonymisation.logs import printable

        delete = _as_bool(self.delete_inputs)
        root = Path(self.input_root or os.path.commonpath([os.path.dirname(s) for s in sources]))
        if not self.archive_dir and not delete:
            # The published inputs stay in place: a later run must never adopt them.
            (root / RUN_FILE).unlink(missing_ok=True)
            return 0
        handled = {"published", "unchanged", "quarantined", "skipped"}
        done = [e["source"] for e in manifest if e["status"] in handled]
        if not done:
            return 0
        count = 0
        archive = Path(self.archive_dir) if self.archive_dir else None
        for source in map(Path, done):
            if delete:
                source.unlink(missing_ok=True)
                count += 1
                continue
            assert archive is not None
            target = archive / source.relative_to(root)
            if self._local.move(source, target):
                count += 1
            else:
                count += target.exists()  # archived by an earlier try
        self._close_staging(root, delete)
        self.log.info(
            "%s %d processed input(s)%s",
            "Deleted" if delete else "Archived",
            count,
            "" if delete else f" to {printable(str(self.archive_dir))}",
        )
        return count

    def _close_staging(self, root: Path, delete: bool) -> None:
        """Move (or delete) ingest's record of original names, then the emptied staging folder."""
        from airflow_pseudo.incoming import CLAIMS_FILE, RUN_FILE, staged_files

        claims = root / CLAIMS_FILE
        if claims.is_file() and not delete:
            assert self.archive_dir is not None
            # Keep the record of the original names with the inputs it names, owner-only.
            target = Path(self.archive_dir) / CLAIMS_FILE
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(fd, 0o600)
                handle.write(claims.read_bytes())
        if not staged_files(root):
            claims.unlink(missing_ok=True)
            (root / RUN_FILE).unlink(missing_ok=True)
        # Inputs not published (e.g. failed without a quarantine copy) stay, with the run file,
        # so that a later run adopts them.
        with contextlib.suppress(OSError):
            root.rmdir()
