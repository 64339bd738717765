"""Recipes: YAML files under experiments/, inheriting with `base:`, overridable from the command line.

    cfg = load_config("experiments/demo.yaml", ["train.lr=3e-4", "cache.size=256"])
    cfg.train.lr, cfg.out_dir

Every key a run can use is listed with its default in `defaults.yaml`; an override of a key that
is not there is refused (typos fail loudly), unless written `+key=value`.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path, write_yaml

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


class RecipeLoader(yaml.SafeLoader):
    """YAML as recipes are written: `1e-2` and `3e4` are numbers (YAML 1.2), where PyYAML's YAML 1.1
    rules read them as strings and a run would crash at its first step."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 (a SafeLoader subclass)


class Config(dict):
    """A dict whose keys can also be read as attributes, recursively."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for k, v in self.items():
            if isinstance(v, dict) and not isinstance(v, Config):
                super().__setitem__(k, Config(v))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}'") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = Config(value) if isinstance(value, dict) else value

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in self.items()}


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CxrltError(f"{path}: recipe not found")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise CxrltError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CxrltError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`, merging nested mappings; lists and scalars are replaced whole."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# Mappings whose keys are the user's (not listed in defaults.yaml): a recipe may add keys there.
OPEN_SECTIONS = {"predict.view_weights"}


def check_keys(data: dict, defaults: dict, source: str, prefix: str = "") -> None:
    """Refuse a key of a recipe file that defaults.yaml does not list (a typo would be silently ignored)."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            near = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=3)
            hint = f"; did you mean {', '.join(f'{prefix}{n}' for n in near)}?" if near else ""
            raise CxrltError(f"{source}: unknown key '{path}'{hint} (every key is listed in src/cxrlt/defaults.yaml)")
        if isinstance(value, dict) and isinstance(defaults[key], dict) and path not in OPEN_SECTIONS:
            check_keys(value, defaults[key], source, f"{path}.")


def _load_recipe(path: Path, seen: tuple = (), defaults: dict | None = None) -> dict:
    path = path.resolve()
    if path in seen:
        raise CxrltError(f"{path}: `base:` chain loops back on itself")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if defaults is not None:
        check_keys(data, defaults, display_path(path))
    if base is None:
        return data
    return deep_merge(_load_recipe(path.parent / base, seen + (path,), defaults), data)


