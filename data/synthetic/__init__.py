"""synthetic-av: a generated video collection in which every modality matters.

Each video is a real MP4 (H.264 video, AAC audio at 16 kHz mono, or no audio stream at all) of
one large shape over a varied background. Its attributes:

============  =====================================================================
group         attribute: values
============  =====================================================================
visual        ``shape``: circle / square / triangle; ``colour``: 5 values;
              ``size``: small (~40% of the frame height) / large (~65%);
              ``texture``: plain / striped
motion        ``motion``: still / left / right / up / down, streaming across the frame at
              1.1-1.9 crossings per second and wrapping around (see :mod:`~data.synthetic.render`)
sound         ``sound``: low hum / high tone / buzz / beeping / noise bursts / silent
              (silent = a silent track or no audio stream at all)
============  =====================================================================

Every caption names every attribute, in 3-5 paraphrases per video. The test split uses full
attribute combinations never seen in training (compositional), no two test videos share one,
and half of the test videos come in near-duplicate pairs that differ in a single attribute.
Everything is deterministic from the seed.

CLI: ``python -m data.synthetic --n 300 --seed 0 --out DIR`` writes ``DIR/videos/*.mp4``,
``DIR/annotations.jsonl`` (the ``folder`` dataset format plus an ``attributes`` object) and
``DIR/oracle.json`` / ``DIR/oracle.md`` (the R@K ceilings of perfect attribute knowledge).

This package holds the dataset as a whole: :func:`generate` writes it, :func:`load_attributes` reads
the attributes back. Its parts: :mod:`~data.synthetic.scenes` (vocabulary, plan, captions),
:mod:`~data.synthetic.render` (frames, sound, MP4), :mod:`~data.synthetic.oracle` (ceilings),
:mod:`~data.synthetic.output` (the folder and its rendering processes) and :mod:`~data.synthetic.cli`
(the command line). The moment-retrieval set synthetic-events (:mod:`~data.synthetic.events`,
``--events``) strings such scenes together into segments of one video.
"""
from __future__ import annotations

import json
from pathlib import Path

from data.atomic import write_json_atomic, write_text_atomic
from data.synthetic.oracle import oracle_ceilings, oracle_markdown
from data.synthetic.output import claim_folder, render_missing
from data.synthetic.render import render_video
from data.synthetic.scenes import captions_for, plan_dataset


def generate(out_dir: str | Path, n: int = 300, seed: int = 0, workers: int | None = None,
             n_test: int | None = None, n_val: int | None = None, progress: bool = True) -> Path:
    """Render the dataset into ``out_dir``; videos already present (same plan) are kept.

    Returns the path of ``annotations.jsonl``.
    """
    out_dir = Path(out_dir)
    specs = plan_dataset(n, seed, n_test, n_val)
    claim_folder(out_dir, {"n": n, "seed": seed, "n_test": n_test, "n_val": n_val, "generator": 1})
    render_missing(render_video, specs, out_dir, workers, progress)
    lines = []
    for s in specs:
        rec = {"video_id": s.video_id, "video": s.filename, "captions": captions_for(s), "split": s.split,
               "duration_s": s.duration_s, "fps": s.fps, "width": s.width, "height": s.height,
               "has_audio": s.has_audio, "attributes": s.attributes}
        lines.append(json.dumps(rec))
    ann = out_dir / "annotations.jsonl"
    write_text_atomic(ann, "\n".join(lines) + "\n")
    test_attrs = [s.attributes for s in specs if s.split == "test"]
    table = oracle_ceilings(test_attrs)
    write_json_atomic(out_dir / "oracle.json", {"n_test": len(test_attrs), "t2v": table})
    write_text_atomic(out_dir / "oracle.md", oracle_markdown(table, len(test_attrs)))
    return ann


def load_attributes(annotations: str | Path) -> dict[str, dict]:
    """``video_id -> attributes`` from a synthetic ``annotations.jsonl``."""
    out = {}
    with open(annotations, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[rec["video_id"]] = rec["attributes"]
    return out
