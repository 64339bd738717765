"""Stage 08: the comparison table against figures computed directly with scikit-learn."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cxrlt.config import load_config
from cxrlt.data.datasets import label_matrix, read_split, resolve_dataset
from cxrlt.data.labels import LABELS_2023
from cxrlt.ensemble.compare import COLUMNS, compare_experiments
from cxrlt.ensemble.thresholds import best_threshold, fit_thresholds
from cxrlt.errors import CxrltError
from cxrlt.fileio import stamps
from cxrlt.metrics import evaluate


@pytest.fixture
def root(tiny_root, tmp_path):
    """The tiny demo's training CSV (no images needed) with two tail classes (2 positives of 240)
    and one class without a positive."""
    train = pd.read_csv(tiny_root / "demo" / "train.csv", dtype=str, keep_default_na=False)
    for c in ("Mass", "Hernia"):
        train.loc[train[c].eq("1").cumsum().gt(2), c] = "0"
    train["Tortuous Aorta"] = "0"
    (tmp_path / "in" / "demo").mkdir(parents=True)
    train.to_csv(tmp_path / "in" / "demo" / "train.csv", index=False)
    return tmp_path / "in"


def fake_experiment(root, out, name, quality, seed, folds=None, dev_map=None):
    """An experiment folder as stages 03-04 leave it: oof.csv, metrics.json, fold*/log.csv."""
    cfg = load_config(DEMO, [f"data.input_dir={root}", f"output_dir={out}", f"name={name}"])
    spec = resolve_dataset(cfg.data)
    train = read_split(spec, "train", labels="required")
    y = label_matrix(spec, train)
    rng = np.random.default_rng(seed)
    p = np.clip(y * quality + rng.random(y.shape) * (1 - quality), 0, 1)
    oof = pd.DataFrame(p, columns=LABELS_2023)
    oof.insert(0, "dicom_id", train.dicom_id)
    oof["fold"] = np.arange(len(y)) % 3 if folds is None else folds
    out.mkdir(parents=True)
    oof.to_csv(out / "oof.csv", index=False)
    m = evaluate(y, p, LABELS_2023, y.sum(0), len(y))              # what stage 04 writes
    if dev_map is not None:
        m["development"] = {"mAP": dev_map}
    vouch(out, m)
    for k, secs in enumerate(([30.0, 45.0], [60.0])):
        (out / f"fold{k}").mkdir()
        log = pd.DataFrame({"epoch": range(1, len(secs) + 1), "time_s": secs})
        log.to_csv(out / f"fold{k}" / "log.csv", index=False)
    return cfg


def vouch(out, m):
    """metrics.json as stage 04 writes it last: its figures and the stamps of the outputs it vouches for."""
    (out / "metrics.json").write_text(json.dumps(dict(m, outputs=stamps({"oof.csv": out / "oof.csv"}))))


def direct(exp, root):
    """The row's figures straight from oof.csv and the training labels, with scikit-learn."""
    train = pd.read_csv(root / "demo" / "train.csv")
    oof = pd.read_csv(exp / "oof.csv")
    y, p, folds = train[LABELS_2023].to_numpy(), oof[LABELS_2023].to_numpy(), oof["fold"].to_numpy()
    has = [c for c in range(26) if y[:, c].sum() > 0]
    ap = {c: average_precision_score(y[:, c], p[:, c]) for c in has}
    prev = y.mean(0)

    def group(sel):
        return np.mean([ap[c] for c in has if sel(prev[c])])

    f1 = []
    for c in has:
        hit = np.zeros(len(y), bool)
        for f in np.unique(folds):
            hit[folds == f] = p[folds == f, c] >= best_threshold(y[folds != f, c], p[folds != f, c])
        f1.append(f1_score(y[:, c], hit))
    t = fit_thresholds(y, p)                                        # on all OOF: the flattering figure
    return dict(mAP=np.mean(list(ap.values())), mAUC=np.mean([roc_auc_score(y[:, c], p[:, c]) for c in has]),
                head=group(lambda q: q > 0.1), medium=group(lambda q: 0.01 <= q <= 0.1), tail=group(lambda q: q < 0.01),
                mF1_honest=np.mean(f1), mF1_fitted=np.mean([f1_score(y[:, c], p[:, c] >= t[c]) for c in has]))


