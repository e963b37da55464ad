"""Every directory entry gets one record, and no input can kill the batch.

Real processes and real file systems: special files made with ``mkfifo``, ``socket.bind`` and
``mknod``, a folder nobody but root could list (the run drops to ``nobody``), a file truncated by
another process while the batch reads it, and a deflate bomb inflated under a memory limit.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_directory
from airflow_pseudo.pseudonymisation.io.inputs import InputLimits
from airflow_pseudo.testing import make_instance

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
WORKTREE = Path(__file__).resolve().parents[2]
NOBODY = 65534


def _write_ct(path: Path, number: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(
        path, make_instance("ct", patient=number, series=number), enforce_file_format=True
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    return subprocess.run(
        [sys.executable, "-m", "airflow_pseudo.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_kind_of_entry_gets_exactly_one_record(tmp_path: Path, key_bytes: bytes):
    """Links of every kind, a FIFO, a socket and a device: one failed record each, exit 1."""
    incoming = tmp_path / "in"
    _write_ct(incoming / "good.dcm", 1)
    _write_ct(tmp_path / "outside" / "secret.dcm", 2)
    (incoming / "sub").mkdir()
    (incoming / "link-to-file.dcm").symlink_to(incoming / "good.dcm")
    (incoming / "link-outside.dcm").symlink_to(tmp_path / "outside" / "secret.dcm")
    (incoming / "link-to-folder").symlink_to(tmp_path / "outside")
    (incoming / "dangling.dcm").symlink_to(incoming / "nowhere.dcm")
    (incoming / "loop.dcm").symlink_to(incoming / "loop.dcm")
    os.mkfifo(incoming / "sub" / "pipe.dcm")
    expected = {
        "link-to-file.dcm": "a symbolic link",
        "link-outside.dcm": "a symbolic link",
        "link-to-folder": "a symbolic link",
        "dangling.dcm": "a symbolic link",
        "loop.dcm": "a symbolic link",
        "sub/pipe.dcm": "a FIFO (named pipe)",
        "sub/sock": "a socket",
    }
    if os.geteuid() == 0:
        os.mknod(incoming / "sub" / "null.dcm", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expected["sub/null.dcm"] = "a character device"
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    results_file = tmp_path / "results.jsonl"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(incoming / "sub" / "sock"))
        run = _cli(
            "pseudonymise", str(incoming), "-o", str(tmp_path / "out"),
            "--key-file", str(key_file), "--results", str(results_file),
        )  # fmt: skip
    records = _records(results_file)
    by_name = {str(Path(str(r["source"])).relative_to(incoming)): r for r in records}
    assert len(records) == len(by_name) == len(expected) + 1, run.stdout
    assert by_name.pop("good.dcm")["status"] == "ok"
    for name, kind in expected.items():
        assert by_name[name]["status"] == "failed", name
        assert by_name[name]["reason"] == f"not a regular file: {kind}" + (
            " (links are not followed)" if kind == "a symbolic link" else ""
        )
    assert run.returncode == 1, run.stderr
    assert f"{len(expected)} failed" in run.stdout
    assert "copied" not in run.stdout  # nothing was copied: nothing was opened
    assert not (tmp_path / "out-quarantine").exists() or not any(
        (tmp_path / "out-quarantine").iterdir()
    )


def _as_nobody(function: Callable[[], object]) -> object:
    """Run ``function`` in a child process as ``nobody`` (when root: root lists any folder)."""
    if os.geteuid() != 0:
        return function()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, send the result back
        status = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with os.fdopen(writer, "w") as out:
                json.dump(function(), out)
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as answer:
        text = answer.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and text, "the child running as nobody failed"
    return json.loads(text)


def test_an_unreadable_folder_gets_a_record_and_fails_the_run(tmp_path: Path, key_bytes: bytes):
    """A folder the run cannot list is one failed record and exit status 1."""
    base = tmp_path / "shared"
    incoming = base / "in"
    _write_ct(incoming / "a.dcm", 1)
    _write_ct(incoming / "locked" / "b.dcm", 2)
    key_file = base / "project.key"
    key_file.write_bytes(key_bytes)
    if os.geteuid() == 0:
        for folder in (tmp_path, *tmp_path.parents):
            if not folder.stat().st_mode & 0o001:
                os.chmod(folder, folder.stat().st_mode | 0o011)
        subprocess.run(["chown", "-R", str(NOBODY), str(base)], check=True)
    (incoming / "locked").chmod(0)
    from airflow_pseudo import cli

    def run() -> object:
        with open(os.devnull, "w") as quiet:
            return cli.main(
                ["pseudonymise", str(incoming), "-o", str(base / "out"), "--key-file",
                 str(key_file), "--results", str(base / "results.jsonl")],
                stdout=quiet,
            )  # fmt: skip

    status = _as_nobody(run)
    records = _records(base / "results.jsonl")
    assert [(Path(str(r["source"])).name, r["status"]) for r in records] == [
        ("a.dcm", "ok"),
        ("locked", "failed"),
    ]
    assert records[1]["reason"] == "not a regular file: a folder that cannot be listed"
    assert status == 1
    assert (base / "results.jsonl").stat().st_mode & 0o777 == 0o600


# --- a file truncated by another process while the batch reads it -----------------------------

_BIG = 512 << 20


def _big_ct(path: Path, rel: Any) -> None:
    """A valid CT whose pixel data is 512 MiB of (sparse) zeros."""
    pixels = struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", _BIG)
    header = rel.raw_file(9, [*rel.base_dataset(9), pixels])
    path.write_bytes(header)
    os.truncate(path, len(header) + _BIG)


_TRUNCATOR = """
import os, sys, time
pid, path = int(sys.argv[1]), sys.argv[2]
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        opened = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        opened = []
    if path in opened:
        os.truncate(path, 4096)
        print("truncated", flush=True)
        break
    time.sleep(0.0005)
