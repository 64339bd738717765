"""Recipes: YAML files under experiments/, inheriting with `base:`, overridable from the command line.

    cfg = load_config("experiments/demo.yaml", ["train.lr=3e-4", "cache.size=256"])
    cfg.train.lr, cfg.out_dir

Every key a run can use is listed with its default in `defaults.yaml`; an override of a key that
is not there is refused (typos fail loudly), unless written `+key=value`.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml

from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path, write_yaml

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


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
        data = yaml.safe_load(path.read_text()) or {}
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
        value = yaml.safe_load(text)
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


def load_config(recipe: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- recipe (with its `base:` chain) <- command-line overrides."""
    path = project_path(recipe)
    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    merged = deep_merge(defaults, _load_recipe(path, defaults=defaults))
    for item in overrides:
        apply_override(merged, item)
    if not merged.get("name"):
        merged["name"] = path.stem
    cfg = Config(merged)
    cfg["recipe"] = str(path)
    return cfg


def save_resolved(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config (what actually ran) atomically."""
    return write_yaml(path, cfg.to_dict())
