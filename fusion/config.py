"""Model configurations are data: ``fusion/configs/<name>.yaml`` over ``base.yaml``.

:func:`load_config` merges, in order: ``base.yaml``, the model's own file, an optional user file,
then ``key=value`` overrides (dotted keys reach nested tables, values parsed as YAML). The
registry of model names is the set of files in ``fusion/configs`` (``base.yaml`` excepted).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import yaml

CONFIG_DIR = Path(__file__).with_name("configs")


def model_names() -> list[str]:
    """Every model the factory can build."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


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


def load_config(name: str, file: str | Path | None = None, overrides: Iterable[str | dict] = ()) -> dict:
    """The full configuration of model ``name``; raises ValueError naming unknown models/keys."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    base = _read_yaml(CONFIG_DIR / "base.yaml")
    config = merge(base, _read_yaml(CONFIG_DIR / f"{name}.yaml"))
    known = set(config) | {"model"}
    extra = [] if file is None else [_read_yaml(Path(file))]
    extra += [parse_override(o) if isinstance(o, str) else o for o in overrides]
    for update in extra:
        unknown = sorted(set(update) - known)
        if unknown:
            where = file if update is extra[0] and file is not None else "override"
            raise ValueError(f"{where}: unknown option(s) {unknown} for model {name!r}; "
                             f"known: {', '.join(sorted(known))}")
        config = merge(config, update)
    if config.get("model", name) != name:
        raise ValueError(f"config names model {config['model']!r} but {name!r} was asked for")
    config["model"] = name
    return config
