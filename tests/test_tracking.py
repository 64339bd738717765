import importlib.util
import time

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, cfg_at

from cxrlt.config import Config
from cxrlt.errors import CxrltError
from cxrlt.progress import PlainProgress, progress_bar
from cxrlt.train.fold import train_fold
from cxrlt.train.tracking import EPOCH_SCALARS, tracker_names


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_match_log_csv_across_a_resume(base, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    cfg = cfg_at(base, tmp_path, "train.epochs=2")
    assert train_fold(cfg, 0, progress=False, stop_after=1)["stopped"]      # as if killed after epoch 1
    tb = tmp_path / "fold0" / "tb"
    with SummaryWriter(tb) as w:              # ... and a killed run had logged epoch 2 without saving it
        w.add_scalar("val_mAP", 123.0, 2)
    time.sleep(1.1)                           # event files are read in the order of their names (seconds)
    r = train_fold(cfg, 0, progress=False)
    log = pd.read_csv(tmp_path / "fold0" / "log.csv")
    ev = read_events(tb)
    for tag in [t for t in EPOCH_SCALARS if t in log.columns]:   # one point per epoch, the values of log.csv (val_bAcc: multiclass only)
        assert [e.step for e in ev[tag]] == log.epoch.tolist() == [1, 2], tag
        np.testing.assert_allclose([e.value for e in ev[tag]], log[tag], rtol=1e-5, err_msg=tag)
    ap = {t: e for t, e in ev.items() if t.startswith("val_AP/")}
    assert "val_AP/Support_Devices" in ap and "val_AP/No_Finding" in ap
    assert {e.step for es in ap.values() for e in es} == {r["best_epoch"]}
    # the classes' APs average to the best epoch's val mAP (classes without a positive left out of both)
    assert np.mean([es[0].value for es in ap.values()]) == pytest.approx(log.val_mAP.max(), abs=1e-4)


def test_trackers_are_checked():
    assert tracker_names(Config(trackers=[])) == [] and tracker_names(Config(trackers="tensorboard")) == ["tensorboard"]
    with pytest.raises(CxrltError, match="unknown tracker 'neptune'"):
        tracker_names(Config(trackers=["neptune"]))
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(CxrltError, match="pip install wandb"):
            tracker_names(Config(trackers=["tensorboard", "wandb"]))


def test_piped_stage_prints_plain_progress_and_no_trackers_write_nothing(base, tmp_path, monkeypatch, stage):
    monkeypatch.delenv("CXRLT_PROGRESS", raising=False)
    res = stage("src/03_train.py", "--config", DEMO, "--fold", "1", *base, f"output_dir={tmp_path}",
                "train.epochs=1", "train.trackers=[]")     # stdout and stderr are captured, not terminals
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "\r" not in out
    lines = [s for s in out.splitlines() if s.startswith("fold 1 epoch 1/1: ") and " batch (" in s]
    assert len(lines) > 3 and all(", ETA " in s for s in lines[:-1])
    n, total = lines[-1].split(": ")[1].split(" ")[0].split("/")
    assert n == total and "(100%)" in lines[-1] and "done in" in lines[-1]
    assert (tmp_path / "fold1" / "log.csv").is_file() and not (tmp_path / "fold1" / "tb").exists()


def test_plain_progress_line_cadence(capsys):
    t = [0.0]
    bar = PlainProgress(25, "job", "img", clock=lambda: t[0])          # a line per 3 images (10 %, rounded up)
    for i in range(25):
        t[0] += 0.5
        bar.update()
        if i == 10:
            bar.set_postfix(loss="0.1234")
    bar.close()
    lines = capsys.readouterr().out.splitlines()
    assert [s.split(": ")[1].split(" ")[0] for s in lines] == [f"{n}/25" for n in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert lines[0] == "job: 3/25 img (12%), 2.0 img/s, ETA 0:11"
    assert lines[-1] == "job: 25/25 img (100%), 2.0 img/s, done in 0:12, loss=0.1234"
    stopped = PlainProgress(100, "cut", "batch")
    stopped.update(4)
    stopped.close()
    stopped.close()
    assert capsys.readouterr().out.count("\n") == 1                   # a loop that stopped early: one last line


def test_progress_mode_override(monkeypatch, capsys):
    monkeypatch.setenv("CXRLT_PROGRESS", "off")
    assert list(progress_bar(3, "x", iterable=range(3))) == [0, 1, 2] and capsys.readouterr().out == ""
    monkeypatch.setenv("CXRLT_PROGRESS", "plain")
    list(progress_bar(3, "x", "fold", iterable="abc"))
    assert capsys.readouterr().out.count("x: ") == 3
    monkeypatch.setenv("CXRLT_PROGRESS", "fancy")
    with pytest.raises(CxrltError, match="CXRLT_PROGRESS"):
        progress_bar(3, "x")
