"""Linear probe: how well a synthetic attribute can be read from one stored feature modality.

    python -m bench.probe [--dataset synthetic] [--attribute motion] [--modality motion] [--summary mean]

Each video becomes one vector: the ``mean`` of its rows, ``last-first`` (last row minus first) or
``first+last`` (both, concatenated); unit-normalised. A ridge classifier (one-hot targets) is fitted
on the train videos, its ridge strength chosen on val, and its accuracy is printed on the test videos
(attribute combinations never seen in training) beside chance (the most common test class). It
answers "is the information in the features at all", before any model is trained; e.g. whether
frames sampled once per second reveal the motion direction (they should not on synthetic-av).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from data.manifest import read_manifest
from data.modalities import MOTION
from data.settings import get_settings
from data.store import FeatureSet
from data.synthetic import load_attributes
from fusion.features import pick_extractor

SUMMARIES = {
    "mean": lambda rows: rows.mean(0),
    "last-first": lambda rows: rows[-1] - rows[0],
    "first+last": lambda rows: np.concatenate([rows[0], rows[-1]]),
}
RIDGE = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def video_vectors(dataset: str, modality: str, summary: str, settings=None) -> dict[str, np.ndarray]:
    """``{video_id: [D] or [2D]}`` unit vectors for videos with at least one ok row."""
    settings = settings or get_settings()
    info = pick_extractor(settings, dataset, modality)
    table = FeatureSet(settings.feature_dir(dataset, modality, info["extractor_id"])).read()
    out = {}
    for i, vid in enumerate(table.video_ids):
        if table.status[i] == "ok" and table.lengths[i] > 0:
            v = SUMMARIES[summary](np.asarray(table.row(i), np.float64))
            out[vid] = v / max(np.linalg.norm(v), 1e-12)
    return out


def ridge_probe(x: dict[str, np.ndarray], labels: dict[str, str], splits: dict[str, str]) -> dict:
    """Fit on train, pick the ridge strength on val, score on test."""
    classes = sorted(set(labels.values()))
    part = {s: [v for v in x if splits.get(v) == s and v in labels] for s in ("train", "val", "test")}
    if not all(part.values()):
        raise ValueError(f"probe needs train, val and test videos; found {({k: len(v) for k, v in part.items()})}")
    xs = {s: np.stack([x[v] for v in ids]) for s, ids in part.items()}
    ys = {s: np.array([classes.index(labels[v]) for v in ids]) for s, ids in part.items()}
    a, y_onehot = xs["train"], np.eye(len(classes))[ys["train"]]
    best = None
    for lam in RIDGE:
        w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y_onehot)
        val = float(((xs["val"] @ w).argmax(1) == ys["val"]).mean())
        if best is None or val > best[0]:
            best = (val, lam, w)
    _, lam, w = best
    test = float(((xs["test"] @ w).argmax(1) == ys["test"]).mean())
    chance = float(np.bincount(ys["test"], minlength=len(classes)).max() / len(ys["test"]))
    return {"test_accuracy": 100 * test, "chance": 100 * chance, "ridge": lam,
            "n": {s: len(ids) for s, ids in part.items()}, "classes": classes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="synthetic", help="a dataset with annotations.jsonl attributes")
    p.add_argument("--attribute", default="motion", help="attribute to read (shape, colour, size, texture, motion, sound)")
    p.add_argument("--modality", default=MOTION, help="clip_frames, audio or motion")
    p.add_argument("--summary", choices=sorted(SUMMARIES), default="mean")
    args = p.parse_args(argv)
    settings = get_settings()
    try:
        attrs = load_attributes(settings.dataset_dir(args.dataset) / "annotations.jsonl")
        labels = {v: a[args.attribute] for v, a in attrs.items() if args.attribute in a}
        if not labels:
            raise ValueError(f"no video of {args.dataset!r} has the attribute {args.attribute!r}")
        manifest = read_manifest(settings.manifest_path(args.dataset))
        splits = dict(zip(manifest.video_ids, manifest.table.column("split").to_pylist()))
        result = ridge_probe(video_vectors(args.dataset, args.modality, args.summary, settings), labels, splits)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = result["n"]
    print(f"{args.attribute} from {args.modality} ({args.summary}): test accuracy {result['test_accuracy']:.1f}% "
          f"(chance {result['chance']:.1f}%; ridge {result['ridge']:g}; train/val/test videos "
          f"{n['train']}/{n['val']}/{n['test']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
