"""Stage 03 on more data than the release (issue 26): external sets with partial labels, films
pseudo-labelled by a teacher's fold-k model, distillation. None of the added films is ever scored."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, cfg_at

from cxrlt.config import load_config
from cxrlt.data.experiment import Experiment
from cxrlt.errors import CxrltError
from cxrlt.fileio import read_table
from cxrlt.train import trainer
from cxrlt.train.fold import train_fold

SHORT = ["train.epochs=1", "train.max_steps_per_epoch=2"]


def spy_loss(monkeypatch):
    """Record build_loss's arguments and every call of the loss (target, row weights)."""
    seen = dict(calls=[])
    real = trainer.build_loss

    def build(lcfg, positives, n, epochs, task, labelled=None):
        seen.update(positives=np.asarray(positives), n=n, labelled=labelled)
        loss = real(lcfg, positives, n, epochs, task, labelled=labelled)
        fwd = loss.forward

        def forward(logits, target, row_weight=None):
            seen["calls"].append((target.clone(), None if row_weight is None else row_weight.clone()))
            return fwd(logits, target, row_weight)

        loss.forward = forward
        return loss

    monkeypatch.setattr(trainer, "build_loss", build)
    return seen


def extra_cfg(base, tiny_root, out, *more):
    from cxrlt.data.demo import make_external
    from cxrlt.data.stages import prepare_extra_cache

    make_external(tiny_root / "demo_extra", n=12, max_side=64, workers=1, uncertain=0.3, blank=0.1, progress=False)
    cfg = load_config(ROOT / "experiments" / "demo_extra.yaml", base + [f"output_dir={out}", *SHORT, *more])
    prepare_extra_cache(cfg, progress=False)
    return cfg


def test_external_films_train_every_fold_with_their_unlabelled_findings_left_out(base, tiny_root, tmp_path,
                                                                                  monkeypatch, capsys):
    from cxrlt.data.demo import EXTRA_RELABEL
    from cxrlt.data.labels import LABELS_2023

    seen = spy_loss(monkeypatch)
    cfg = extra_cfg(base, tiny_root, tmp_path / "x")
    train_fold(cfg, 0, progress=False)
    t = Experiment.of(cfg).training()
    tr, va = t.split(0)
    assert f"{len(tr)} train / {len(va)} val images + 12 external" in capsys.readouterr().out
    # class statistics over labelled entries: the set's 8 findings count its films but its uncertain
    # (-1: unlabelled) cells, the 18 findings it does not label count none of them
    from cxrlt.data.external import extra_training_rows

    ext = extra_training_rows(cfg).y
    labelled = [LABELS_2023.index(x) for x in EXTRA_RELABEL]
    want = len(tr) + (~np.isnan(ext)).sum(0)
    assert want[labelled].max() <= len(tr) + 12 and (want[labelled] > len(tr)).all() and want.min() == len(tr)
    assert seen["n"] == len(tr) + 12 and seen["labelled"].tolist() == want.tolist()
    assert seen["positives"].tolist() == (t.y[tr].sum(0) + np.nansum(ext, 0)).tolist()
    # nothing external is scored: the held-out predictions are fold 0's films, exactly
    val = read_table(tmp_path / "x" / "fold0" / "val_predictions.csv", "dicom_id")
    assert sorted(val["dicom_id"]) == sorted(t.ids.iloc[va]) and not val["dicom_id"].str.startswith("extra:").any()


