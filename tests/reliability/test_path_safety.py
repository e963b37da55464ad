"""Path safety: output and quarantine folders inside the input are refused at every level, and
output names never escape the output folder. (Links leading outside the input folder: see
test_bad_input.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path, PurePath

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import (
    ConfigurationError,
    PseudonymKey,
    Settings,
    UnsupportedInputError,
    pseudonymise_directory,
    pseudonymise_files,
)
from airflow_pseudo.pseudonymisation.io.inputs import (
    InputFolder,
    InputOutsideRootError,
    NotRegularFileError,
)
from airflow_pseudo.pseudonymisation.io.outputs import OutputFolder, safe_join
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

CLI = str(Path(sys.executable).with_name("airflow-pseudo"))


@pytest.fixture
def incoming(tmp_path: Path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    pydicom.dcmwrite(folder / "a.dcm", make_instance("ct"), enforce_file_format=True)
    return folder


@pytest.mark.parametrize(
    ("option", "relative"), [("-o", "."), ("-o", "out"), ("--quarantine", "sub/q")]
)
def test_cli_refuses_folders_inside_the_input(
    tmp_path: Path, incoming: Path, option: str, relative: str
):
    key = tmp_path / "k"
    key.write_bytes(b"path safety key of 32 bytes long")
    args = [CLI, "pseudonymise", str(incoming), "--key-file", str(key)]
    if option == "--quarantine":
        args += ["-o", str(tmp_path / "out")]
    args += [option, str(incoming / relative)]
    before = sorted(p.name for p in incoming.rglob("*"))
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "must not be inside the input folder" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in incoming.rglob("*")) == before


@pytest.mark.usefixtures("pseudo_conn")
@pytest.mark.parametrize("which", ["output_dir", "quarantine_dir"])
def test_operator_refuses_folders_inside_the_input(tmp_path: Path, incoming: Path, which: str):
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_pseudo.operators.pseudonymise import PseudonymiseOperator

    folders = {"output_dir": str(tmp_path / "out"), which: str(incoming / "inside")}
    op = PseudonymiseOperator(task_id="p", input_path=str(incoming), **folders)
    with pytest.raises(AirflowFailException, match="must not be inside the input folder"):
        op.execute({"run_id": "r"})  # type: ignore[arg-type]
    assert not (incoming / "inside").exists()


def test_core_refuses_output_equal_to_or_inside_input(incoming: Path, key_bytes: bytes):
    settings = Settings(key=PseudonymKey(key_bytes))
    for output in (incoming, incoming / "deeper" / "out"):
        with pytest.raises(ConfigurationError, match="inside the input folder"):
            pseudonymise_directory(incoming, output, settings=settings)


@pytest.mark.parametrize("name", ["../x.dcm", "../../etc/x.dcm", "/etc/x.dcm", "a/../../x.dcm"])
def test_safe_join_never_escapes(tmp_path: Path, name: str):
    with pytest.raises(UnsupportedInputError, match="escape"):
        safe_join(tmp_path / "out", PurePath(name))
    outputs = OutputFolder(tmp_path / "out")
    outputs.join(PurePath("a", "x.dcm"))  # a checked folder is remembered...
    with pytest.raises(UnsupportedInputError, match="escape"):
        outputs.join(PurePath(name))  # ...and never lets a later name out


@pytest.mark.parametrize(
    ("folders", "name"),
    [(("..",), "x.dcm"), (("a", "..", ".."), "x.dcm"), (("a/../..",), "x.dcm"), ((), "../x.dcm"),
     (("a",), ".."), (("/etc",), "x.dcm")],
)  # fmt: skip
def test_output_names_given_in_parts_never_escape(
    tmp_path: Path, folders: tuple[str, ...], name: str
):
    """UIDs kept by a profile name outputs as they are: a hostile one cannot lead out."""
    outputs = OutputFolder(tmp_path / "out")
    plain = outputs.join_parts(("study", "series"), "x.dcm")  # remembered, as for a series
    assert plain == str(outputs.join(PurePath("study", "series", "x.dcm")))
    with pytest.raises(UnsupportedInputError, match="escape"):
        outputs.join_parts(folders, name)


def test_plain_output_folders_resolve_as_safe_join_does(tmp_path: Path):
    """The one-lstat shortcut for a new series folder agrees with the full check everywhere."""
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (root / "study" / "real").mkdir(parents=True)
    (root / "study" / "target").mkdir()
    elsewhere.mkdir()
    (root / "study" / "inside-link").symlink_to(root / "study" / "target")
    (root / "study" / "outside-link").symlink_to(elsewhere)
    (root / "study" / "file").write_bytes(b"")
    (root / "linked-study").symlink_to(root / "study")
    outputs = OutputFolder(root)
    for folders in [("study", "real"), ("study", "new"), ("new", "new"), ("study", "inside-link"),
                    ("study", "file"), ("linked-study", "real"), ("study",), ()]:  # fmt: skip
        expected = str(safe_join(root, PurePath(*folders)) / "x.dcm")
        assert outputs.join_parts(folders, "x.dcm") == expected, folders
    for folders in [("study", "outside-link"), ("linked-study", "outside-link")]:
        with pytest.raises(UnsupportedInputError, match="escape"):
            outputs.join_parts(folders, "x.dcm")


def test_a_remembered_input_folder_does_not_hide_a_link_then_dotdot(tmp_path: Path):
    """``in/link/../x`` is ``elsewhere/x`` when ``link`` leads to ``elsewhere/deep``."""
    root, elsewhere = tmp_path / "in", tmp_path / "elsewhere"
    (elsewhere / "deep").mkdir(parents=True)
    (elsewhere / "x.dcm").write_bytes(b"outside")
    root.mkdir()
    (root / "x.dcm").write_bytes(b"inside")
    (root / "link").symlink_to(elsewhere / "deep")
    inputs = InputFolder(root)
    os.close(inputs.open(root / "x.dcm"))
    with pytest.raises(InputOutsideRootError):
        inputs.open(f"{root}/link/../x.dcm")
    (root / "sub").mkdir()
    (root / "sub" / "z.dcm").write_bytes(b"inside")
    os.close(inputs.open(root / "sub" / "z.dcm"))
    (root / "sub" / "y.dcm").symlink_to(elsewhere / "x.dcm")
    with pytest.raises(NotRegularFileError):  # a file that is a link, in a known folder
        inputs.open(root / "sub" / "y.dcm")


def test_link_inside_output_folder_cannot_redirect_a_write(tmp_path: Path, key_bytes: bytes):
    """A planted link in the output folder pointing elsewhere: the write is refused."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    ds = make_instance("ct")
    pydicom.dcmwrite(incoming / "a.dcm", ds, enforce_file_format=True)
    settings = Settings(key=PseudonymKey(key_bytes))
    first = pseudonymise_directory(incoming, tmp_path / "out1", settings=settings)
    study = Path(first[0].output).relative_to(tmp_path / "out1").parts[0]
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / study).symlink_to(tmp_path / "elsewhere")
    (result,) = pseudonymise_directory(incoming, tmp_path / "out2", settings=settings)
    assert result.status == "failed"
    assert "escape the output folder" in (result.reason or "")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_kept_uids_cannot_steer_the_output_name(tmp_path: Path, key_bytes: bytes):
    """Even with UIDs kept unchanged, a UID shaped like a path cannot leave the output folder."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    ds = make_instance("ct")
    ds.StudyInstanceUID = ".."
    ds.SeriesInstanceUID = ".."
    pydicom.dcmwrite(incoming / "a.dcm", ds, enforce_file_format=True)
    keep = ("StudyInstanceUID", "SeriesInstanceUID")
    settings = Settings(key=PseudonymKey(key_bytes), keep_keywords=keep)
    (result,) = pseudonymise_directory(incoming, tmp_path / "out", settings=settings)
    assert result.status == "failed", result
    assert "escape" in (result.reason or "")
    assert [p for p in tmp_path.iterdir() if p.suffix == ".dcm"] == []


_SWAPPER = """
import os, sys, time
sub, parked, outside, stop = sys.argv[1:5]
while not os.path.exists(stop):
    os.rename(sub, parked)
    os.symlink(outside, sub)
    time.sleep(0.0002)
    os.unlink(sub)
    os.rename(parked, sub)
    time.sleep(0.0002)