"""


def test_a_file_truncated_while_read_fails_alone(tmp_path: Path, key_bytes: bytes, rel: Any):
    """No SIGBUS: the truncated file gets a failed record, the rest of the batch is published."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    big = incoming / "a-big.dcm"
    _big_ct(big, rel)
    for number in range(1, 6):
        _write_ct(incoming / f"b{number}.dcm", number)
    key_file = tmp_path / "project.key"
    key_file.write_bytes(key_bytes)
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    batch = subprocess.Popen(
        [sys.executable, "-m", "airflow_pseudo.cli", "pseudonymise", str(incoming),
         "-o", str(tmp_path / "out"), "--key-file", str(key_file),
         "--results", str(tmp_path / "results.jsonl")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    truncator = subprocess.run(
        [sys.executable, "-c", _TRUNCATOR, str(batch.pid), str(big)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    _, stderr = batch.communicate(timeout=300)
    assert truncator.stdout.strip() == "truncated", truncator.stderr
    assert batch.returncode == 1, (batch.returncode, stderr)  # not -SIGBUS
    records = _records(tmp_path / "results.jsonl")
    assert [(Path(str(r["source"])).name, r["status"]) for r in records] == [
        ("a-big.dcm", "failed"),
        *((f"b{n}.dcm", "ok") for n in range(1, 6)),
    ]
    assert records[0]["reason"] in {
        "the file changed while it was read (shorter than its size): truncated by another process?",
        "truncated DICOM (unexpected end of file)",
    }, records[0]


# --- a deflate bomb under a memory limit -------------------------------------------------------

_INFLATED = 3 << 30
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MEMORY_LIMIT = 1536 << 20

_BOMB_RUN = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
from airflow_pseudo.pseudonymisation import PseudonymKey, Settings, pseudonymise_directory
from airflow_pseudo.pseudonymisation.io.inputs import InputLimits
settings = Settings(key=PseudonymKey(bytes.fromhex(sys.argv[4])))
results = pseudonymise_directory(sys.argv[1], sys.argv[2], settings=settings)
peak = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(json.dumps({"records": [r.to_dict() for r in results], "peak_kib": int(peak)}))
"""


def _deflate_bomb(path: Path, rel: Any) -> int:
    """A deflated CT whose dataset inflates to 3 GiB (zeros); returns its size on disk.

    Each piece ends with a full flush (byte-aligned, no reference to what came before), so one
    compressed block of 16 MiB of zeros is simply repeated.
    """
    pixels = struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OB", _INFLATED)

    def deflated(data: bytes) -> bytes:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return deflater.compress(data) + deflater.flush(zlib.Z_FULL_FLUSH)

    zeros = 16 << 20
    with path.open("wb") as out:
        out.write(rel.file_meta("1.2.826.0.1.3680043.10.999.7.3", _DEFLATED))
        out.write(deflated(b"".join([*rel.base_dataset(7), pixels])))
        block = deflated(bytes(zeros))
        for _ in range(_INFLATED // zeros):
            out.write(block)
        out.write(zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush())  # the final block
    return path.stat().st_size


def test_a_deflate_bomb_fails_alone_under_a_memory_limit(
    tmp_path: Path, key_bytes: bytes, rel: Any, record_property: Callable[[str, object], None]
):
    """3 GiB from a few MiB, in a process limited to 1.5 GiB: one failed record, peak reported."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    size = _deflate_bomb(incoming / "bomb.dcm", rel)
    assert _INFLATED // size > 200
    check = pydicom.dcmread(incoming / "bomb.dcm", stop_before_pixels=True, defer_size=16)
    assert check.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    _write_ct(incoming / "good.dcm", 1)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_RUN, str(incoming), str(tmp_path / "out"),
         str(_MEMORY_LIMIT), key_bytes.hex()],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(WORKTREE)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.splitlines()[-1])
    records = {Path(r["source"]).name: r for r in report["records"]}
    assert records["good.dcm"]["status"] == "ok"
    assert records["bomb.dcm"]["status"] == "failed"
    assert "max_inflate_ratio" in records["bomb.dcm"]["reason"]
    peak_mib = report["peak_kib"] / 1024
    record_property("bomb_peak_mib", round(peak_mib))
    print(f"deflate bomb: {size} bytes -> {_INFLATED} bytes; peak RSS {peak_mib:.0f} MiB "
          f"in {time.monotonic() - started:.1f} s")  # fmt: skip
    assert peak_mib < 512


def test_a_value_running_past_the_end_without_preamble_fails(tmp_path: Path, key_bytes: bytes):
    """pydicom reads it leniently (losing everything after the short value); the run refuses it."""
    incoming = tmp_path / "in"
    incoming.mkdir()
    dataset = make_instance("ct")
    del dataset.file_meta
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, implicit_vr=False, little_endian=True)
    data = bytearray(buffer.getvalue())
    at = data.index(b"\x08\x00\x20\x00DA")  # StudyDate: the UIDs and pixel data come after it
    data[at + 6 : at + 8] = (0xFFF0).to_bytes(2, "little")
    (incoming / "cut.dcm").write_bytes(bytes(data))
    _write_ct(incoming / "good.dcm", 2)
    settings = Settings(key=PseudonymKey(key_bytes))
    for engine in ("auto", "reference"):
        results = pseudonymise_directory(
            incoming,
            tmp_path / f"out-{engine}",
            settings=dataclasses.replace(settings, engine=engine),
        )
        assert [(Path(r.source).name, r.status) for r in results] == [
            ("cut.dcm", "failed"),
            ("good.dcm", "ok"),
        ]
        assert results[0].reason == "truncated DICOM (unexpected end of file)"


def test_a_file_over_the_size_bound_fails_alone(tmp_path: Path, key_bytes: bytes):
    """max_file_bytes: the large file fails with the bound named and is quarantined whole."""
    incoming = tmp_path / "in"
    _write_ct(incoming / "a.dcm", 1)
    big = make_instance("ct", patient=2, series=2)
    big.PixelData = bytes(4 << 20)
    big.Rows, big.Columns = 2048, 1024
    pydicom.dcmwrite(incoming / "b.dcm", big, enforce_file_format=True)
    settings = Settings(
        key=PseudonymKey(key_bytes), input_limits=InputLimits(max_file_bytes=1 << 20)
    )
    results = pseudonymise_directory(incoming, tmp_path / "out", settings=settings, workers=2)
    assert [r.status for r in results] == ["ok", "failed"]
    assert "max_file_bytes" in (results[1].reason or "")
    assert Path(results[1].quarantine or "").read_bytes() == (incoming / "b.dcm").read_bytes()
