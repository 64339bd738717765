"""The Experiment object: resolved once per stage, the same from a recipe or from its folder."""
from conftest import ROOT

from cxrlt.config import load_config, save_resolved
from cxrlt.data.experiment import Experiment
from cxrlt.experiment import FULL, Layout, best_checkpoint, done_marker

DEMO = ROOT / "experiments" / "demo.yaml"


def test_built_once_per_recipe_object_and_rebuilt_when_its_data_changes(tmp_path):
    cfg = load_config(DEMO, [f"output_dir={tmp_path / 'e'}"])
    exp = Experiment.of(cfg)
    assert Experiment.of(cfg) is exp                      # every library call of a stage shares it
    assert exp.spec.name == "demo" and exp.dir == tmp_path / "e" and exp.fold_ids == [0, 1, 2]
    assert "_experiment" not in cfg.to_dict()             # never written into the resolved recipe
    cfg.data.labels = ["Atelectasis", "Edema"]
    again = Experiment.of(cfg)
    assert again is not exp and again.spec.labels == ("Atelectasis", "Edema")


def test_from_folder_equals_from_recipe(tmp_path):
    cfg = load_config(DEMO, [f"output_dir={tmp_path / 'e'}", "folds.k=4"])
    save_resolved(cfg, tmp_path / "e" / "config.yaml")
    a, b = Experiment.of(cfg), Experiment.from_folder(tmp_path / "e")
    assert b.spec == a.spec and b.layout == a.layout and b.fold_ids == [0, 1, 2, 3]
    same = {"recipe": None, "overrides": None}
    assert b.cfg.to_dict() | same == cfg.to_dict() | same         # every key, as the stage resolved it


def test_layout_paths_from_a_folder_match_the_recipe_helpers(tmp_path):
    cfg = load_config(DEMO, [f"output_dir={tmp_path}"])
    lay = Layout(tmp_path)
    assert lay.best(2) == best_checkpoint(cfg, 2) == tmp_path / "fold2" / "best.pt"
    assert lay.done(FULL) == done_marker(cfg, FULL) == tmp_path / "full" / "done.json"
    for k in (0, 2):
        lay.fold(k).mkdir(parents=True)
        lay.best(k).write_bytes(b"x")
    lay.done(2).write_text("{}")
    assert lay.finished_folds() == [2]                    # fold 0 has no done.json: still training


def test_training_table_is_read_once_and_again_when_the_folds_change(base, tmp_path, monkeypatch):
    """The Experiment reads the training table, cache check and folds once per stage; rewriting the
    folds file (stage 02 --force) is seen; the assignment hash and fingerprint come from it."""
    import numpy as np

    from conftest import cfg_at

    from cxrlt.data import splits
    from cxrlt.fileio import read_table, write_csv

    calls = []
    real = splits.training_data
    monkeypatch.setattr(splits, "training_data", lambda *a: calls.append(1) or real(*a))
    folds_dir = tmp_path / "folds"
    folds_dir.mkdir()
    ov = dict(o.split("=", 1) for o in base)
    src = next(iter(__import__("pathlib").Path(ov["folds.dir"]).glob("*_folds.csv")))
    write_csv(folds_dir / src.name, read_table(src))
    cfg = cfg_at(base, tmp_path / "e", f"folds.dir={folds_dir}")
    exp = Experiment.of(cfg)
    t = exp.training()
    assert exp.training() is t and len(calls) == 1
    assert exp.assignment() == t.assignment() == splits.assignment_hash(t.ids, t.fold_of)
    tr, va = t.split(2)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(t.df) and (t.fold_of[va] == 2).all()
    fp = exp.fingerprint(0)
    assert fp["folds"] == t.assignment() and fp["labels"] == list(exp.spec.labels)
    assert exp.fingerprint(FULL)["folds"] == "full:" + splits.assignment_hash(t.ids, np.zeros(len(t.ids), int))
    folds = read_table(folds_dir / src.name)
    folds["fold"] = (folds["fold"] + 1) % 5                  # the same folds, renumbered: another assignment
    write_csv(folds_dir / src.name, folds)
    t2 = exp.training()
    assert t2 is not t and len(calls) == 2 and exp.assignment() != t.assignment()
    assert (t2.fold_of == (t.fold_of + 1) % 5).all()
