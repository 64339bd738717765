"""The recipe schema: every bad value stops at load with one line naming the key."""
import pytest
from conftest import ROOT

from cxrlt import schema
from cxrlt.config import load_config
from cxrlt.errors import CxrltError

DEMO = ROOT / "experiments" / "demo.yaml"

TYPOS = [  # the 8 choice typos that used to pass load_config (one survived training and failed at stage 04)
    ("predict.tta_mean=prb", "predict.tta_mean must be one of prob, logit, gmean, not 'prb'; did you mean prob?"),
    ("blend.mode=fitt", "blend.mode must be one of mean, rank, fit, route, not 'fitt'; did you mean fit?"),
    ("thresholds.calibration=isotonc",
     "thresholds.calibration must be one of none, temperature, isotonic, not 'isotonc'; did you mean isotonic?"),
    ("predict.use_full_fit=yes",
     "predict.use_full_fit must be one of none, with_folds, alone, not true (yes/no/on/off read as true/false)"),
    ("stage2.method=crtt", "stage2.method must be one of crt, tau_norm, fusion, not 'crtt'; did you mean crt?"),
    ("train.sampler=class_awre",
     "train.sampler must be one of random, class_aware, class_balanced, not 'class_awre'; did you mean class_aware?"),
    ("cache.resize=padd", "cache.resize must be one of stretch, pad, not 'padd'; did you mean pad?"),
    ("loss.class_weights=cbb",
     "loss.class_weights must be one of inverse, inverse_sqrt, cb, rw or null, not 'cbb'; did you mean cb?"),
]


@pytest.mark.parametrize("override,message", TYPOS)
def test_choice_typos_stop_at_load_with_one_line(override, message):
    with pytest.raises(CxrltError) as e:
        load_config(DEMO, [override])
    assert str(e.value) == message


@pytest.mark.parametrize("override,message", [
    ("train.lr=nan", "train.lr=nan: must be a finite number"),
    ("train.lr=inf", "train.lr=inf: must be a finite number"),
    ("augment.hflip=-inf", "augment.hflip=-inf: must be a finite number"),
    ("train.epochs=true", "train.epochs=True: must be a whole number"),
    ("model.name=3", "model.name=3: must be a text"),
    ("augment.scale=[1.2, 0.9]", "augment.scale=[1.2, 0.9]: must be [low, high] with low <= high"),
    ("predict.tta=[hflip, scale_0]", "predict.tta: unknown view 'scale_0' in ['hflip', 'scale_0']; views are none, "
     "hflip, scale_<factor> (e.g. scale_0.9, scale_1.1) and rotate_<degrees> (e.g. rotate_5, rotate_-5)"),
    ("train.trackers=[tensorbord]",
     "train.trackers.0 must be one of tensorboard, wandb, mlflow, not 'tensorbord'; did you mean tensorboard?"),
    ("train.folds=[0, 3]", "train.folds=[0, 3]: folds are 0..2 (folds.k=3)"),
])
def test_numbers_texts_lists_and_cross_key_rules(override, message):
    with pytest.raises(CxrltError) as e:
        load_config(DEMO, [override])
    assert str(e.value) == message


def test_full_fit_with_fold_normalisation_is_refused_at_load_not_after_training():
    with pytest.raises(CxrltError, match=r"^predict.use_full_fit=alone with predict.oof_normalise=rank: the full-data "
                                         r"fit has no OOF scores to fit its normalisation on"):
        load_config(DEMO, ["predict.oof_normalise=rank", "predict.use_full_fit=alone"])
    with pytest.raises(CxrltError, match="a second stage has no full-data fit"):
        load_config(DEMO, ["stage2.from=demo", "train.full_fit=true"])


def test_replaced_key_says_what_replaced_it(tmp_path):
    with pytest.raises(CxrltError, match="thresholds.temperature was replaced by thresholds.calibration"):
        load_config(DEMO, ["+thresholds.temperature=true"])
    r = tmp_path / "r.yaml"
    r.write_text(f"base: {DEMO}\nthresholds:\n  temperature: true\n")
    with pytest.raises(CxrltError, match=r"r.yaml: thresholds.temperature was replaced"):
        load_config(r)


def test_numbers_keep_the_type_they_were_written_with():
    cfg = load_config(DEMO, ["augment.rotate=10", "augment.translate=0.1", "train.epochs=4.0"])
    assert cfg.augment.rotate == 10 and type(cfg.augment.rotate) is int
    assert type(cfg.augment.translate) is float
    assert cfg.train.epochs == 4 and type(cfg.train.epochs) is int       # whole-number keys: 4.0 -> 4
    assert type(cfg.train.lr) is float and type(cfg.loss.gamma_neg) is int


def test_choice_lists_are_the_ones_the_code_uses():
    from cxrlt.data.datasets import PRESETS
    from cxrlt.losses.registry import LOSSES, MULTICLASS_LOSSES

    assert set(schema.PRESETS) == set(PRESETS) | {"custom"}
    assert set(schema.LOSSES) == set(LOSSES) | set(MULTICLASS_LOSSES)


def test_configuration_doc_is_generated_from_the_schema():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == schema.markdown(), "regenerate: python -m cxrlt.schema > docs/configuration.md"
    sections = {k: v for k, v in schema.defaults().items() if isinstance(v, dict)}
    def nested(s, k, v):    # a section inside a section (not an open mapping like predict.view_weights)
        return isinstance(v, dict) and v and f"{s}.{k}" not in schema.OPEN_MAPPINGS

    keys = [f"{s}.{k}.{sub}" for s, fields in sections.items() for k, v in fields.items() if nested(s, k, v)
            for sub in v] + [f"{s}.{k}" for s, fields in sections.items() for k, v in fields.items() if not nested(s, k, v)]
    assert "train.pseudo.distill" in keys and all(f"`{k}`" in doc for k in keys)   # every key documented


def test_a_bare_no_is_the_precision_no():
    # YAML 1.1 reads `train.precision=no` as false: it means the choice `no` (as the runtime always took it)
    cfg = load_config(DEMO, ["train.precision=no", "predict.precision=off"])
    assert cfg.train.precision == "no" and cfg.predict.precision == "no"
    with pytest.raises(CxrltError, match=r"^train.precision must be one of no, fp16, bf16, not true"):
        load_config(DEMO, ["train.precision=yes"])
