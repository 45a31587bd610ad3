"""A trained model as a self-contained bundle: ``python -m fusion.export --run R --out DIR``.

The bundle needs no feature store and no run folder; :func:`fusion.api.load_model` (and so
``fusion.api.encode_queries``, ``retrieval.search`` and the search service) loads it when given
its folder (the reading side is :mod:`fusion.bundle`). Layout::

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
checksum and refuses a bundle whose files changed. Written to a temporary folder, fsynced (every
file and folder), renamed and the parent folder fsynced (:func:`data.atomic.replace_durably`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from safetensors.torch import save_model as save_safetensors

from data.atomic import replace_durably, write_json_atomic
from data.cli import add_version, guarded, version
from data.fingerprint import sha256_file
from data.modalities import CLIP_TEXT
from data.provenance import random_weights_banner
from data.settings import Settings, get_settings
from fusion.api import load_model
from fusion.bundle import BUNDLE_FILE, FORMAT, LOCAL_DIR, TOWER_DIR, WEIGHTS_FILE, BundleError
from fusion.features import pick_extractor


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


def export_bundle(run: str | Path, out: str | Path, *, settings: Settings | None = None) -> Path:
    """Write the bundle of the trained run ``run`` (folder or id under ``runs/``) to ``out``."""
    settings = settings or get_settings()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out}: exists and is not an empty folder; choose another --out")
    loaded = load_model(run, settings=settings)
    if loaded.run_dir is None:
        raise BundleError("the zero-shot model has no run folder; train it first "
                          "(python -m fusion.train --model zero-shot ...) and export that run")
    meta = json.loads((loaded.run_dir / "config.json").read_text())
    text = pick_extractor(settings, loaded.dataset, CLIP_TEXT, loaded.extractor_ids.get(CLIP_TEXT))
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
        replace_durably(tmp, out)   # every file and folder fsynced, renamed, the parent fsynced
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@guarded(FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="run folder or run id under $TVR_HOME/runs")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create (must not exist or be empty)")
    add_version(p)
    args = p.parse_args(argv)
    folder = export_bundle(args.run, args.out)
    meta = json.loads((folder / BUNDLE_FILE).read_text())
    print(f"bundle {folder}: {meta['model']} from run {meta['run_id']}, {len(meta['files'])} files")
    if meta["random_weights"]:
        print(random_weights_banner())
    return 0


if __name__ == "__main__":
    sys.exit(main())
