"""A trained model as a self-contained bundle: ``python -m fusion.export --run R --out DIR``.

The bundle needs no feature store and no run folder; :func:`fusion.api.load_model` (and so
``fusion.api.encode_queries``, ``retrieval.search`` and the search service) loads it when given
its folder. Layout::

    DIR/
        bundle.json          format, model name, config, input width, dataset, extractor ids,
                             random-weights flag, the clip_text extractor description (the text
                             tower's spec), the tokenizer name, and the sha256 of every file below
        model.safetensors    the fusion model's weights (the run's best.pt)
        text_tower/          only what the text tower's spec points at: a local open_clip model
                             folder (``local-dir:``) and / or its weights file, copied

Text tower weights: ``random`` ones are rebuilt from the recorded seed (a reference, no file); a
local file is copied into ``text_tower/`` and checked against its recorded sha256; an open_clip
pretrained tag stays a reference (the loading machine needs it in its cache). Loading checks every
checksum and refuses a bundle whose files changed. Written to a temporary folder and renamed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from safetensors.torch import load_model as load_safetensors, save_model as save_safetensors

from data.atomic import write_json_atomic
from data.fingerprint import sha256_file
from data.cli import add_version, version
from data.settings import Settings, get_settings
from fusion.data import TEXT, pick_extractor
from fusion.factory import build_model

FORMAT = "tvr-model-bundle/1"
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "model.safetensors"
TOWER_DIR = "text_tower"
LOCAL_DIR = "local-dir:"


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message says which file and why."""


def _portable_tower(params: dict, tmp: Path) -> dict:
    """Copy what the text tower's spec points at into ``tmp/text_tower``; paths become relative."""
    params = dict(params)
    if params["model"].startswith(LOCAL_DIR):
        src = Path(params["model"][len(LOCAL_DIR):])
        shutil.copytree(src, tmp / TOWER_DIR / "model")
        params["model"] = f"{LOCAL_DIR}{TOWER_DIR}/model"
    if params.get("weights_sha256"):
        src = Path(params["weights"])
        (tmp / TOWER_DIR).mkdir(exist_ok=True)
        shutil.copy2(src, tmp / TOWER_DIR / f"weights{src.suffix}")
        params["weights"] = f"{TOWER_DIR}/weights{src.suffix}"
    return params


def _resolved_tower(params: dict, folder: Path) -> dict:
    """The inverse of :func:`_portable_tower` for a bundle at ``folder``."""
    params = dict(params)
    if params["model"].startswith(f"{LOCAL_DIR}{TOWER_DIR}/"):
        params["model"] = LOCAL_DIR + str(folder / params["model"][len(LOCAL_DIR):])
    if params.get("weights_sha256"):
        params["weights"] = str(folder / params["weights"])
    return params


def export_bundle(run: str | Path, out: str | Path, *, settings: Settings | None = None) -> Path:
    """Write the bundle of the trained run ``run`` (folder or id under ``runs/``) to ``out``."""
    from fusion.api import load_model

    settings = settings or get_settings()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty folder; choose another --out")
    loaded = load_model(run, settings=settings)
    if loaded.run_dir is None:
        raise BundleError("the zero-shot model has no run folder; train it first "
                          "(python -m fusion.train --model zero-shot ...) and export that run")
    meta = json.loads((loaded.run_dir / "config.json").read_text())
    text = pick_extractor(settings, loaded.dataset, TEXT, loaded.extractor_ids.get(TEXT))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_safetensors(loaded.model.cpu(), str(tmp / WEIGHTS_FILE))
        text = {**text, "params": _portable_tower(text["params"], tmp)}
        files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        write_json_atomic(tmp / BUNDLE_FILE, {
            "format": FORMAT, "run_id": loaded.run_dir.name, "model": loaded.name, "config": loaded.config,
            "width": int(meta["width"]), "dataset": loaded.dataset, "extractor_ids": loaded.extractor_ids,
            "random_weights": loaded.random_weights, "fine_grained": loaded.fine_grained,
            "text_extractor": text, "tokenizer": {"open_clip": text["params"]["model"],
                                                  "context_length": text["params"].get("context_length")},
            "files": files, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tvr_version": version(), **({"WARNING": meta["WARNING"]} if meta.get("WARNING") else {})})
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_bundle(folder: str | Path) -> bool:
    return (Path(folder) / BUNDLE_FILE).is_file()


def load_bundle(folder: str | Path):
    """A :class:`fusion.api.LoadedModel` from a bundle folder (checksums verified)."""
    from fusion.api import LoadedModel

    folder = Path(folder).resolve()
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
    return LoadedModel(model.eval(), meta["model"], meta["config"], folder, meta["dataset"],
                       dict(meta["extractor_ids"]), bool(meta["random_weights"]), bool(meta["fine_grained"]),
                       text_extractor=text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder or run id under $TVR_HOME/runs")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create (must not exist or be empty)")
    add_version(p)
    args = p.parse_args(argv)
    try:
        folder = export_bundle(args.run, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    meta = json.loads((folder / BUNDLE_FILE).read_text())
    print(f"bundle {folder}: {meta['model']} from run {meta['run_id']}, {len(meta['files'])} files")
    if meta["random_weights"]:
        print("!!! RANDOM WEIGHTS: the features this model was trained on come from random extractors !!!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
