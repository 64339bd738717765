"""Per-view specialists (data.views) and the routed blend (blend.mode: route)."""
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import cfg_at

from cxrlt.data.experiment import Experiment
from cxrlt.data.splits import training_data
from cxrlt.ensemble.blend import blend_experiment
from cxrlt.errors import CxrltError
from cxrlt.evaluate.predict import predict_experiment
from cxrlt.evaluate.predictions import route_rows
from cxrlt.train.fold import train_fold

NOAGG = ["predict.study_aggregation=false", "predict.bootstrap=0", "predict.tta=none"]


def test_routing_picks_the_specialist_of_each_view_and_falls_back():
    members = {"frontal": ["PA", "AP"], "lateral": ["LATERAL", "LL"], "all": None}
    assert route_rows(["PA", "LL", "ap", "AP_SUPINE", None, " lateral "], members).tolist() == [0, 1, 0, 2, 2, 1]
    with pytest.raises(CxrltError, match="exactly one all-view member"):
        route_rows(["PA"], {"a": ["PA"], "b": ["AP"]})
    with pytest.raises(CxrltError, match="view PA is in members 'a' and 'b'"):
        route_rows(["PA"], {"a": ["PA"], "b": ["PA", "AP"], "c": None})


@pytest.fixture(scope="module")
def routed(base, trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("route")
    allv = root / "allviews"
    shutil.copytree(trained, allv, ignore=shutil.ignore_patterns("features", "*.csv", "metrics.json", "full"))
    predict_experiment(cfg_at(base, allv, *NOAGG), progress=False)
    for name, views in (("frontal", "[PA,AP]"), ("lateral", "[LATERAL]")):
        cfg = cfg_at(base, root / name, f"data.views={views}", "train.epochs=1", *NOAGG)
        for k in range(5):
            train_fold(cfg, k, progress=False)
        predict_experiment(cfg, progress=False)
    members = f"[{root / 'frontal'},{root / 'lateral'},{allv}]"
    cfg = cfg_at(base, root / "routed", "blend.mode=route", f"blend.members={members}", *NOAGG)
    return cfg, root, blend_experiment(cfg)


def test_specialists_train_on_their_views_with_the_same_folds(base, routed):
    cfg, root, _ = routed
    spec, df, _, _, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    oof = pd.read_csv(root / "frontal" / "oof.csv", dtype={spec.id_col: str})
    want = df[df[spec.view_col].isin(["PA", "AP"])]
    assert sorted(oof[spec.id_col]) == sorted(want[spec.id_col])
    fold = pd.Series(fold_of, index=df[spec.id_col])
    assert (oof.set_index(spec.id_col).fold == fold.loc[oof[spec.id_col]].to_numpy()).all()


def test_routed_oof_covers_each_image_once_from_its_specialist(routed):
    cfg, root, r = routed
    spec, df, _, _, fold_of = training_data(cfg, Experiment.of(cfg).spec)
    oof = pd.read_csv(root / "routed" / "oof.csv", dtype={spec.id_col: str})
    assert oof[spec.id_col].tolist() == df[spec.id_col].tolist() and (oof.fold.to_numpy() == fold_of).all()
    names = list(spec.labels)
    for member, views in (("frontal", ["PA", "AP"]), ("lateral", ["LATERAL"])):
        m = pd.read_csv(root / member / "oof.csv", dtype={spec.id_col: str}).set_index(spec.id_col)
        ids = df[df[spec.view_col].isin(views)][spec.id_col]
        assert np.allclose(oof.set_index(spec.id_col).loc[ids, names].to_numpy(), m.loc[ids, names].to_numpy())
    assert r["routed"] == {str(root / "frontal"): int(df[spec.view_col].isin(["PA", "AP"]).sum()),
                           str(root / "lateral"): int((df[spec.view_col] == "LATERAL").sum()),
                           str(root / "allviews"): 0}
    assert set(r["by_view"]) == {"frontal", "lateral"}
    assert len(pd.read_csv(root / "routed" / "test.csv")) == 40


def test_route_refuses_members_that_aggregate_studies(base, routed, tmp_path):
    cfg, root, _ = routed
    agg = tmp_path / "agg"
    shutil.copytree(root / "allviews", agg)
    predict_experiment(cfg_at(base, agg, "predict.bootstrap=0", "predict.tta=none"), progress=False)
    bad = cfg_at(base, tmp_path / "r", "blend.mode=route", f"blend.members=[{root / 'frontal'},{agg}]", *NOAGG)
    with pytest.raises(CxrltError, match="aggregates studies; set predict.study_aggregation: false"):
        blend_experiment(bad)


def test_the_web_page_routes_a_film_to_its_specialist(base, routed):
    pytest.importorskip("gradio")
    from cxrlt.serve.predictor import Predictor

    cfg, root, _ = routed
    spec, df, *_ = training_data(cfg, Experiment.of(cfg).spec)
    row = df[df[spec.view_col] == "LATERAL"].iloc[0]
    upload = [(row[spec.path_col], (spec.image_root / row[spec.path_col]).read_bytes())]
    got = Predictor(root / "routed").predict(upload, ["LATERAL"])["findings"]
    want = Predictor(root / "lateral").predict(upload, ["LATERAL"])["findings"]
    assert {f["label"]: f["probability"] for f in got} == pytest.approx({f["label"]: f["probability"] for f in want})
