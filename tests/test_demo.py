import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from cxrlt.data.demo import META_COLS, PREVALENCE, make_tables, render
from cxrlt.data.labels import LABELS_2023


def test_columns_and_order(tiny_root):
    d = tiny_root / "demo"
    for name in ("train.csv", "development.csv"):
        assert list(pd.read_csv(d / name).columns) == META_COLS + LABELS_2023
    test = pd.read_csv(d / "test.csv")
    assert list(test.columns) == META_COLS
    sub = pd.read_csv(d / "sample_submission.csv")
    assert list(sub.columns) == ["dicom_id"] + LABELS_2023
    assert sorted(sub.dicom_id) == sorted(test.dicom_id) and list(sub.dicom_id) != list(test.dicom_id)
    assert (d / "contact_sheet.png").stat().st_size > 10_000


def test_frequencies_follow_2023_counts():
    t = make_tables({"train": 3000, "development": 500, "test": 500}, seed=0)["train"]
    counts = t[LABELS_2023].sum().to_numpy()
    expected = PREVALENCE * 3000
    assert counts.min() >= 4                                  # every class has a few positives
    big = expected >= 30
    assert np.all(np.abs(counts[big] / expected[big] - 1) < 0.2)
    assert spearmanr(counts, expected)[0] > 0.95
    assert counts[LABELS_2023.index("Pneumoperitoneum")] < 15  # the tail stays a tail


def test_label_rules_and_structure():
    tabs = make_tables({"train": 1500, "development": 300, "test": 300}, seed=1)
    t = tabs["train"]
    y = t[LABELS_2023].to_numpy()
    nf, sd = LABELS_2023.index("No Finding"), LABELS_2023.index("Support Devices")
    others = np.delete(y, [nf, sd], axis=1)
    assert np.all(others[y[:, nf] == 1].sum(1) == 0)           # No Finding excludes all but devices
    assert np.all((y[:, nf] == 1) | (others.sum(1) > 0))       # every film is normal or has a finding
    assert t.groupby("study_id")[LABELS_2023].nunique().max().max() == 1  # labels are per study
    assert t.groupby("subject_id").study_id.nunique().max() > 1         # patients with several studies
    assert t.groupby("study_id").size().max() > 1                        # studies with several views
    assert set(t.ViewPosition) == {"PA", "AP", "LATERAL"}
    patients = [set(df.subject_id) for df in tabs.values()]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])


def test_deterministic_per_seed(tiny_root):
    a = make_tables({"train": 200}, seed=5)["train"]
    b = make_tables({"train": 200}, seed=5)["train"]
    c = make_tables({"train": 200}, seed=6)["train"]
    pd.testing.assert_frame_equal(a, b)
    assert not a.dicom_id.equals(c.dicom_id)
    y = np.zeros(26, np.uint8)
    y[LABELS_2023.index("Nodule")] = 1
    r1 = render(y, "PA", 120, 100, np.random.default_rng(0))
    r2 = render(y, "PA", 120, 100, np.random.default_rng(0))
    assert np.array_equal(r1, r2) and r1.shape == (120, 100) and r1.dtype == np.uint8


def test_every_finding_leaves_a_mark():
    """Same random stream, with and without the finding: the films must differ where it is drawn."""
    for c, name in enumerate(LABELS_2023):
        if name == "No Finding":
            continue
        y = np.zeros(26, np.uint8)
        y[c] = 1
        base = render(np.zeros(26, np.uint8), "PA", 160, 160, np.random.default_rng(1)).astype(int)
        marked = render(y, "PA", 160, 160, np.random.default_rng(1)).astype(int)
        assert np.abs(marked - base).max() > 12, name


def test_images_written_with_varying_sizes(tiny_root):
    import cv2

    t = pd.read_csv(tiny_root / "demo" / "train.csv")
    shapes = {cv2.imread(str(tiny_root / "demo" / p), cv2.IMREAD_UNCHANGED).shape for p in t.path[:30]}
    assert len(shapes) > 5 and all(len(s) == 2 for s in shapes)
