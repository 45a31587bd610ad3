"""Model configurations are data: ``fusion/configs/<name>.yaml`` over ``base.yaml``.

:func:`load_config` merges, in order: ``base.yaml``, the model's own file, an optional user file,
then ``key=value`` overrides (dotted keys reach nested tables, values parsed as YAML), and
validates the result against the model's typed schema (:mod:`fusion.schema`): an unknown key at
any depth is an error naming it, the closest valid key and every valid key; a wrong type or an
out-of-range value is an error naming the option. Which names exist, and which schema each one
has, is the model registry's to say (:mod:`fusion.registry`); every registered name has its file here.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from fusion.registry import model_entry, model_names

CONFIG_DIR = Path(__file__).with_name("configs")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    return data


def merge(base: dict, update: dict) -> dict:
    """Deep merge: nested mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """``"train.epochs=3"`` -> ``{"train": {"epochs": 3}}``."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "5e-4" as a string
        except ValueError:
            pass
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


class ConfigError(ValueError):
    """An unknown key, a wrong type or an out-of-range value in a model configuration."""


def check_keys(update: dict, schema: type[BaseModel], where: str, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for the first key of ``update`` (at any depth) ``schema`` lacks."""
    for key, value in update.items():
        field = schema.model_fields.get(key)
        if field is None:
            valid = sorted(schema.model_fields)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
            table = f" in {prefix[:-1]!r}" if prefix else ""
            raise ConfigError(f"{where}: unknown option {prefix + str(key)!r}{hint}; valid keys{table}: "
                              f"{', '.join(valid)}")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            check_keys(value, sub, where, f"{prefix}{key}.")


def validate(config: dict, name: str) -> dict:
    """``config`` checked against the schema of model ``name``; returns the normalised dict."""
    try:
        return model_entry(name).schema.model_validate(config).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(f"option {'.'.join(str(p) for p in e['loc'])!r}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise ConfigError(f"model {name!r}: {problems}") from None


def load_config(name: str, file: str | Path | None = None, overrides: Iterable[str | dict] = ()) -> dict:
    """The full, validated configuration of model ``name``; raises :class:`ConfigError` (a
    ValueError) naming unknown models, unknown keys and bad values."""
    if name not in model_names():
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    base = _read_yaml(CONFIG_DIR / "base.yaml")
    config = merge(base, _read_yaml(CONFIG_DIR / f"{name}.yaml"))
    extra = [] if file is None else [(str(file), _read_yaml(Path(file)))]
    extra += [("override", parse_override(o) if isinstance(o, str) else o) for o in overrides]
    for where, update in extra:
        check_keys(update, model_entry(name).schema, where)
        config = merge(config, update)
    if config.get("model", name) != name:
        raise ConfigError(f"config names model {config['model']!r} but {name!r} was asked for")
    config["model"] = name
    return validate(config, name)