def test_table_matches_sklearn(root, tmp_path):
    cfgs = [fake_experiment(root, tmp_path / n, n, q, s, dev_map=d)
            for n, q, s, d in (("a", 0.2, 1, 0.31), ("b", 0.35, 2, None), ("c", 0.1, 3, 0.2))]
    r = compare_experiments(cfgs, tmp_path / "cmp", baseline="b")
    table = pd.read_csv(tmp_path / "cmp" / "table.csv")
    assert list(table.columns) == COLUMNS and list(table.recipe) == ["a", "b", "c"]     # rows as given
    want = {n: direct(tmp_path / n, root) for n in "abc"}
    for _, row in table.iterrows():
        w = want[row.recipe]
        for k in ("mAP", "mAUC", "head", "medium", "tail", "mF1_honest"):
            assert row[k] == pytest.approx(w[k], abs=1e-9), (row.recipe, k)
        assert row.mF1_honest < w["mF1_fitted"]                      # honest, not fitted on the same OOF
        assert row.train_min == pytest.approx(135 / 60)
        assert row.d_mAP == pytest.approx(w["mAP"] - want["b"]["mAP"], abs=1e-9)
        assert row.d_tail == pytest.approx(w["tail"] - want["b"]["tail"], abs=1e-9)
    assert table[["head", "medium", "tail", "d_tail"]].notna().all().all()
    assert table.dev_mAP.tolist()[0] == 0.31 and np.isnan(table.dev_mAP[1])
    md = (tmp_path / "cmp" / "table.md").read_text()
    assert md == r["markdown"] and md.startswith("| recipe |") and "baseline: b" in md
    line_a = next(line for line in md.splitlines() if line.startswith("| a "))
    assert f"{want['a']['mAP']:.4f}" in line_a and " 0.3100 |" in line_a and " 2.2 |" in line_a
    assert (tmp_path / "cmp" / "mAP_by_group.png").stat().st_size > 1000


def test_refuses_other_folds_missing_outputs_and_unknown_baseline(root, tmp_path):
    a = fake_experiment(root, tmp_path / "a", "a", 0.2, 1)
    n = 240
    b = fake_experiment(root, tmp_path / "b", "b", 0.2, 2, folds=(np.arange(n) + 1) % 3)
    with pytest.raises(CxrltError, match="recipes 'a' and 'b': OOF folds differ"):
        compare_experiments([a, b], tmp_path / "cmp")
    with pytest.raises(CxrltError, match="baseline 'z' is not one of the compared recipes"):
        compare_experiments([a], tmp_path / "cmp", baseline="z")
    (tmp_path / "a" / "metrics.json").unlink()
    with pytest.raises(CxrltError, match=r"recipe 'a': .*metrics.json not found; run src/04_predict.py --config "):
        compare_experiments([a], tmp_path / "cmp")


def test_compare_script(root, tmp_path, stage):
    for n, q in (("x", 0.3), ("y", 0.1)):
        fake_experiment(root, tmp_path / "exp" / n, n, q, 5)
        (tmp_path / f"{n}.yaml").write_text(f"base: {DEMO}\noutput_dir: {tmp_path / 'exp' / n}\n")
    ov = [f"data.input_dir={root}", f"compare.dir={tmp_path / 'cmp'}"]
    res = stage("src/08_compare.py", "--recipes", f"{tmp_path / 'x.yaml'},{tmp_path / 'y.yaml'}", *ov)
    assert res.returncode == 0, res.stderr
    assert "| x " in res.stdout and "| y " in res.stdout and "baseline: x" in res.stdout
    assert (tmp_path / "cmp" / "compare_x-y" / "table.csv").is_file()
    bad = stage("src/08_compare.py", "--recipes", "no_such_recipe", *ov)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "recipe not found" in bad.stderr


