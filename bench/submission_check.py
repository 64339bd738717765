"""Time stage 07's `--check` validation against a plain pandas.read_csv of the same file, same run.

A synthetic test CSV (id + path) and a matching probability submission (id + N labels, 6 decimals)
are written to a temp dir; `check_file` (what `07_make_submission.py --check` calls: read, expected
ids from the test CSV, every id/column/value check) is timed against `pd.read_csv` of the submission.

    python bench/submission_check.py                       # 100,000 rows x 40 labels
    python bench/submission_check.py --rows 20000 --repeat 1
"""
import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import ROOT


def best_time(fn, repeat: int) -> float:
    """Fastest of `repeat` calls of fn(), in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def synthetic(work: Path, rows: int, n_labels: int):
    """A custom-preset recipe whose test CSV has `rows` ids, and a matching submission CSV: (cfg, path)."""
    from cxrlt.config import load_config

    labels = [f"L{j:02d}" for j in range(n_labels)]
    ids = [f"{i:08d}-img.png" for i in range(rows)]
    (work / "bench").mkdir()
    pd.DataFrame({"image_id": ids, "path": ids}).to_csv(work / "bench" / "test.csv", index=False)
    sub = pd.DataFrame(np.random.default_rng(0).random((rows, n_labels)), columns=labels)
    sub.insert(0, "image_id", ids)
    sub.to_csv(work / "submission.csv", index=False, float_format="%.6f")
    cfg = load_config(ROOT / "experiments" / "demo.yaml", [
        "data.preset=custom", f"data.input_dir={work}", "data.dir=bench", "data.train_csv=train.csv",
        "data.test_csv=test.csv", "data.id_col=image_id", "data.path_col=path", "data.patient_col=patient",
        f"data.labels=[{', '.join(labels)}]"])
    return cfg, work / "submission.csv"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--labels", type=int, default=40)
    p.add_argument("--repeat", type=int, default=3, help="report the fastest of this many runs")
    a = p.parse_args()
    from cxrlt.ensemble.submission import check_file

    with tempfile.TemporaryDirectory(prefix="cxrlt-subcheck-") as tmp:
        cfg, sub = synthetic(Path(tmp), a.rows, a.labels)
        assert check_file(cfg, sub) == a.rows
        t_check = best_time(lambda: check_file(cfg, sub), a.repeat)
        t_read = best_time(lambda: pd.read_csv(sub), a.repeat)
        size = sub.stat().st_size / 2**20
    print(f"{platform.machine()}, {platform.python_version()}, pandas {pd.__version__}; "
          f"{a.rows} rows x {a.labels} labels ({size:.1f} MiB), best of {a.repeat}")
    print(f"check_file (--check): {t_check:.3f} s")
    print(f"pandas.read_csv:      {t_read:.3f} s")
    print(f"ratio check / read:   {t_check / t_read:.2f}")


if __name__ == "__main__":
    main()
