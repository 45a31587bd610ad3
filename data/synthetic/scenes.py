"""What each synthetic-av video shows and says: the attribute vocabulary, the plan (attributes,
split, format and seed of every video, deterministic in the dataset seed) and the captions.

:func:`plan_dataset` returns one :class:`VideoSpec` per video; :mod:`data.synthetic.render` turns a
spec into frames and sound, :func:`captions_for` into its 3-5 paraphrased captions. Nothing here
touches the disk.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow", "magenta"),
    "size": ("small", "large"),
    "texture": ("plain", "striped"),
    "motion": ("still", "left", "right", "up", "down"),
    "sound": ("low", "high", "buzz", "beeping", "noise", "silent"),
}
GROUPS = {
    "visual": ("shape", "colour", "size", "texture"),
    "motion": ("motion",),
    "sound": ("sound",),
}
# Paraphrase vocabulary: each attribute value has several surface forms.
WORDS = {
    "shape": {"circle": ["circle", "disc", "round disc"], "square": ["square", "box", "square block"],
              "triangle": ["triangle", "triangular shape", "triangle"]},
    "size": {"small": ["small", "little", "smaller"], "large": ["large", "big", "huge"]},
    "texture": {"plain": ["plain", "solid", "uniform"], "striped": ["striped", "stripy", "banded"]},
    "motion": {"still": ["stays still", "does not move", "rests in place"],
               "left": ["moves to the left", "slides leftwards", "travels left"],
               "right": ["moves to the right", "slides rightwards", "travels right"],
               "up": ["moves up", "rises upwards", "travels upward"],
               "down": ["moves down", "falls downwards", "sinks down"]},
    "sound": {"low": ["a low hum", "a deep low tone", "a low droning sound"],
              "high": ["a high-pitched tone", "a high whistle", "a shrill high tone"],
              "buzz": ["a harsh buzz", "a buzzing sound", "a rough buzzing noise"],
              "beeping": ["rhythmic beeping", "fast repeated beeps", "a beeping pattern"],
              "noise": ["bursts of static noise", "crackling noise bursts", "pulses of hiss"],
              "silent": ["no sound at all", "complete silence", "nothing audible"]},
}
TEMPLATES = [
    "a {size} {texture} {colour} {shape} {motion} with {sound}",
    "there is a {colour} {shape}, {size} and {texture}, that {motion} while you hear {sound}",
    "{sound} plays as a {size} {colour} {shape} with a {texture} look {motion}",
    "a {texture} {colour} {shape} of {size} size {motion}; the audio is {sound}",
    "video of a {size} {colour} {texture} {shape} that {motion}, with {sound} in the background",
]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video deterministically."""

    video_id: str
    index: int
    split: str
    attributes: dict
    duration_s: float
    fps: int
    width: int
    height: int
    has_audio: bool
    seed: int

    @property
    def filename(self) -> str:
        return f"videos/{self.video_id}.mp4"



# ---------------------------------------------------------------------------------------------
# Planning: attribute combinations and splits
# ---------------------------------------------------------------------------------------------
def _combo_dict(combo: tuple) -> dict:
    return dict(zip(ATTRIBUTES, combo))


def split_sizes(n: int, n_test: int | None = None, n_val: int | None = None) -> tuple[int, int, int]:
    """``(train, val, test)`` video counts: test ``min(100, n/4)`` and val ``n/10`` (at least 1)
    unless given; :class:`ValueError` when nothing would be left to train on."""
    n_test = min(100, n // 4) if n_test is None else n_test
    n_val = max(1, n // 10) if n_val is None else n_val
    if n_test + n_val >= n:
        raise ValueError(f"n={n} too small for {n_test} test and {n_val} val videos")
    return n - n_test - n_val, n_val, n_test


def compositional_test_combos(rng: np.random.Generator, n_test: int) -> list[tuple]:
    """``n_test`` distinct full attribute combinations (tuples in :data:`ATTRIBUTES` order) for a
    compositional test split; up to half of them come in near-duplicate pairs (consecutive in the
    list) that differ in exactly one attribute."""
    all_combos = list(itertools.product(*ATTRIBUTES.values()))
    names = list(ATTRIBUTES)
    test: list[tuple] = []
    chosen: set[tuple] = set()
    while len(test) < n_test:
        base = all_combos[rng.integers(len(all_combos))]
        if base in chosen:
            continue
        test.append(base)
        chosen.add(base)
        if len(test) < n_test and len(test) <= n_test // 2:
            attr = names[rng.integers(len(names))]
            k = names.index(attr)
            others = [v for v in ATTRIBUTES[attr] if v != base[k]]
            twin = base[:k] + (others[rng.integers(len(others))],) + base[k + 1:]
            if twin not in chosen:
                test.append(twin)
                chosen.add(twin)
    return test


def plan_dataset(n: int, seed: int, n_test: int | None = None, n_val: int | None = None) -> list[VideoSpec]:
    """Choose attributes, splits and formats for ``n`` videos (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 1])
    n_train, n_val, n_test = split_sizes(n, n_test, n_val)
    all_combos = list(itertools.product(*ATTRIBUTES.values()))
    # Test: half near-duplicate pairs (differ in exactly one attribute), all combinations distinct.
    test = compositional_test_combos(rng, n_test)
    chosen = set(test)
    pool = [c for c in all_combos if c not in chosen]
    rest = [pool[i] for i in rng.integers(len(pool), size=n_train + n_val)]
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    combos = rest + test
    order = rng.permutation(n)  # interleave splits so ids carry no split information
    specs = []
    for vid_idx, j in enumerate(order):
        combo, split = combos[j], splits[j]
        attrs = _combo_dict(combo)
        fmt = rng.random()
        if fmt < 0.08:
            fps, (w, h) = 15, (176, 144)
        elif fmt < 0.16:
            fps, (w, h) = 30, (480, 360)
        else:
            fps, (w, h) = 25, (320, 240)
        duration = float(np.round(rng.uniform(2.0, 6.0) * 2) / 2)
        has_audio = not (attrs["sound"] == "silent" and rng.random() < 0.5)
        specs.append(VideoSpec(f"syn{vid_idx:05d}", vid_idx, split, attrs, duration, fps, w, h,
                               has_audio, int(rng.integers(2**31))))
    return specs


def captions_for(spec: VideoSpec) -> list[str]:
    """3-5 paraphrased captions, each naming every attribute."""
    rng = np.random.default_rng([spec.seed, 2])
    k = int(rng.integers(3, 6))
    templates = rng.permutation(len(TEMPLATES))[:k]
    caps = []
    for t in templates:
        words = {a: WORDS[a][v][rng.integers(len(WORDS[a][v]))] for a, v in spec.attributes.items() if a in WORDS}
        words["colour"] = spec.attributes["colour"]
        caps.append(TEMPLATES[t].format(**words))
    return caps