def per_fold_sklearn(exp, root):
    """mAP of each fold's rows of oof.csv, straight from scikit-learn."""
    train = pd.read_csv(root / "demo" / "train.csv")
    oof = pd.read_csv(exp / "oof.csv")
    y, p, folds = train[LABELS_2023].to_numpy(), oof[LABELS_2023].to_numpy(), oof["fold"].to_numpy()
    out = []
    for f in np.unique(folds):
        r = folds == f
        out.append(np.mean([average_precision_score(y[r, c], p[r, c]) for c in range(26) if y[r, c].sum() > 0]))
    return np.array(out)


def test_fold_figures_wins_and_patient_bootstrap_against_the_baseline(root, tmp_path):
    cfgs = [fake_experiment(root, tmp_path / n, n, q, s) for n, q, s in (("a", 0.2, 1), ("b", 0.45, 2), ("twin", 0.2, 1))]
    drift = fake_experiment(root, tmp_path / "drift", "drift", 0.2, 1)       # a, with fold 1 rescaled
    oof = pd.read_csv(tmp_path / "drift" / "oof.csv", dtype={"dicom_id": str})
    oof.loc[oof.fold == 1, LABELS_2023] = oof.loc[oof.fold == 1, LABELS_2023] * 0.3
    oof.to_csv(tmp_path / "drift" / "oof.csv", index=False)
    vouch(tmp_path / "drift", json.loads((tmp_path / "drift" / "metrics.json").read_text()))
    r = compare_experiments([*cfgs, drift], tmp_path / "cmp", baseline="a")
    table = pd.read_csv(tmp_path / "cmp" / "table.csv").set_index("recipe")
    folds = {n: per_fold_sklearn(tmp_path / n, root) for n in ("a", "b", "twin", "drift")}
    for n, f in folds.items():
        assert table.loc[n, "mAP_folds"] == pytest.approx(f.mean(), abs=1e-12)
        assert table.loc[n, "mAP_folds_std"] == pytest.approx(f.std(ddof=1), abs=1e-12)
    b, twin, dr = table.loc["b"], table.loc["twin"], table.loc["drift"]
    assert b.d_mAP_folds == pytest.approx(folds["b"].mean() - folds["a"].mean(), abs=1e-12)
    assert b.folds_won == int((folds["b"] > folds["a"]).sum()) == 3
    assert b.d_mAP_lo <= b.d_mAP <= b.d_mAP_hi and b.d_mAP_lo > 0 and bool(b.d_mAP_real)
    assert twin.d_mAP == 0 and twin.d_mAP_lo == twin.d_mAP_hi == 0 and not bool(twin.d_mAP_real) and twin.folds_won == 0
    assert np.isnan(table.loc["a", "d_mAP_lo"])                                  # the baseline itself
    assert np.isfinite(b.d_tail_lo) and b.d_tail_lo <= b.d_tail_hi               # tail: Mass and Hernia (2 positives)
    # the rescaled fold: same per-fold figures as a, a lower pooled one, and the drift named; a's own
    # gap (folds of 80 images inflate the AP of rare classes) is not blamed on scales
    assert dr.mAP_folds == pytest.approx(table.loc["a", "mAP_folds"]) and dr.mAP < table.loc["a", "mAP"] - 0.02
    assert "score scales differ" in dr.drift and "fold 1: mean prob" in dr.drift
    assert not isinstance(table.loc["a", "drift"], str) or "not from score scales" in table.loc["a", "drift"]
    md = r["markdown"]
    assert "Against the baseline a:" in md and "WARNING drift: fold drift" in md
    twin_line = next(line for line in md.splitlines() if line.startswith("| twin ") and "[" in line)
    assert "n.d." in twin_line and " 0/3 |" in twin_line
    b_line = next(line for line in md.splitlines() if line.startswith("| b ") and "[" in line)
    assert "n.d." not in b_line and " 3/3 |" in b_line
    first = (tmp_path / "cmp" / "table.csv").read_text()
    compare_experiments([*cfgs, drift], tmp_path / "cmp", baseline="a")             # seeded: the same table
    assert (tmp_path / "cmp" / "table.csv").read_text() == first
    cfgs[0].compare.bootstrap = 0                                                   # no intervals, the rest stays
    t0 = compare_experiments(cfgs, tmp_path / "cmp0", baseline="a")["table"].set_index("recipe")
    assert t0.d_mAP_lo.isna().all() and t0.loc["b", "folds_won"] == 3
    cfgs[0].compare.bootstrap = -1
    with pytest.raises(CxrltError, match=r"^compare\.bootstrap=-1: must be a whole number >= 0$"):
        compare_experiments(cfgs, tmp_path / "cmp0")


