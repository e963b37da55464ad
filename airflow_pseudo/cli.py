"""The ``airflow-pseudo`` command: pseudonymise, validate, explain, generate-key.

Exit status: 0 when nothing failed, 1 when some files failed (every other file is still
processed), 2 for usage or configuration errors, reported in one line without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from airflow_pseudo import __version__

EXIT_OK, EXIT_FILES_FAILED, EXIT_USAGE = 0, 1, 2


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for configuration errors
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _profile_arguments(group: Any, *, default: str | None, help: str) -> None:
    group.add_argument(
        "--profile",
        default=default,
        metavar="NAME|FILE",
        help="basic, default, research, pymedphys or a project profile file (.yaml); " + help,
    )
    group.add_argument(
        "--option",
        action="append",
        default=[],
        dest="options",
        metavar="OPTION",
        help="a PS3.15 Annex E option to add, e.g. 'Clean Descriptors' (repeatable)",
    )


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pseudonymisation settings")
    group.add_argument("--key-file", help="file holding the project key (else $AIRFLOW_PSEUDO_KEY)")
    group.add_argument("--strategy", choices=("keyed", "pymedphys"), default="keyed")
    _profile_arguments(group, default=None, help="default: the strategy's name")
    group.add_argument("--pymedphys-config", help="PyMedPhys config.toml with [pseudo] pepper")
    group.add_argument("--uid-root", help="organisation UID root (default: 2.25.<decimal>)")
    group.add_argument(
        "--date-shift-days",
        default=None,
        metavar="MIN,MAX",
        help="range of the per-patient date offset (default: the profile file's, else -3650,-366)",
    )
    group.add_argument(
        "--keep", nargs="*", default=[], metavar="KEYWORD", help="attributes to keep unchanged"
    )
    group.add_argument(
        "--allow-identifying-pixels",
        "--allow-burned-in",
        dest="allow_burned_in",
        action="store_true",
        help="publish images whose pixels may identify the patient: BurnedInAnnotation YES, "
        "RecognizableVisualFeatures YES, or a secondary capture, ultrasound or photograph "
        "without BurnedInAnnotation (--allow-burned-in is the older name)",
    )
    group.add_argument("--workers", type=int, default=1, help="parallel processes (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="airflow-pseudo", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    run = commands.add_parser("pseudonymise", help="pseudonymise a DICOM file or folder")
    run.add_argument("input", help="a DICOM file or a folder (searched recursively)")
    run.add_argument("-o", "--output", help="output folder (default: <input>-pseudonymised)")
    run.add_argument("--quarantine", help="folder for failed inputs (default: <output>-quarantine)")
    run.add_argument("--results", help="write one JSON result record per file to this .jsonl")
    run.add_argument(
        "--layout",
        choices=("uids", "mirror"),
        default="uids",
        help="uids: <study>/<series>/<instance>.dcm; mirror: input paths (may hold PHI)",
    )
    run.add_argument(
        "--durability",
        choices=("batch", "file", "none"),
        default="batch",
        help="batch: one sync per chunk of outputs before they appear (default); "
        "file: fsync each output; none: leave it to the OS",
    )
    _settings_arguments(run)

    check = commands.add_parser("validate", help="re-check outputs against their originals")
    check.add_argument("results", help="the .jsonl written by 'pseudonymise --results'")
    check.add_argument("--quarantine", help="move failing outputs to this folder")
    check.add_argument("--report", help="write one JSON validation record per file to this .jsonl")
    _settings_arguments(check)

    explain = commands.add_parser("explain", help="print what the profile does to each attribute")
    _profile_arguments(explain, default="default", help="default: %(default)s")
    explain.add_argument(
        "--summary", action="store_true", help="a table of the shipped profiles (Markdown)"
    )
    explain.add_argument(
        "file", nargs="?", help="a DICOM file: say what would happen to each element (dry run)"
    )

    keygen = commands.add_parser("generate-key", help="write a new random project key file")
    keygen.add_argument("path", help="where to write the key (refuses to overwrite)")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors, --help, --version
        return int(exit_.code or 0)
    from airflow_pseudo.pseudonymisation.errors import ConfigurationError

    try:
        command: Callable[[argparse.Namespace, TextIO], int] = _COMMANDS[args.command]
        return command(args, out)
    except (ConfigurationError, FileNotFoundError, FileExistsError, ValueError) as exc:
        from airflow_pseudo.pseudonymisation.logs import printable

        print(f"airflow-pseudo: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_USAGE


def _settings(args: argparse.Namespace, *, key_required: bool = True) -> Any:
    from airflow_pseudo.pseudonymisation import MissingKeyError, build_recipe, load_key

    key = None
    if args.strategy == "keyed" and (key_required or args.key_file):
        key = load_key(args.key_file)
    elif args.strategy == "keyed":
        try:
            key = load_key()
        except MissingKeyError:
            key = None  # validation without a key runs the key-free checks
    recipe = build_recipe(
        check=False,
        strategy=args.strategy,
        key=key,
        profile=args.profile or ("pymedphys" if args.strategy == "pymedphys" else "default"),
        uid_root=args.uid_root,
        date_shift_days=args.date_shift_days,
        pymedphys_config=args.pymedphys_config,
        keep_keywords=args.keep,
        options=args.options,
        allow_burned_in=args.allow_burned_in,
        output_layout=getattr(args, "layout", "uids"),
        durability=getattr(args, "durability", "batch"),
    )
    try:
        recipe.check()
    except MissingKeyError:
        if key_required:
            raise
    return recipe


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[Any], None] | None]:
    """A progress bar on an interactive terminal for long runs; silent otherwise."""
    if total < 20 or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda _result: bar.advance(task)


def _write_jsonl(path: str | None, records: Sequence[Any]) -> None:
    from airflow_pseudo.pseudonymisation.io.records import ResultsFile

    if path:
        with ResultsFile(path) as results:
            for record in records:
                results.write(record.to_dict())


class _RecordsAsTheyCome:
    """Writes each record to the results file as it arrives; remembers a failed write.

    After a failed write no more records are written, and the outputs of the records missing
    from the file are removed: no output is left that no record names.
    """

    def __init__(self, path: str | None, progress: Callable[[Any], None] | None) -> None:
        from airflow_pseudo.pseudonymisation.io.records import ResultsFile

        self.file = ResultsFile(path) if path else None
        self.progress = progress
        self.error: OSError | None = None

    def __call__(self, result: Any) -> None:
        if self.file is not None and self.error is None:
            try:
                self.file.write(result.to_dict())
            except OSError as exc:
                self.error = exc
        if self.progress:
            self.progress(result)

    def finish(self, results: Sequence[Any]) -> int:
        """Close the file; remove the outputs of unwritten records. Returns how many went."""
        if self.file is None:
            return 0
        try:
            self.file.close()
        except OSError as exc:
            self.error = self.error or exc
        if self.error is None:
            return 0
        removed = 0
        for result in results[self.file.written :]:
            if result.output:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(result.output)
                    removed += 1
        return removed


def _pseudonymise(args: argparse.Namespace, out: TextIO) -> int:
    from airflow_pseudo.pseudonymisation import (
        default_output_dir,
        default_quarantine_dir,
        pseudonymise_files,
    )
    from airflow_pseudo.pseudonymisation.io.inputs import iter_files
    from airflow_pseudo.pseudonymisation.logs import printable

    settings = _settings(args)
    source = Path(args.input)
    if source.is_dir():
        files, root = list(iter_files(source)), source
    elif source.is_file():
        files, root = [source], None
    else:
        raise FileNotFoundError(f"no such file or folder: {source}")
    output = Path(args.output) if args.output else default_output_dir(source)
    quarantine = Path(args.quarantine) if args.quarantine else default_quarantine_dir(output)
    with _progress(len(files), "pseudonymising") as progress:
        records = _RecordsAsTheyCome(args.results, progress)
        results = pseudonymise_files(
            files,
            output,
            settings=settings,
            input_root=root,
            quarantine_dir=quarantine,
            workers=args.workers,
            progress=records,
        )
    removed = records.finish(results)
    counts = Counter(r.status for r in results)
    copied = sum(1 for r in results if r.status == "failed" and r.quarantine)
    for result in results:
        if result.status == "failed":
            kept = "" if result.quarantine else " (not quarantined)"
            print(f"failed: {printable(result.source)}: {result.reason}{kept}", file=out)
    print(
        f"pseudonymised {len(results)} files: {counts['ok']} ok, {counts['skipped']} skipped "
        f"(not DICOM), {counts['failed']} failed; outputs in {printable(output)}"
        + (f"; {copied} failed input(s) copied to {printable(quarantine)}" if copied else ""),
        file=out,
    )
    if records.error is not None:
        reason = records.error.strerror or type(records.error).__name__
        print(
            f"airflow-pseudo: error: the results file could not be written ({reason}): "
            f"it holds the first {records.file.written if records.file else 0} records; "
            f"{removed} output(s) without a record were removed",
            file=sys.stderr,
        )
        return EXIT_FILES_FAILED
    return EXIT_FILES_FAILED if counts["failed"] else EXIT_OK


def _validate(args: argparse.Namespace, out: TextIO) -> int:
    from airflow_pseudo.pseudonymisation import validate_results
    from airflow_pseudo.pseudonymisation.logs import printable

    settings = _settings(args, key_required=False)
    with open(args.results, encoding="utf-8") as stream:
        records = [json.loads(line) for line in stream if line.strip()]
    with _progress(len(records), "validating") as progress:
        verdicts = validate_results(
            records,
            settings=settings,
            quarantine_dir=args.quarantine,
            workers=args.workers,
            progress=progress,
        )
    _write_jsonl(args.report, verdicts)
    counts = Counter(v.status for v in verdicts)
    for verdict in verdicts:
        if verdict.status == "failed":
            problems = "; ".join(verdict.problems)
            print(f"invalid: {printable(verdict.output or '')}: {problems}", file=out)
    print(
        f"validated {len(verdicts)} records: {counts['ok']} ok, {counts['failed']} failed, "
        f"{counts['skipped']} not pseudonymised",
        file=out,
    )
    if settings.strategy == "keyed" and settings.key is None:
        print("key checks skipped: no key given (only the key-free checks ran)", file=out)
    return EXIT_FILES_FAILED if counts["failed"] else EXIT_OK


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    from airflow_pseudo.pseudonymisation.errors import ConfigurationError, UnsupportedInputError
    from airflow_pseudo.pseudonymisation.io.inputs import read_dataset
    from airflow_pseudo.pseudonymisation.policy.explain import dry_run, summary_table
    from airflow_pseudo.pseudonymisation.policy.profile import resolve_profile

    if args.summary:
        lines = summary_table()
    else:
        profile = resolve_profile(args.profile, (), args.options)
        if args.file:
            try:
                dataset = read_dataset(args.file, named_as_dicom=True)
            except UnsupportedInputError as exc:
                raise ConfigurationError(f"{args.file}: {exc}") from None
            lines = dry_run(profile, dataset)
        else:
            lines = profile.describe()
    for line in lines:
        print(line, file=out)
    return EXIT_OK


def _generate_key(args: argparse.Namespace, out: TextIO) -> int:
    path = Path(args.path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as stream:
        stream.write(secrets.token_urlsafe(32) + "\n")
    print(
        f"wrote a new project key to {path} (keep it secret; losing it unlinks pseudonyms)",
        file=out,
    )
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "pseudonymise": _pseudonymise,
    "validate": _validate,
    "explain": _explain,
    "generate-key": _generate_key,
}

if __name__ == "__main__":
    sys.exit(main())
