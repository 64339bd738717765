import numpy as np
import pandas as pd

from cxrlt.config import Config
from cxrlt.data.datasets import resolve_dataset
from cxrlt.data.demo import make_tables
from cxrlt.data.folds import imbalance, make_folds, positives_per_fold
from cxrlt.data.stages import build_folds

SPEC = resolve_dataset(Config(preset="demo", input_dir="input"))
TRAIN = make_tables({"train": 3000}, seed=0)["train"]


def test_patient_disjoint_and_every_image_once():
    folds = make_folds(TRAIN, SPEC, k=5, seed=42)
    assert list(folds.dicom_id) == list(TRAIN.dicom_id)          # every image once, in input order
    assert set(folds.fold) == set(range(5))
    per_patient = pd.Series(folds.fold.to_numpy()).groupby(TRAIN.subject_id.to_numpy()).nunique()
    assert per_patient.max() == 1                                  # a patient never spans folds


def test_classes_split_evenly():
    k = 5
    folds = make_folds(TRAIN, SPEC, k=k, seed=42)
    table = positives_per_fold(TRAIN, folds, SPEC)
    table = table[table.sum(axis=1) >= 5 * k]
    assert len(table) >= 20
    imb = imbalance(table)
    bad = imb[imb.max_dev > imb.allowed]
    assert bad.empty, bad
    sizes = folds.fold.value_counts()
    assert sizes.max() - sizes.min() <= 1 + 0.1 * len(TRAIN) / k


def test_same_seed_same_folds():
    a = make_folds(TRAIN, SPEC, 5, 42)
    assert a.equals(make_folds(TRAIN, SPEC, 5, 42))
    assert not a.equals(make_folds(TRAIN, SPEC, 5, 43))


def test_stage_writes_skips_and_rebuilds(tiny_cfg):
    r = build_folds(tiny_cfg)
    assert not r["skipped"] and r["path"].is_file() and r["path"].with_suffix(".yaml").is_file()
    first = r["path"].read_bytes()
    r2 = build_folds(tiny_cfg)
    assert r2["skipped"] and r2["path"].read_bytes() == first
    r3 = build_folds(tiny_cfg, force=True)
    assert not r3["skipped"] and r3["path"].read_bytes() == first   # deterministic


def test_stage_script_prints_table(tiny_root, tmp_path, stage):
    r = stage("src/02_make_folds.py", "--config", "experiments/demo.yaml", f"data.input_dir={tiny_root}",
                   f"folds.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "Atelectasis" in r.stdout and "wrote" in r.stdout and (tmp_path / "demo_folds.csv").is_file()
    assert np.all(pd.read_csv(tmp_path / "demo_folds.csv").fold.between(0, 4))


def test_existing_folds_must_match_the_recipe(tiny_cfg):
    import pytest

    from cxrlt.config import load_config
    from cxrlt.errors import CxrltError

    build_folds(tiny_cfg)
    with pytest.raises(CxrltError, match=r"has folds \[0, 1, 2, 3, 4\], the recipe says folds.k=3"):
        build_folds(load_config(tiny_cfg.recipe, [*_overrides(tiny_cfg), "folds.k=3"]))
    with pytest.raises(CxrltError, match="made with folds.seed=42, the recipe says 7"):
        build_folds(load_config(tiny_cfg.recipe, [*_overrides(tiny_cfg), "folds.seed=7"]))
    assert not build_folds(load_config(tiny_cfg.recipe, [*_overrides(tiny_cfg), "folds.k=3"]), force=True)["skipped"]


def _overrides(cfg):
    return [f"data.input_dir={cfg.data.input_dir}", f"cache.dir={cfg.cache.dir}", f"folds.dir={cfg.folds.dir}",
            f"cache.size={cfg.cache.size}", f"folds.k={cfg.folds.k}"]
