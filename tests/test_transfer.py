"""model.init_from: the backbone and the classifier rows of same-named classes carry over exactly."""
import json

import pytest
import torch
from conftest import DEMO, cfg_at

from cxrlt.config import load_config
from cxrlt.data.labels import LABELS_2023
from cxrlt.errors import CxrltError
from cxrlt.models.checkpoint import load, save
from cxrlt.models.factory import arch_record, create_model
from cxrlt.models.transfer import init_from, match_labels

TARGET = ["Normal", "pneumoperitoneo", "cardiomegaly", "Brand New Finding", "Tortuous_Aorta"]


def test_labels_match_by_name_case_and_aliases():
    m = match_labels(LABELS_2023, TARGET)
    assert {TARGET[j]: LABELS_2023[i] for j, i in m.items()} == {
        "Normal": "No Finding", "pneumoperitoneo": "Pneumoperitoneum", "cardiomegaly": "Cardiomegaly",
        "Tortuous_Aorta": "Tortuous Aorta"}


def _source(tmp_path, **model):
    m = load_config(DEMO, [f"model.{k}={v}" for k, v in model.items()]).model
    torch.manual_seed(1)
    net = create_model(m, len(LABELS_2023))
    path = save(dict(model=net.state_dict(), arch=arch_record(m, LABELS_2023, 32, "stretch", 0.5, 0.25), init="random"),
                tmp_path / "src.pt")
    return net, path


@pytest.mark.parametrize("head", ["linear", "csra"])
def test_backbone_and_matching_rows_carry_exactly_the_rest_stay_fresh(tmp_path, head):
    src, path = _source(tmp_path, head=head)
    m = load_config(DEMO, [f"model.head={head}"]).model
    torch.manual_seed(7)
    dst = create_model(m, len(TARGET))
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    rep = init_from(dst, str(path), m, TARGET, 32)
    assert [a for a, _ in rep["carried"]] == ["Normal", "pneumoperitoneo", "cardiomegaly", "Tortuous_Aorta"]
    assert rep["fresh"] == ["Brand New Finding"]
    from cxrlt.models.factory import input_stats

    assert input_stats(dst) == (0.5, 0.25)     # the source's input scaling (e.g. a converted foundation model's)
    s, d = src.state_dict(), dst.state_dict()
    rows = match_labels(LABELS_2023, TARGET)
    per_class = [k for k in d if d[k].ndim >= 1 and d[k].shape[0] == len(TARGET) and s[k].shape[0] == 26]
    assert per_class                                   # the classifier (or head) rows were found
    for k in d:
        if k in per_class:
            for j in range(len(TARGET)):
                want = s[k][rows[j]] if j in rows else fresh[k][j]
                assert torch.equal(d[k][j], want), (k, j)
        else:
            assert torch.equal(d[k], s[k]), k             # the backbone as it was


def test_a_different_model_is_one_line(tmp_path):
    _, path = _source(tmp_path)
    m = load_config(DEMO, ["model.name=test_efficientnet"]).model
    with pytest.raises(CxrltError, match=r"a different model: name 'test_resnet' \(this run: 'test_efficientnet'\)"):
        init_from(create_model(m, 3), str(path), m, TARGET[:3], 32)
    m = load_config(DEMO, []).model
    with pytest.raises(CxrltError, match=r"image_size 32 \(this run: 64\)"):
        init_from(create_model(m, 3), str(path), m, TARGET[:3], 64)
    with pytest.raises(CxrltError, match="model.init_from 'nowhere': no checkpoint file"):
        init_from(create_model(m, 3), "nowhere", m, TARGET[:3], 32)


def test_a_fold_starts_from_an_experiment_and_records_it(base, trained, tmp_path):
    from cxrlt.train.fold import train_fold

    cfg = cfg_at(base, tmp_path / "ft", f"model.init_from={trained}", "train.epochs=1")
    r = train_fold(cfg, 0, progress=False)
    ck = load(tmp_path / "ft" / "fold0" / "best.pt")
    assert ck["init"] == f"init_from:{trained}/fold0/best.pt" == r["init"]
    assert json.loads((tmp_path / "ft" / "fold0" / "done.json").read_text())["init"] == ck["init"]


def test_relabelled_demo_holds_the_fold_the_demo_model_never_saw(tiny_root, base, tmp_path):
    from cxrlt.data.demo import RELABEL, make_relabelled

    d = [x for x in base if x.startswith("folds.dir=")][0].split("=", 1)[1]
    folds_csv = __import__("pathlib").Path(d) / "demo_folds.csv"
    r = make_relabelled(tiny_root / "demo", folds_csv, tmp_path / "out")
    import pandas as pd

    train = pd.read_csv(tiny_root / "demo" / "train.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    folds = pd.read_csv(folds_csv, dtype={"dicom_id": str}).set_index("dicom_id").fold
    new = pd.read_csv(tmp_path / "out" / "train.csv", dtype={"dicom_id": str}).set_index("dicom_id")
    assert set(new.index) == set(folds[folds == 0].index) and r["train"] == len(new)
    for old, name in RELABEL.items():
        assert (new[name] == train.loc[new.index, old]).all()
    assert "Lung Opacity" not in new.columns and "alveolar pattern" in new.columns
