"""One stage frame (cxrlt.stage): a stage uses only what its predecessor's stamp vouches for, a
--force run keeps the old outputs until it has replaced them, a finished fold is one whose start
satisfies the recipe."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import cfg_at
from test_blend_submit import fake_member

from cxrlt.ensemble.blend import blend_experiment
from cxrlt.ensemble.submission import make_submission
from cxrlt.ensemble.thresholds import tune_thresholds
from cxrlt.errors import CxrltError
from cxrlt.stage import ASIDE, stage_frame, verified


# ---- the frame itself ----------------------------------------------------------------------------

def test_frame_vouches_seals_and_puts_back_what_force_set_aside(tmp_path):
    with stage_frame(tmp_path, "stamp.json", "x") as f:
        assert f.vouched(inputs=1) is None                         # no stamp yet
        (tmp_path / "out.csv").write_text("a\n")
        f.seal(dict(inputs=1), [tmp_path / "out.csv"])
    with stage_frame(tmp_path, "stamp.json", "x") as f:
        assert f.vouched(inputs=1)["inputs"] == 1
        assert f.vouched(inputs=2) is None                         # another dependency
    with stage_frame(tmp_path, "stamp.json", "x", force=True) as f:
        assert f.vouched(inputs=1) is None                         # --force
    (tmp_path / "out.csv").write_text("changed\n")                  # rewritten after its stamp
    with stage_frame(tmp_path, "stamp.json", "x") as f:
        assert f.vouched(inputs=1) is None
    with pytest.raises(CxrltError, match="out.csv is not the file stamp.json vouches for .*; re-run stage 9"):
        verified(tmp_path / "stamp.json", ["out.csv"], "stage 9")
    # --force: the old outputs are set aside, put back when the run fails, gone when it completes
    with pytest.raises(RuntimeError):
        with stage_frame(tmp_path, "stamp.json", "x", force=True) as f:
            f.set_aside(["out.csv", "stamp.json"])
            (tmp_path / "out.csv").write_text("half\n")
            raise RuntimeError("the new run failed")
    assert (tmp_path / "out.csv").read_text() == "changed\n" and (tmp_path / "stamp.json").is_file()
    assert not (tmp_path / ASIDE).exists()
    with stage_frame(tmp_path, "stamp.json", "x", force=True) as f:
        f.set_aside(["out.csv", "stamp.json"])
        (tmp_path / "out.csv").write_text("new\n")
    assert (tmp_path / "out.csv").read_text() == "new\n" and not (tmp_path / ASIDE).exists()
    # a --force run killed (-9) after setting aside: the next run puts the old outputs back
    (tmp_path / ASIDE).mkdir()
    (tmp_path / ASIDE / "out.csv").write_text("old\n")
    with stage_frame(tmp_path, "stamp.json", "x"):
        assert (tmp_path / "out.csv").read_text() == "old\n" and not (tmp_path / ASIDE).exists()


# ---- issue 27 case 1: a stage killed after replacing oof.csv, before its stamp ------------------

@pytest.fixture
def blended(base, tmp_path):
    """A mean blend of two members (stage 05, stamped) with its thresholds (stage 06)."""
    cfg = cfg_at(base, tmp_path / "x")
    a, b = fake_member(cfg, tmp_path / "a", 0.3, 1), fake_member(cfg, tmp_path / "b", 0.2, 2)
    bl = cfg_at(base, tmp_path / "blend", f"blend.members=[{a}, {b}]", "blend.mode=mean",
                f"submission.dir={tmp_path / 'subs'}")
    r = blend_experiment(bl)
    tune_thresholds(bl)
    return bl, r, tmp_path / "blend", (a, b)


def kill_after_oof(folder, other):
    """What a stage 05 killed (-9) after replacing oof.csv and test.csv, before its metrics.json,
    leaves: new prediction files beside the old (stale) stamp."""
    for f in ("oof.csv", "test.csv"):
        df = pd.read_csv(folder / f, dtype={"dicom_id": str})
        o = pd.read_csv(other / f, dtype={"dicom_id": str})
        df[o.columns[1:27]] = o[o.columns[1:27]]
        df.to_csv(folder / f, index=False)


def test_thresholds_refuse_an_oof_its_stage_did_not_vouch_for(blended):
    cfg, _, folder, (a, _) = blended
    kill_after_oof(folder, a)
    with pytest.raises(CxrltError, match=r"oof.csv is not the file metrics.json vouches for .*re-run src/05_blend.py"):
        tune_thresholds(cfg, force=True)
    (folder / "metrics.json").unlink()                             # killed before its first stamp
    with pytest.raises(CxrltError, match=r"metrics.json not found.*re-run src/05_blend.py"):
        tune_thresholds(cfg, force=True)


def test_submission_refuses_a_test_csv_its_stage_did_not_vouch_for(blended):
    cfg, _, folder, (a, _) = blended
    kill_after_oof(folder, a)
    with pytest.raises(CxrltError, match=r"test.csv is not the file metrics.json vouches for .*re-run src/05_blend.py"):
        make_submission(cfg)
    assert not (folder.parent / "subs" / "log.csv").is_file()      # no row with the old OOF mAP


def test_binary_submission_refuses_thresholds_tuned_on_another_blend(blended, base):
    cfg, r, folder, (a, b) = blended
    make_submission(cfg, binary=True)                              # thresholds and test.csv of one blend
    fit = cfg_at(base, folder, f"blend.members=[{a}, {b}]", "blend.mode=fit", f"submission.dir={folder.parent / 'subs'}")
    blend_experiment(fit)                                          # another mode: new oof.csv and test.csv
    with pytest.raises(CxrltError, match=r"thresholds.json was tuned on another oof.csv .*re-run src/06_thresholds.py"):
        make_submission(fit, binary=True)
    tune_thresholds(fit)
    assert make_submission(fit, binary=True)["rows"] > 0


def test_blend_refuses_a_member_whose_stage_was_killed_after_replacing_oof(blended):
    cfg, _, folder, (a, b) = blended
    df = pd.read_csv(a / "oof.csv", dtype={"dicom_id": str})
    df.iloc[:, 1] = np.clip(df.iloc[:, 1] * 0.5, 0, 1)
    df.to_csv(a / "oof.csv", index=False)
    with pytest.raises(CxrltError, match=rf"blend member '{a}': .*oof.csv is not the file metrics.json vouches for"):
        blend_experiment(cfg, force=True)
    assert json.loads((folder / "metrics.json").read_text())["mode"] == "mean"


# ---- issue 27 case 6: a failing --force run leaves the finished fold as it was -------------------

def fold_files(d):
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("bad", ["model.name=nonexistent_model", "train.lr=nan", "epoch"])
def test_failing_forced_retrain_keeps_the_finished_fold(base, tmp_path, bad, monkeypatch):
    from cxrlt.train import trainer as fold_module
    from cxrlt.train.fold import train_fold

    short = ["train.epochs=1", "train.max_steps_per_epoch=2"]
    train_fold(cfg_at(base, tmp_path, *short), 0, progress=False)
    before = fold_files(tmp_path / "fold0")
    assert {"best.pt", "last.pt", "log.csv", "done.json"} <= set(before)
    if bad == "epoch":                                            # fails after the old run was set aside
        def boom(*a, **k):
            raise RuntimeError("the first epoch failed")
        monkeypatch.setattr(fold_module, "run_epochs", boom)
    with pytest.raises(Exception):     # train.lr=nan is refused already at load (the schema), the rest in the run
        train_fold(cfg_at(base, tmp_path, *short, *([] if bad == "epoch" else [bad])), 0, progress=False, force=True)
    assert fold_files(tmp_path / "fold0") == before
    assert not (tmp_path / "fold0" / ASIDE).exists()
    monkeypatch.undo()
    assert train_fold(cfg_at(base, tmp_path, *short), 0, progress=False)["skipped"]


# ---- issue 27 case 2: a fold finished from random init does not satisfy require_pretrained ------

def test_fold_from_random_init_is_not_finished_for_a_recipe_requiring_pretrained(base, tmp_path):
    from cxrlt.train.fold import train_fold

    short = ["train.epochs=1", "train.max_steps_per_epoch=2"]
    r = train_fold(cfg_at(base, tmp_path, *short, "model.pretrained=false"), 0, progress=False)
    assert json.loads((tmp_path / "fold0" / "done.json").read_text())["init"] == r["init"] == "random"
    strict = cfg_at(base, tmp_path, *short, "model.pretrained=true", "model.require_pretrained=true")
    with pytest.raises(CxrltError, match=r"fold 0 started from random init .*model.require_pretrained=true; "
                                         r"retrain it with --force"):
        train_fold(strict, 0, progress=False)
    assert train_fold(cfg_at(base, tmp_path, *short), 0, progress=False)["skipped"]   # the recipe it was made for
