"""Peak memory of HCMI's exact scoring (``score_matrix``) at ActivityNet size.

    python -m bench.hcmi_memory [--videos 4917] [--queries 256] [--frames 64] [--words 64] [--dim 512]

Random unit encodings stand in for a trained model's (the scoring does the same work whatever the
values): ``--videos`` videos of ``--frames`` frame tokens and 8 clips, ``--queries`` paragraphs of
``--words`` tokens and 16 phrases. ``score_matrix`` scores queries in chunks of 256 against every
video, so the peak of one chunk is the peak of the full ``4917 x 4917`` scoring (each chunk is the
same computation); the time is that of the queries given. Prints the peak resident memory (MB).
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from fusion.config import load_config
from fusion.encoding import score_matrix
from fusion.factory import build_model


def unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hcmi_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=4917)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--words", type=int, default=64)
    p.add_argument("--dim", type=int, default=512)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    config = load_config("hcmi", overrides=[{"max_frames": args.frames, "max_words": args.words}])
    model = build_model(config, args.dim)
    v, q, n_clips, n_phrases = args.videos, args.queries, model.n_clips, args.words // 4
    video = {"vector": unit(v, args.dim), "frames": unit(v, args.frames, args.dim),
             "frame_mask": torch.ones(v, args.frames, dtype=torch.bool), "clips": unit(v, n_clips, args.dim),
             "clip_mask": torch.ones(v, n_clips, dtype=torch.bool)}
    text = {"vector": unit(q, args.dim), "words": unit(q, args.words, args.dim),
            "word_mask": torch.ones(q, args.words, dtype=torch.bool), "phrases": unit(q, n_phrases, args.dim),
            "phrase_mask": torch.ones(q, n_phrases, dtype=torch.bool)}
    inputs_mb = sum(t.numel() * t.element_size() for t in (*video.values(), *text.values())) / 2**20
    start = time.perf_counter()
    scores = score_matrix(model, text, video)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"HCMI exact scores {scores.shape[0]:,} x {scores.shape[1]:,} ({args.frames} frames, {args.words} words, "
          f"dim {args.dim}): {seconds:.1f} s, peak resident memory {peak:.0f} MB "
          f"(encodings held: {inputs_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