"""


def test_a_folder_swapped_for_a_link_during_runs_never_leaks_the_outside(
    tmp_path: Path, key_bytes: bytes
):
    """Another process swaps ``in/sub`` for a link to ``outside`` thousands of times meanwhile.

    Outside files have the same names and distinct pixel bytes: no output and no quarantine
    copy ever holds them, and every input still gets exactly one record per run.
    """
    incoming, outside = tmp_path / "in", tmp_path / "outside"
    (incoming / "sub").mkdir(parents=True)
    outside.mkdir()
    for number in range(1, 9):
        for folder, fill in ((incoming / "sub", b"\x01"), (outside, b"\x07")):
            ds = make_instance("ct", patient=number, series=number)
            ds.PixelData = fill * len(ds.PixelData)
            pydicom.dcmwrite(folder / f"{number}.dcm", ds, enforce_file_format=True)
    outside_pixels = b"\x07" * 4096
    settings = Settings(key=PseudonymKey(key_bytes))
    sources = [incoming / "sub" / f"{number}.dcm" for number in range(1, 9)]
    stop = tmp_path / "stop"
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(incoming / "sub"), str(incoming / "parked"),
         str(outside), str(stop)]
    )  # fmt: skip
    try:
        statuses: set[str] = set()
        for attempt in range(40):
            output = tmp_path / f"out-{attempt}"
            results = pseudonymise_files(sources, output, settings=settings, input_root=incoming)
            assert [r.source for r in results] == [str(s) for s in sources]
            statuses.update(r.status for r in results)
            for path in [
                *output.rglob("*.dcm"),
                *(tmp_path / f"out-{attempt}-quarantine").rglob("*"),
            ]:
                assert outside_pixels not in path.read_bytes(), path
    finally:
        stop.touch()
        swapper.wait(timeout=30)
    assert "ok" in statuses  # the race was not so one-sided that nothing was ever read
    assert "failed" in statuses  # and the swap was met: a link on the way is refused
