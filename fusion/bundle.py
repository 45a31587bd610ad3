"""Reading an exported model bundle (the format :mod:`fusion.export` writes; its docstring, the
``python -m fusion.export --help`` text, shows the layout): ``bundle.json`` + ``model.safetensors``
+ ``text_tower/``, every file checked against the sha256 recorded at export.

:func:`load_bundle` rebuilds the :class:`~fusion.loaded.LoadedModel` on ``device`` (default
``$TVR_DEVICE``, like every other model load, :func:`data.devices.resolve_device`); no feature store
and no run folder are needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors

from data.devices import resolve_device
from data.fingerprint import sha256_file
from fusion.factory import build_model
from fusion.loaded import LoadedModel

FORMAT = "tvr-model-bundle/1"
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
TOWER_DIR = "text_tower"
LOCAL_DIR = "local-dir:"


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message says which file and why."""


def is_bundle(folder: str | Path) -> bool:
    return (Path(folder) / BUNDLE_FILE).is_file()


def _resolved_tower(params: dict, folder: Path) -> dict:
    """The text tower's spec with the bundle-relative paths (``text_tower/...``) made absolute."""
    params = dict(params)
    if params["model"].startswith(f"{LOCAL_DIR}{TOWER_DIR}/"):
        params["model"] = LOCAL_DIR + str(folder / params["model"][len(LOCAL_DIR):])
    if params.get("weights_sha256"):
        params["weights"] = str(folder / params["weights"])
    return params


def load_bundle(folder: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """A :class:`LoadedModel` from a bundle folder (checksums verified), its model on ``device``
    (None: ``$TVR_DEVICE``, default ``auto``)."""
    folder = Path(folder).resolve()
    target = resolve_device(device)
    try:
        meta = json.loads((folder / BUNDLE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{folder / BUNDLE_FILE}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{folder}: bundle format {meta.get('format')!r}, this code reads {FORMAT!r}")
    for name, digest in meta["files"].items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BundleError(f"{path}: missing or changed since export (sha256 differs from bundle.json)")
    model = build_model(meta["config"], int(meta["width"]))
    missing, unexpected = load_safetensors(model, str(folder / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise BundleError(f"{folder / WEIGHTS_FILE}: weights do not fit the model (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    text = meta["text_extractor"]
    text = {**text, "params": _resolved_tower(text["params"], folder)}
    return LoadedModel(model.eval().to(target), meta["model"], meta["config"], folder, meta["dataset"],
                       dict(meta["extractor_ids"]), bool(meta["random_weights"]), bool(meta["fine_grained"]),
                       text_extractor=text)