def net_of(width):
    """A small conv net: conv (1 -> width, 3x3), BatchNorm, linear (width -> 26)."""
    import torch

    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3), torch.nn.BatchNorm2d(width), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(width, 26))


def with_checkpoints(exp, width, folds=(0, 1), unfinished=(), full=False):
    """best.pt (as train/saver.write_best writes it) and done.json in fold<k>/ of an experiment folder."""
    from cxrlt.models.checkpoint import save

    net = net_of(width)
    for k in [*folds, *unfinished, *(["full"] if full else [])]:
        d = exp / (k if k == "full" else f"fold{k}")
        save(dict(model=net.state_dict(), weights="raw", arch=None, epoch=1, metrics={"val_mAP": np.float64(0.5)},
                  fingerprint={}, init="scratch", mean=0.5, std=0.25), d / "best.pt")
        if k not in unfinished:
            (d / "done.json").write_text("{}")          # no seconds: train_min stays log.csv's
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_parameters_of_experiments_and_of_a_teacher_blend(root, tmp_path):
    """params: one fold's model (BatchNorm statistics and counters left out), served_params: every
    model the web page runs (unfinished folds not, the full-data fit where predict.use_full_fit takes
    it); a blend folder is a row, sized as its members with a weight above 0."""
    a = fake_experiment(root, tmp_path / "a", "a", 0.2, 1)
    b = fake_experiment(root, tmp_path / "b", "b", 0.35, 2)
    c = fake_experiment(root, tmp_path / "c", "c", 0.1, 3)
    assert with_checkpoints(tmp_path / "a", 4, unfinished=(2,)) == 178            # 4*9+4 + 2*4 + 26*4+26
    (tmp_path / "b" / "predict_config.yaml").write_text("predict:\n  use_full_fit: with_folds\n")
    assert with_checkpoints(tmp_path / "b", 8, full=True) == 330                  # 8*9+8 + 2*8 + 26*8+26
    assert with_checkpoints(tmp_path / "c", 64) == 2458                           # 64*9+64 + 2*64 + 26*64+26
    # the teacher: a blend of a (0.7) and b (0.3); c's weight is 0, so the web page does not load it
    oofs = {n: pd.read_csv(tmp_path / n / "oof.csv", dtype={"dicom_id": str}) for n in "ab"}
    blend = oofs["a"].copy()
    blend[LABELS_2023] = 0.7 * oofs["a"][LABELS_2023] + 0.3 * oofs["b"][LABELS_2023]
    t = load_config(DEMO, [f"data.input_dir={root}", f"output_dir={tmp_path / 't'}", "name=t",
                           f"blend.members=[{tmp_path / 'a'},{tmp_path / 'b'},{tmp_path / 'c'}]"])
    (tmp_path / "t").mkdir()
    blend.to_csv(tmp_path / "t" / "oof.csv", index=False)
    (tmp_path / "t" / "weights.json").write_text(json.dumps(dict(mode="fit", weights={
        str(tmp_path / "a"): 0.7, str(tmp_path / "b"): 0.3, str(tmp_path / "c"): 0.0})))
    train = pd.read_csv(root / "demo" / "train.csv")
    vouch(tmp_path / "t", evaluate(train[LABELS_2023].to_numpy(), blend[LABELS_2023].to_numpy(), LABELS_2023,
                                   train[LABELS_2023].to_numpy().sum(0), len(train)))
    r = compare_experiments([t, a, b, c], tmp_path / "cmp", baseline="a")
    table = pd.read_csv(tmp_path / "cmp" / "table.csv").set_index("recipe")
    assert list(table.columns[-2:]) == ["params", "served_params"] and list(table.index) == ["t", "a", "b", "c"]
    want = {"a": (178, 2 * 178), "b": (330, 3 * 330), "c": (2458, 2 * 2458), "t": (178 + 330, 2 * 178 + 3 * 330)}
    for n, (one, served) in want.items():
        assert table.loc[n, "params"] * 1e6 == pytest.approx(one, abs=1e-6), n
        assert table.loc[n, "served_params"] * 1e6 == pytest.approx(served, abs=1e-6), n
    assert table.loc["t", "mAP"] == pytest.approx(direct(tmp_path / "t", root)["mAP"], abs=1e-9)
    assert np.isnan(table.loc["t", "train_min"]) and table.loc["a", "train_min"] == pytest.approx(135 / 60)
    md = r["markdown"]
    assert [c.strip() for c in md.splitlines()[0].split("|")[-4:-1]] == ["train_min", "params", "served_params"]
    line_t = next(line for line in md.splitlines() if line.startswith("| t "))
    line_b = next(line for line in md.splitlines() if line.startswith("| b "))
    def last2(line):
        return [c.strip() for c in line.split("|")[-3:-1]]

    assert last2(line_t) == ["0.000508", "0.00135"] and last2(line_b) == ["0.000330", "0.000990"]   # millions, 3 digits
    # a recipe without checkpoints (predictions copied from elsewhere): '-' in both
    (tmp_path / "c" / "fold0" / "done.json").unlink(), (tmp_path / "c" / "fold1" / "done.json").unlink()
    row = compare_experiments([c], tmp_path / "cmp1")["table"].iloc[0]
    assert np.isnan(row.params) and np.isnan(row.served_params)


