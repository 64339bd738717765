"""Issue 27, data side: NA-like ids through every CSV read, bounded --check of a one-line file,
unreadable checkpoints, truncated films, a cache keyed on its source, image paths kept under the
image root."""
import re
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_script

from cxrlt.config import load_config
from cxrlt.errors import CxrltError

NA_IDS = ["NA", "null", "None", "nan", "N/A", "x1"]
LABELS = ["A", "B"]


def na_recipe(tmp_path, ids=NA_IDS) -> Path:
    """A custom dataset whose ids are all NA-like (or `ids`), and an experiment folder for it."""
    d = tmp_path / "input" / "na"
    d.mkdir(parents=True)
    train = pd.DataFrame({"dicom_id": ids, "path": [f"{i}.png" for i in range(6)],
                          "subject_id": [f"p{i}" for i in range(6)], "A": [0, 1] * 3, "B": [1, 0] * 3})
    train.to_csv(d / "train.csv", index=False)
    train[["dicom_id", "path"]].to_csv(d / "test.csv", index=False)
    recipe = tmp_path / "na_ids.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": dict(preset="custom", input_dir=str(tmp_path / "input"), dir="na", image_root="na",
                     train_csv="train.csv", test_csv="test.csv", id_col="dicom_id", path_col="path",
                     patient_col="subject_id", labels=LABELS),
        "output_dir": str(tmp_path / "exp"), "submission": dict(dir=str(tmp_path / "subs"))}))
    return recipe


# 7. NA-like ids ---------------------------------------------------------------------------------

def test_stage_07_writes_and_checks_a_submission_of_na_like_ids(tmp_path):
    from cxrlt.ensemble.submission import check_file, make_submission
    from cxrlt.evaluate.predictions import write_predictions

    cfg = load_config(na_recipe(tmp_path))
    write_predictions(tmp_path / "exp" / "test.csv", NA_IDS, np.linspace(0, 1, 12).reshape(6, 2), LABELS, "dicom_id")
    r = make_submission(cfg)
    sub = pd.read_csv(r["csv"], dtype=str, keep_default_na=False)
    assert sub.dicom_id.tolist() == NA_IDS
    assert check_file(cfg, r["zip"]) == 6 and check_file(cfg, r["csv"]) == 6


def test_best_epoch_ap_is_logged_for_na_like_ids(tmp_path):
    from cxrlt.evaluate.predictions import write_predictions
    from cxrlt.train.tracking import log_best_ap

    class Acc:
        trackers = ["tb"]
        logged = None

        def log(self, values, step):
            self.logged = (values, step)

    y = np.array([[0, 1], [1, 0]] * 3)
    write_predictions(tmp_path / "val.csv", NA_IDS[::-1], np.linspace(0, 1, 12).reshape(6, 2), LABELS, "dicom_id")
    acc = Acc()
    log_best_ap(acc, tmp_path / "val.csv", pd.Series(NA_IDS, name="dicom_id"), y, LABELS, 3)
    assert acc.logged[1] == 3 and set(acc.logged[0]) == {"val_AP/A", "val_AP/B"}


def test_src_reads_every_csv_through_the_one_reader():
    """fileio.read_table (and read_header, its bounded header read) is the only pandas.read_csv in src/."""
    stray = []
    for f in sorted((ROOT / "src").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"read_csv\(", line) and f.name != "fileio.py":
                stray.append(f"{f.relative_to(ROOT)}:{n}")
    fileio = (ROOT / "src" / "cxrlt" / "fileio.py").read_text()
    body = [ln for ln in fileio.splitlines() if "read_csv(" in ln]
    assert not stray, f"CSV reads outside fileio.read_table: {stray}"
    assert len(body) == 2       # read_header's parse of the first line, and read_table


# 10. --check of a file of one huge line -------------------------------------------------------------

@pytest.mark.parametrize("as_zip", [True, False])
def test_check_of_a_one_line_file_is_short_and_bounded(tmp_path, as_zip):
    from cxrlt.ensemble.submission import check_file

    cfg = load_config(na_recipe(tmp_path))
    line = b"x" * (16 << 20)            # 16 MB, no newline: what a 1 GB line does, smaller
    if as_zip:
        bad = tmp_path / "sub.zip"
        with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("sub.csv", line)
    else:
        bad = tmp_path / "sub.csv"
        bad.write_bytes(line)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(CxrltError) as e:
        check_file(cfg, bad)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    msg = str(e.value)
    assert len(msg) < 400 and "\n" not in msg and "first line is longer than" in msg, msg[:500]
    assert peak < 4 << 20, f"peak {peak / 2**20:.1f} MiB"     # the header read stops at fileio.HEADER_LIMIT
    assert seconds < 5


def test_check_quotes_at_most_200_characters_of_an_id(tmp_path):
    from cxrlt.ensemble.submission import check_file

    ids = ["a", "b", "c", "d", "e", "f"]
    cfg = load_config(na_recipe(tmp_path, ids))
    long_id = "y" * 100_000
    pd.DataFrame({"dicom_id": [*ids, long_id], "A": 0.5, "B": 0.5}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(CxrltError, match=r"1 ids are not in the test set, e.g. 'y{200}\.\.\. \(100000 characters\)'$"):
        check_file(cfg, tmp_path / "s.csv")


# 8b. model.init_from naming a file that is not a checkpoint -----------------------------------------

@pytest.mark.parametrize("kind", ["text", "truncated", "zip", "empty", "list"])
def test_init_from_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, kind):
    import torch
    from conftest import DEMO

    from cxrlt.models.checkpoint import save
    from cxrlt.models.factory import create_model
    from cxrlt.models.transfer import init_from

    bad = tmp_path / f"{kind}.pt"
    save({"model": {"w": torch.zeros(64, 64)}}, tmp_path / "good.pt")
    if kind == "text":
        bad.write_text("these are not weights\n")
    elif kind == "truncated":
        bad.write_bytes((tmp_path / "good.pt").read_bytes()[:2000])
    elif kind == "zip":
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("notes.txt", "hello")
    elif kind == "empty":
        bad.write_bytes(b"")
    else:
        torch.save([1, 2, 3], bad)
    m = load_config(DEMO, []).model
    with pytest.raises(CxrltError, match=rf"^model.init_from .*{kind}.pt: (not a readable PyTorch checkpoint|holds a list)") as e:
        init_from(create_model(m, 2), str(bad), m, LABELS, 32)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
