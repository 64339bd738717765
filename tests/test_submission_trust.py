"""Stage 07 under load and abuse: linear id checks, one-line errors for broken files, a locked log."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, ROOT

from cxrlt.config import load_config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.ensemble.submission import append_log, validate
from cxrlt.errors import CxrltError

# 1. Every id check is linear: the ids (and the submission's id column) are walked a fixed number of
#    times, not once per row (a set rebuilt per id made --check on 20,000 rows take a minute).

class CountingList(list):
    """A list that counts how often it is iterated."""
    iterations = 0

    def __iter__(self):
        self.iterations += 1
        return super().__iter__()


def test_id_checks_walk_the_ids_a_fixed_number_of_times(monkeypatch):
    spec = resolve_dataset(load_config(DEMO).data)
    n = 300
    ids = [f"id{i}" for i in range(n)]
    df = pd.DataFrame(np.random.default_rng(0).random((n, len(spec.labels))), columns=list(spec.labels))
    df.insert(0, spec.id_col, ids)
    walks = {"series": 0}
    series_iter = pd.Series.__iter__

    def counting_iter(self):
        walks["series"] += 1
        return series_iter(self)

    monkeypatch.setattr(pd.Series, "__iter__", counting_iter)
    for table, counted in [(df, CountingList(ids)), (df.drop(index=7), CountingList(ids))]:
        walks["series"] = 0
        try:
            validate(table, spec, counted)
        except CxrltError as e:
            assert "1 test ids are missing, e.g. 'id7'" in str(e)
        assert counted.iterations <= 5 and walks["series"] <= 5, (counted.iterations, walks)


# 2. A file --check cannot even read: one 'error: FILE: problem' line on stderr, exit 2, no traceback.

def _zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _good_csv():
    spec = resolve_dataset(load_config(DEMO).data)
    return (",".join([spec.id_col, *spec.labels]) + "\n" + "a," + ",".join(["0.5"] * len(spec.labels)) + "\n") * 20


def make_broken(kind, d):
    """A broken upload of the given kind in folder d."""
    if kind == "empty_csv":
        (p := d / "sub.csv").write_bytes(b"")
    elif kind == "binary":
        (p := d / "sub.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "not_utf8":
        (p := d / "sub.csv").write_bytes(b"dicom_id,Atelectasis\n\xff\xfe\xfa,0.5\n")
    elif kind == "ragged":
        (p := d / "sub.csv").write_text("dicom_id,Atelectasis\na,0.5\nb,0.5,0.7,0.1\n")
    elif kind == "empty_zip_file":
        (p := d / "sub.zip").write_bytes(b"")
    elif kind == "truncated_zip":
        full = _zip(d / "full.zip", {"sub.csv": _good_csv()}).read_bytes()
        (p := d / "sub.zip").write_bytes(full[: len(full) // 2])
    elif kind == "corrupt_zip":
        full = bytearray(_zip(d / "full.zip", {"sub.csv": _good_csv() * 20}).read_bytes())
        full[60:90] = bytes(30)                                        # inside the deflated data
        (p := d / "sub.zip").write_bytes(bytes(full))
    elif kind == "zip_no_csv":
        p = _zip(d / "sub.zip", {"notes.txt": "hello"})
    elif kind == "zip_empty":
        p = _zip(d / "sub.zip", {})
    elif kind == "zip_several":
        p = _zip(d / "sub.zip", {"a.csv": _good_csv(), "b.csv": _good_csv()})
    elif kind == "zip_csv_in_folder":
        p = _zip(d / "sub.zip", {"inner/sub.csv": _good_csv()})
    elif kind == "zip_empty_csv":
        p = _zip(d / "sub.zip", {"sub.csv": ""})
    return p


@pytest.mark.parametrize("kind,message", [
    ("empty_csv", "empty file"),
    ("binary", "binary data (NUL bytes), not a UTF-8 CSV"),
    ("not_utf8", "not a text CSV"),
    ("ragged", "not a readable CSV (Error tokenizing data"),
    ("empty_zip_file", "not a readable zip, truncated or corrupt"),
    ("truncated_zip", "not a readable zip, truncated or corrupt"),
    ("corrupt_zip", "not a readable zip, truncated or corrupt"),
    ("zip_no_csv", "the zip holds 'notes.txt', not one CSV at its root"),
    ("zip_empty", "the zip holds 0 entries (none)"),
    ("zip_several", "the zip holds 2 entries (a.csv, b.csv)"),
    ("zip_csv_in_folder", "the zip holds 'inner/sub.csv', not one CSV at its root"),
    ("zip_empty_csv", "(sub.csv in the zip): empty file"),
])
def test_check_cli_names_a_broken_file_in_one_line(tmp_path, kind, message, stage):
    bad = make_broken(kind, tmp_path)
    r = stage("src/07_make_submission.py", "--config", DEMO, "--check", bad)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {bad}") and message in r.stderr, r.stderr


# 3. submissions/log.csv: concurrent writers all land; a lock is named with its holder; a killed
#    holder does not block.

def _writer(log, k, barrier):
    barrier.wait()
    append_log(log, dict(writer=k, file=f"sub{k}.zip", sha256="0" * 64, oof_mAP=0.5))


def test_concurrent_log_writers_lose_no_row(tmp_path):
    log = tmp_path / "subs" / "log.csv"
    append_log(log, dict(writer=-1, file="first.zip", sha256="00123", oof_mAP=None))
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_writer, args=(log, k, barrier)) for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    df = pd.read_csv(log, dtype=str, keep_default_na=False)
    assert sorted(df.writer.astype(int)) == list(range(-1, 8))
    assert df.sha256.iloc[0] == "00123" and df.oof_mAP.iloc[0] == ""          # old rows rewritten as they were


HOLD = ("import sys, time; from cxrlt.ensemble.submission import log_lock\n"
        "with log_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


def test_held_lock_is_named_and_a_killed_holder_does_not_block(tmp_path):
    log = tmp_path / "log.csv"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(log)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CxrltError, match=rf"log\.csv\.lock: lock not taken within 0\.5 s \(held by process {holder.pid} "):
            append_log(log, dict(file="a.zip"), timeout=0.5)
        assert not log.exists()
        os.kill(holder.pid, signal.SIGKILL)                                  # dies holding the lock
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (tmp_path / "log.csv.lock").exists()                              # the file stays, the flock is gone
    append_log(log, dict(file="b.zip"), timeout=5)
    assert pd.read_csv(log).file.tolist() == ["b.zip"]

