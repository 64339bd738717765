"""Recipes: YAML files under experiments/, inheriting with `base:`, overridable from the command line.

    cfg = load_config("experiments/demo.yaml", ["train.lr=3e-4", "cache.size=256"])
    cfg.train.lr, cfg.out_dir

Every key a run can use is declared in `schema.py` (type, range or choices, default, doc); a key
that is not there is refused with a suggestion, and every value is checked at load, so a typo fails
in a second instead of after hours of training. `+key=value` adds a key to an open mapping
(`+predict.view_weights.XA=3`).
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from cxrlt import schema
from cxrlt.errors import CxrltError
from cxrlt.fileio import display_path, project_path, write_yaml



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


def check_keys(data: dict, defaults: dict, source: str, prefix: str = "") -> None:
    """Refuse a key of a recipe file that the schema does not list (a typo would be silently ignored)."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in schema.REPLACED:
            raise CxrltError(f"{source}: {path} was replaced by {schema.REPLACED[path]}")
        if key not in defaults:
            near = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=3)
            hint = f"; did you mean {', '.join(f'{prefix}{n}' for n in near)}?" if near else ""
            raise CxrltError(f"{source}: unknown key '{path}'{hint} (every key is listed in docs/configuration.md)")
        if isinstance(value, dict) and isinstance(defaults[key], dict) and path not in schema.OPEN_MAPPINGS:
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
    """`key.sub=value` sets an existing key; `+mapping.key=value` adds a key to an open mapping
    (schema.OPEN_MAPPINGS, e.g. predict.view_weights); anything else unknown is refused with a hint."""
    if "=" not in item:
        raise CxrltError(f"override '{item}': expected key=value (e.g. train.lr=3e-4)")
    key, text = item.split("=", 1)
    add = key.startswith("+")
    key = key.lstrip("+").strip()
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        parent = ".".join(parts[:i])
        if part not in node:
            if key in schema.REPLACED:
                raise CxrltError(f"override '{item}': {key} was replaced by {schema.REPLACED[key]}")
            if not (add and last and parent in schema.OPEN_MAPPINGS):
                near = difflib.get_close_matches(part, [str(k) for k in node], n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                how = f" (use +{key}=... to add one)" if parent in schema.OPEN_MAPPINGS else ""
                raise CxrltError(f"override '{item}': no key '{part}' under {parent or 'the top level'}{hint}{how}")
            node[part] = None
        if last:
            node[part] = parse_value(text)
        else:
            if node[part] is None and add and ".".join(parts[:i + 1]) in schema.OPEN_MAPPINGS:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise CxrltError(f"override '{item}': '{'.'.join(parts[:i + 1])}' is a value, not a section")
            node = node[part]


def format_error(err: dict) -> str:
    """One pydantic error as our one line: `key=value: must be ...`, `key must be one of ..., not 'x'`."""
    path = ".".join(str(p) for p in err["loc"])
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if err["type"] == "extra_forbidden":
        return f"unknown key '{path}' (every key is listed in docs/configuration.md)"
    if err["type"] == "cxrlt":
        style = ctx.get("style")
        return f"{path} {ctx['text']}" if style == "choice" else f"{path}: {ctx['text']}" if style == "key" \
            else f"{path}={value!r}: {ctx['text']}"
    return f"{path}={value!r}: {err['msg'][0].lower()}{err['msg'][1:]}"


def validate(merged: dict) -> dict:
    """The merged recipe checked against the schema (every key, type, range and choice, then the rules
    between keys): the validated values as a plain dict, or a one-line CxrltError naming the key."""
    from pydantic import ValidationError

    try:
        out = schema.Recipe.model_validate(merged).model_dump(by_alias=True)
    except ValidationError as e:
        raise CxrltError(format_error(e.errors()[0])) from None
    problem = schema.cross_checks(out)
    if problem:
        raise CxrltError(problem)
    return out


def load_config(recipe: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Defaults <- recipe (with its `base:` chain) <- command-line overrides, every value checked."""
    path = project_path(recipe)
    defaults = schema.defaults()
    merged = deep_merge(defaults, _load_recipe(path, defaults=defaults))
    for item in overrides:
        apply_override(merged, item)
    merged = validate(merged)
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
