"""bench/full_size.py end to end at a small fraction: every stage 01-08 runs through its real script
on CSVs of the 2023 shape, and the figures file has every stage with its times and row counts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
F, FOLDS, MEMBERS = 0.005, 2, 2


@pytest.mark.bench
def test_full_size_small(tmp_path):
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, "bench/full_size.py", "--fraction", str(F), "--out", str(out),
                        "--workdir", str(tmp_path / "work"), "--folds", str(FOLDS), "--members", str(MEMBERS),
                        "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = json.loads(out.read_text())
    n_train, n_dev, n_test = round(264_849 * F), round(39_293 * F), round(36_000 * F)
    s = d["splits"]
    assert (s["train"]["rows"], s["dev"]["rows"], s["test"]["rows"]) == (n_train, n_dev, n_test)
    assert s["train"]["patients"] == round(n_train * 45_631 / 264_849)
    assert s["train"]["studies"] == round(n_train * 155_133 / 264_849)
    pos = d["train_positives"]   # long tail: the 2023 order of magnitude, every class present
    assert len(pos) == 26 and min(pos.values()) >= 4 and pos["Support Devices"] > 20 * pos["Pleural Other"]
    st = d["stages"]
    assert set(st) == {"01", "02", "03", "04", "05", "06", "07", "07_check", "08"}
    for name, x in st.items():
        assert "rc" not in x, (name, x.get("log_tail"))
        assert x["wall_s"] > 0 and x["cpu_s"] > 0 and x["peak_rss_mb"] > 0, (name, x)
    total = n_train + n_dev + n_test
    expected_rows = {"01": total, "02": n_train, "03": n_train * MEMBERS, "04": total * MEMBERS, "05": total,
                     "06": n_train, "07": n_test, "07_check": n_test, "08": n_train * MEMBERS}
    assert {k: x["rows"] for k, x in st.items()} == expected_rows
    assert st["03"]["runs"] == st["04"]["runs"] == MEMBERS
    # what the stages wrote covers every row: cache, folds, predictions of every split, submission
    assert st["01"]["outputs"]["cached_files"] == total
    assert st["02"]["outputs"]["folds_csv"] == n_train
    assert st["03"]["outputs"]["best_pt"] == FOLDS * MEMBERS
    for m in [f"m{i + 1}" for i in range(MEMBERS)] + ["blend"]:
        stage = "05" if m == "blend" else "04"
        o = st[stage]["outputs"]
        assert (o[f"{m}/oof.csv"], o[f"{m}/development.csv"], o[f"{m}/test.csv"]) == (n_train, n_dev, n_test)
    assert st["06"]["outputs"]["thresholds_json"] is True
    assert st["07"]["outputs"]["submission_csv"] == n_test
    assert st["08"]["outputs"]["table_csv"] == MEMBERS
    assert "stage" in r.stdout and "08" in r.stdout   # the table
