import pytest
import yaml
from conftest import ROOT

from cxrlt.config import load_config, parse_value, save_resolved
from cxrlt.errors import CxrltError

DEMO = ROOT / "experiments" / "demo.yaml"


def test_demo_recipe_resolves_with_defaults():
    cfg = load_config(DEMO)
    assert cfg.name == "demo"
    assert cfg.data.preset == "demo"
    assert cfg.cache.size == 128           # from the recipe
    assert cfg.cache.resize == "stretch"   # from the schema defaults
    assert cfg.folds.k == 3


def test_overrides_nested_and_typed():
    cfg = load_config(DEMO, ["cache.size=256", "folds.seed=7", "data.labels=[A, B]", "train.lr=3e-4",
                             "+predict.view_weights.XA=2.5"])
    assert cfg.cache.size == 256 and isinstance(cfg.cache.size, int)
    assert cfg.folds.seed == 7
    assert cfg.data.labels == ["A", "B"]
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)
    assert cfg.predict.view_weights == {"PA": 7, "AP": 7, "LATERAL": 3, "LL": 3, "XA": 2.5}
    # `+` adds keys to open mappings only: a new key anywhere else would never be read
    with pytest.raises(CxrltError, match=r"^override '\+extra.lr=3e-4': no key 'extra' under the top level"):
        load_config(DEMO, ["+extra.lr=3e-4"])


@pytest.mark.parametrize("text,value", [("3e-4", 3e-4), ("1", 1), ("true", True), ("null", None), ("abc", "abc")])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_unknown_override_key_is_refused_with_a_hint():
    with pytest.raises(CxrltError, match=r"no key 'sise' under cache; did you mean size"):
        load_config(DEMO, ["cache.sise=3"])
    with pytest.raises(CxrltError, match="key=value"):
        load_config(DEMO, ["cache.size"])


def test_base_inheritance_and_resolved_copy(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {DEMO}\ncache:\n  size: 320\n")
    cfg = load_config(child)
    assert cfg.name == "child" and cfg.cache.size == 320 and cfg.data.preset == "demo"
    out = save_resolved(cfg, tmp_path / "out" / "config.yaml")
    back = yaml.safe_load(out.read_text())
    assert back["cache"]["size"] == 320 and back["folds"]["k"] == 3 and back["name"] == "child"


def test_missing_and_invalid_recipe(tmp_path):
    with pytest.raises(CxrltError, match="recipe not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(CxrltError, match="not valid YAML"):
        load_config(bad)


def test_misspelt_key_in_a_recipe_file_is_refused_with_file_key_and_hint(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {DEMO}\nlos:\n  name: bce\n")
    with pytest.raises(CxrltError, match=r"child.yaml: unknown key 'los'; did you mean loss\?"):
        load_config(child)
    child.write_text(f"base: {DEMO}\nloss:\n  nmae: bce\n")
    with pytest.raises(CxrltError, match=r"child.yaml: unknown key 'loss.nmae'; did you mean loss.name\?"):
        load_config(child)
    base = tmp_path / "base.yaml"                                   # a typo in a base recipe names that file
    base.write_text(f"base: {DEMO}\ntrain:\n  epoch: 3\n")
    child.write_text("base: base.yaml\n")
    with pytest.raises(CxrltError, match=r"base.yaml: unknown key 'train.epoch'; did you mean train.epochs"):
        load_config(child)
    child.write_text(f"base: {DEMO}\npredict:\n  view_weights: {{AP_SUPINE: 4}}\n")   # an open mapping
    assert load_config(child).predict.view_weights["AP_SUPINE"] == 4


def test_every_shipped_recipe_loads():
    for path in (ROOT / "experiments").glob("*.yaml"):
        load_config(path)
    for lst in (ROOT / "experiments").glob("*.txt"):
        for name in [ln.strip() for ln in lst.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]:
            assert (ROOT / "experiments" / f"{name}.yaml").is_file(), (lst.name, name)


def test_precision_errors_name_their_key():
    from cxrlt.config import Config
    from cxrlt.runtime import precision_mode

    with pytest.raises(CxrltError, match="predict.precision must be no, fp16 or bf16, not 'fp8'"):
        precision_mode(Config(precision="fp8"), "predict.precision")