def parse_value(text: str) -> Any:
    """A command-line value: YAML scalars and lists (`[a, b]`), plus numbers YAML 1.1 misses (`3e-4`)."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def apply_override(cfg: dict, item: str) -> None:
    if "=" not in item:
        raise CxrltError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    key, text = item.split("=", 1)
    add = key.startswith("+")
    key = key.lstrip("+").strip()
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part not in node:
            if not add:
                where = ".".join(parts[:i]) or "the top level"
                near = difflib.get_close_matches(part, [str(k) for k in node], n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise CxrltError(f"override '{item}': no key '{part}' under {where}{hint} (use +{key}=... to add one)")
            node[part] = {} if not last else None
        if last:
            node[part] = parse_value(text)
        else:
            if not isinstance(node[part], dict):
                raise CxrltError(f"override '{item}': '{'.'.join(parts[:i + 1])}' is a value, not a section")
            node = node[part]


# Keys that count things: whole numbers only. Every other key whose default is a number takes any number.
INTEGER_KEYS = {"seed", "cache.size", "cache.workers", "cache.max_image_pixels", "folds.k", "folds.seed", "train.epochs", "train.batch_size",
                "train.val_batch_size", "train.grad_accum", "train.workers", "train.log_every",
                "train.max_steps_per_epoch", "predict.batch_size", "predict.workers", "blend.fit_steps",
                "augment.mosaic_off_last_epochs", "loss.drw_epoch", "predict.bootstrap", "compare.bootstrap",
                "compare.seed", "model.decoder_dim", "model.decoder_heads", "model.decoder_layers", "stage2.epochs",
                "stage2.batch_size", "stage2.max_views", "stage2.dim", "stage2.layers", "stage2.heads", "stage2.grid",
                "stage2.batch_features", "stage2.workers", "train.full_epochs", "train.patience"}
# (low, high, low inclusive, high inclusive); None = unbounded
_PROB = (0, 1, True, True)
RANGES = {
    "cache.size": (8, None, True, None), "cache.workers": (0, None, True, None), "folds.k": (2, None, True, None),
    "train.epochs": (1, None, True, None), "train.batch_size": (1, None, True, None),
    "train.val_batch_size": (1, None, True, None), "train.lr": (0, None, False, None),
    "train.weight_decay": (0, None, True, None), "train.warmup_epochs": (0, None, True, None),
    "train.min_lr_ratio": _PROB, "train.grad_clip": (0, None, True, None), "train.grad_accum": (1, None, True, None),
    "train.ema_decay": (0, 1, True, False), "train.workers": (0, None, True, None), "train.log_every": (1, None, True, None),
    "train.max_steps_per_epoch": (1, None, True, None), "train.class_aware_t": (0, 1, False, True),
    "train.class_aware_cap": (1, None, True, None), "predict.batch_size": (1, None, True, None),
    "predict.workers": (0, None, True, None), "blend.fit_steps": (1, None, True, None),
    "predict.bootstrap": (0, None, True, None), "compare.bootstrap": (0, None, True, None),
    "loss.label_smoothing": (0, 1, True, False), "loss.drw_epoch": (0, None, True, None),
    "augment.mosaic_min_visible": _PROB, "augment.mosaic_off_last_epochs": (0, None, True, None),
    "augment.mixup_alpha": (0, None, False, None), "augment.balanced_mixup_alpha": (0, None, False, None),
    "model.drop_rate": (0, 1, True, False), "model.drop_path_rate": (0, 1, True, False),
    "model.decoder_dim": (1, None, True, None), "model.decoder_heads": (1, None, True, None),
    "model.decoder_layers": (1, None, True, None), "model.csra_lambda": (0, None, True, None),
    "train.full_epochs": (1, None, True, None), "train.patience": (1, None, True, None), "stage2.epochs": (1, None, True, None), "stage2.batch_size": (1, None, True, None), "stage2.lr": (0, None, False, None),
    "stage2.weight_decay": (0, None, True, None), "stage2.max_views": (1, None, True, None),
    "stage2.dim": (1, None, True, None), "stage2.layers": (1, None, True, None), "stage2.heads": (1, None, True, None),
    "stage2.grid": (1, None, True, None), "stage2.batch_features": (1, None, True, None), "stage2.workers": (0, None, True, None),
    **{f"augment.{k}": _PROB for k in ("hflip", "affine", "brightness_contrast", "dropout", "mosaic", "mixup",
                                        "cutmix", "balanced_mixup")},
}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_values(cfg: dict, defaults: dict, prefix: str = "") -> None:
    """Every value against its default's type and the documented range, before any work starts;
    whole numbers written as 3.0 become 3. One-line CxrltError naming the key and the value."""
    for key, default in defaults.items():
        path, value = f"{prefix}{key}", cfg.get(key)
        if isinstance(default, dict):
            if isinstance(value, dict) and path not in OPEN_SECTIONS:
                check_values(value, default, f"{path}.")
            continue
        if value is None or default is None and path not in INTEGER_KEYS | set(RANGES):
            continue
        if path in INTEGER_KEYS or _is_number(default):
            if not _is_number(value):
                kind = "a whole number" if path in INTEGER_KEYS else "a number"
                raise CxrltError(f"{path}={value!r}: must be {kind}")
            if path in INTEGER_KEYS:
                if float(value) != int(value):
                    raise CxrltError(f"{path}={value!r}: must be a whole number")
                cfg[key] = value = int(value)
        elif isinstance(default, bool) and not isinstance(value, bool):
            raise CxrltError(f"{path}={value!r}: must be true or false")
        if path in RANGES:
            lo, hi, lo_in, hi_in = RANGES[path]
            if (lo is not None and (value < lo or (value == lo and not lo_in))) or \
                    (hi is not None and (value > hi or (value == hi and not hi_in))):
                lo_s = "" if lo is None else f"{'>=' if lo_in else '>'} {lo}"
                hi_s = "" if hi is None else f"{'<=' if hi_in else '<'} {hi}"
                raise CxrltError(f"{path}={value!r}: must be {' and '.join(s for s in (lo_s, hi_s) if s)}")


def load_config(recipe: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- recipe (with its `base:` chain) <- command-line overrides, every value checked."""
    path = project_path(recipe)
    defaults = load_yaml(DEFAULTS_FILE.read_text())
    merged = deep_merge(defaults, _load_recipe(path, defaults=defaults))
    for item in overrides:
        apply_override(merged, item)
    check_values(merged, defaults)
    if not merged.get("name"):
        merged["name"] = path.stem
    cfg = Config(merged)
    cfg["recipe"] = str(path)
    cfg["overrides"] = list(overrides)
    return cfg


def rerun_hint(cfg: Config, script: str, *extra: str) -> str:
    """The command that redoes a stage for this recipe, with the user's own overrides carried."""
    from cxrlt.fileio import display_path

    parts = [f"src/{script}", "--config", display_path(cfg.recipe), *extra, *cfg.get("overrides", [])]
    return " ".join(p if p and not any(c in p for c in " '\"[]{}*$") else repr(p) for p in parts)


def save_resolved(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config (what actually ran) atomically."""
    return write_yaml(path, cfg.to_dict())
