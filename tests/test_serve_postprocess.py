"""One post-processing path (evaluate.postprocess): the web page's answer is stage 04's test row
under every `predict.*` setting (fold normalisation rank / logit_standardise, normal gating, study
aggregation over a study's films, the full-data fit), and what the page opens is opened safely."""
import argparse
import shutil

import pandas as pd
import pytest
from conftest import cfg_at

pytest.importorskip("gradio")

from cxrlt.data.datasets import read_split, resolve_dataset  # noqa: E402
from cxrlt.errors import CxrltError  # noqa: E402
from cxrlt.evaluate.normalise import FoldNormaliser  # noqa: E402
from cxrlt.evaluate.predict import predict_experiment  # noqa: E402
from cxrlt.experiment import FULL  # noqa: E402
from cxrlt.serve.predictor import Predictor  # noqa: E402


def _copy(trained, out):
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("features", "*.csv", "metrics.json", "*.npz"))
    return out


def _study(cfg):
    """The test study with the most films: [(dicom id, path, view)]."""
    spec = resolve_dataset(cfg.data)
    df = read_split(spec, "test", labels="none")
    sid = df[spec.study_col].value_counts().index[0]
    rows = df[df[spec.study_col] == sid]
    return [(r[spec.id_col], spec.image_root / r[spec.path_col], r[spec.view_col]) for _, r in rows.iterrows()]


def _check_page_equals_test_rows(cfg, out, predictor=None):
    p = predictor or Predictor(out)
    test = pd.read_csv(out / "test.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    study = _study(cfg)
    for films in ([study[0]], study):          # one film alone, and the whole study with its views
        ids = [i for i, _, _ in films]
        if len(films) == 1 and cfg.predict.study_aggregation and len(study) > 1:
            continue                            # aggregated rows are the whole study's: only all its films give them
        r = p.predict([(path.name, path.read_bytes()) for _, path, _ in films], ",".join(v for _, _, v in films))
        want = test.loc[ids].mean(0)            # the page's study answer: the mean of its films' rows
        got = {f["label"]: f["probability"] for f in r["findings"]}
        diff = max(abs(got[c] - want[c]) for c in got)
        assert diff < 2e-5, (ids, diff)
    return p


@pytest.mark.parametrize("setting", [
    ("predict.oof_normalise=rank", "predict.study_aggregation=false"),
    ("predict.oof_normalise=rank",),                                       # aggregation per fold model, then its map
    ("predict.oof_normalise=logit_standardise", "predict.normal_gating=1.0"),
    ("predict.normal_gating=0.5", "predict.tta=[hflip,scale_0.9]", "predict.tta_mean=gmean"),
], ids=["rank", "rank_studies", "logit_standardise_gated", "gated_tta_gmean"])
def test_page_answers_stage_04s_test_rows_under_every_setting(base, trained, tmp_path, setting):
    out = _copy(trained, tmp_path / "demo")
    cfg = cfg_at(base, out, "predict.bootstrap=0", *setting)
    predict_experiment(cfg, progress=False)
    _check_page_equals_test_rows(cfg, out)
    if cfg.predict.oof_normalise != "none":   # stage 04's maps, kept: the saved ones map its OOF as it did
        saved = FoldNormaliser.load(out / "normaliser.npz")
        assert sorted(saved.params) == [0, 1, 2, 3, 4]


def test_page_answers_stage_04s_test_rows_with_the_full_data_fit(base, trained, tmp_path):
    from cxrlt.train.fold import train_fold

    out = _copy(trained, tmp_path / "demo")
    cfg = cfg_at(base, out, "predict.bootstrap=0", "predict.normal_gating=1.0")
    train_fold(cfg, FULL, progress=False)
    for use in ("with_folds", "alone"):
        c = cfg_at(base, out, "predict.bootstrap=0", "predict.normal_gating=1.0", f"predict.use_full_fit={use}")
        predict_experiment(c, progress=False)
        p = _check_page_equals_test_rows(c, out)
        assert p.n_models == (6 if use == "with_folds" else 1)


def test_a_normalised_experiment_without_its_saved_maps_is_refused(base, trained, tmp_path):
    out = _copy(trained, tmp_path / "demo")
    predict_experiment(cfg_at(base, out, "predict.bootstrap=0", "predict.oof_normalise=rank"), progress=False)
    (out / "normaliser.npz").unlink()
    with pytest.raises(CxrltError, match=r"oof_normalise=rank but no .*normaliser\.npz.*04_predict\.py --force"):
        Predictor(out)
    (out / "normaliser.npz").write_text("not arrays")
    with pytest.raises(CxrltError, match=r"not a fold normaliser written by stage 04"):
        Predictor(out)


@pytest.mark.parametrize("content", [b"these are notes, not weights\n", "truncated", b""], ids=["text", "truncated", "empty"])
def test_a_bad_checkpoint_is_a_one_line_error(base, trained, tmp_path, content):
    out = _copy(trained, tmp_path / "demo")
    ck = out / "fold2" / "best.pt"
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2] if content == "truncated" else content)
    with pytest.raises(CxrltError) as e:
        Predictor(out)
    assert "fold2/best.pt" in str(e.value) and "\n" not in str(e.value)


def test_the_page_opens_checkpoints_with_weights_only(trained, tmp_path, monkeypatch):
    """A best.pt holding an object (pickled code) is refused, never unpickled."""
    import torch

    out = _copy(trained, tmp_path / "demo")
    ck = torch.load(out / "fold0" / "best.pt", weights_only=False)
    ck["payload"] = argparse.Namespace(run="code")   # any class outside the allow-list: refused, not built
    torch.save(ck, out / "fold0" / "best.pt")
    with pytest.raises(CxrltError, match=r"fold0/best\.pt: not a checkpoint this version can open safely"):
        Predictor(out)