def test_pseudo_labels_and_distillation_from_the_teachers_fold_k_model(base, tiny_root, trained, tmp_path, monkeypatch,
                                                                      capsys):
    """Fold 1 of a student of the tiny trained experiment: the teacher pass runs fold 1's model only
    (its logits cached beside the teacher), the test films and a folder of unlabelled films join with
    weight 0.5 and soft targets, the fold's own films get (1 - a) label + a soft target; the held-out
    fold is scored, nothing else."""
    import shutil

    from cxrlt.data.stages import prepare_pseudo_cache

    seen = spy_loss(monkeypatch)
    trained = shutil.copytree(trained, tmp_path / "teacher")      # the logits are written beside the teacher
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    spec0 = Experiment.of(cfg_at(base, tmp_path / "s")).spec
    test0 = read_table(spec0.test_csv, spec0.id_col)
    for j in range(4):                                             # new files: copies of four test films
        shutil.copy(spec0.image_root / test0[spec0.path_col].iloc[j], folder / f"film{j}.png")
    cfg = cfg_at(base, tmp_path / "s", *SHORT, f"train.pseudo.from={trained}", "train.pseudo.splits=[test]",
                 f"train.pseudo.folder={folder}", "train.pseudo.weight=0.5", "train.pseudo.distill=0.25",
                 "train.pseudo.temperature=2", "train.batch_size=64")
    assert [r["written"] for r in prepare_pseudo_cache(cfg, progress=False)] == [4]   # stage 01: the teacher's size is the student's
    train_fold(cfg, 1, progress=False)
    written = sorted(p.name for p in trained.glob("fold*/teacher_logits_*.csv"))
    assert written == ["teacher_logits_folder.csv", "teacher_logits_test.csv", "teacher_logits_train.csv"]
    assert all(p.parent.name == "fold1" for p in trained.glob("fold*/teacher_logits_*.csv"))
    spec = Experiment.of(cfg).spec
    t = Experiment.of(cfg).training()
    tr, va = t.split(1)
    n_test = len(read_table(spec.test_csv, spec.id_col))
    assert f"+ {n_test + 4} pseudo-labelled" in capsys.readouterr().out and seen["n"] == len(tr) + n_test + 4
    # soft targets: fold 1's own films (1 - 0.25) y + 0.25 sigmoid(z / 2); test films sigmoid(z / 2)
    z_tr = read_table(trained / "fold1" / "teacher_logits_train.csv", "id")
    z_te = read_table(trained / "fold1" / "teacher_logits_test.csv", "id")
    assert list(z_tr["id"]) == list(t.ids.iloc[tr])
    soft_tr = 1 / (1 + np.exp(-z_tr[list(spec.labels)].to_numpy(np.float64) / 2))
    z_fo = read_table(trained / "fold1" / "teacher_logits_folder.csv", "id")
    assert list(z_fo["id"]) == [f"folder:film{j}.png" for j in range(4)]
    soft_te, soft_fo = (1 / (1 + np.exp(-z[list(spec.labels)].to_numpy(np.float64) / 2)) for z in (z_te, z_fo))
    want = np.concatenate([0.75 * t.y[tr] + 0.25 * soft_tr, soft_te, soft_fo])
    assert seen["positives"] == pytest.approx(want.sum(0), rel=1e-5)
    # every batch carries row weights: 1 for the fold's films, 0.5 for pseudo-labelled ones
    weights = np.concatenate([c[1].cpu().numpy() for c in seen["calls"]])
    assert set(np.round(weights, 6)) <= {1.0, 0.5} and len(weights) == 2 * 64
    val = read_table(tmp_path / "s" / "fold1" / "val_predictions.csv", "dicom_id")
    assert sorted(val["dicom_id"]) == sorted(t.ids.iloc[va])
    assert not set(val["dicom_id"]) & set(z_te["id"])
    done = json.loads((tmp_path / "s" / "fold1" / "done.json").read_text())
    assert done["fingerprint"]["folds"] == Experiment.of(cfg).assignment()
    # the student reloads from its checkpoint alone and predicts its held-out films as validation did
    from accelerate import Accelerator

    from cxrlt.data.loader import CxrDataset, make_loader
    from cxrlt.models.checkpoint import load, load_model
    from cxrlt.models.inference import predict_loader

    ck = load(tmp_path / "s" / "fold1" / "best.pt")
    net, _ = load_model(ck)
    acc = Accelerator(cpu=True)
    loader = acc.prepare(make_loader(CxrDataset([t.files[i] for i in va]), 16, 0, False))
    logits, _, idx, _ = predict_loader(net, loader, acc, ck["mean"], ck["std"], False)
    probs = torch.sigmoid(logits).numpy()[np.argsort(idx.numpy())]
    want = val.set_index("dicom_id").loc[list(t.ids.iloc[va]), list(spec.labels)].to_numpy()
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_a_teacher_trained_on_other_folds_is_refused_before_training(base, trained, tmp_path):
    from cxrlt.data.stages import build_folds

    other = cfg_at(base, tmp_path / "s", *SHORT, f"folds.dir={tmp_path / 'folds'}", "folds.seed=7",
                   f"train.pseudo.from={trained}")
    build_folds(other)
    with pytest.raises(CxrltError, match=r"fold assignment .* the student's is"):
        train_fold(other, 0, progress=False)
    assert not (tmp_path / "s" / "fold0" / "best.pt").exists()


def test_pseudo_settings_are_checked_at_load():
    for bad, msg in [(["train.pseudo.from=x", "train.pseudo.splits=[]"], "nothing to take from the teacher"),
                     (["train.pseudo.from=x", "train.full_fit=true"], "a full-data fit has none"),
                     (["train.pseudo.splits=[train]"], "must be one of test, dev")]:
        with pytest.raises(CxrltError, match=msg):
            load_config(ROOT / "experiments" / "demo.yaml", bad)
    pd.DataFrame()   # (pandas imported for read_table's frames)