def test_checkpoint_params_reads_no_code_and_refuses_what_is_not_a_checkpoint(tmp_path):
    import torch

    from cxrlt.sizes import checkpoint_params, read_shapes

    net = net_of(3)
    sd = net.state_dict()
    sd["half"] = torch.zeros(2, 5, dtype=torch.bfloat16)                       # a float buffer: counted
    sd["index"] = torch.arange(7)                                               # an integer buffer: not
    torch.save(dict(model=sd, metrics={"mAP": np.float64(0.25)}), tmp_path / "best.pt")
    assert checkpoint_params(tmp_path / "best.pt") == sum(p.numel() for p in net.parameters()) + 10 == 3 * 9 + 3 + 6 + 3 * 26 + 26 + 10
    shapes = read_shapes(tmp_path / "best.pt")["model"]
    assert shapes["1.running_var"].numel == 3 and not shapes["1.num_batches_tracked"].floating
    marker = tmp_path / "ran"

    class Runs:                                                                 # unpickling it would run a command
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    torch.save(dict(model=sd, hook=Runs()), tmp_path / "runs.pt")
    assert checkpoint_params(tmp_path / "runs.pt") == checkpoint_params(tmp_path / "best.pt") and not marker.exists()
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CxrltError, match=r"text\.pt: cannot be sized as a checkpoint of weights"):
        checkpoint_params(tmp_path / "text.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CxrltError, match=r"list\.pt: not a model checkpoint"):
        checkpoint_params(tmp_path / "list.pt")
    with pytest.raises(CxrltError, match=r"gone\.pt: checkpoint not found"):
        checkpoint_params(tmp_path / "gone.pt")
