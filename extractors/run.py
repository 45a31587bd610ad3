"""Extraction of a whole dataset as plain Python: plan shards, extract each shard, summarise.

``plan_shards`` splits the manifest into shards of videos and prepares each modality's feature
folder; ``extract_shard`` does one shard: it finds, per modality, the videos not yet done for the
same extractor-id *and the same content* (the rows' fingerprint must equal the video file's
fingerprint now; text is decided per caption, each row carrying its own caption digest, and only
changed or new captions are encoded: :mod:`extractors.textplan`), decodes each such video
ONCE in background threads (running ahead of the models) with the union of what the modalities
still need, streams the decoded windows to every modality (bounded memory per video), and writes
one store shard per modality.
``extract_dataset`` runs all shards in order and ends with :func:`finish_run` (debris removed and
superseded rows compacted away, when no other writer is busy). Both are plain functions on
picklable arguments, so a Prefect task (flows/extract.py) or a Dask worker can call
``extract_shard`` directly; models load once per process. Any number of runs may work on one
dataset at once (see data/store.py for the locking).

A video whose decoding killed an earlier process is recorded as ``failed`` without being decoded
again (:mod:`extractors.inprogress`).
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping

from data.fingerprint import caption_digests, current_fingerprints
from data.manifest import Manifest, ManifestError, VideoRecord, read_manifest, safe_video_path
from data.settings import Settings, get_settings
from data.store import RANDOM_WARNING, FeatureRow, FeatureSet
from data.progress import ProgressEvent, ProgressFn
from extractors.base import Extractor, VideoItem, push_video, resolve_device
from extractors.decode import DecodeError, DecodeOptions, DecodeRequest, stream_video
from extractors.inprogress import crash_error, dead_records, decoding, records_dir
from extractors.registry import DEFAULT_MODELS, MODALITIES, build_extractor
from extractors.textplan import CaptionPlan, plan_captions

log = logging.getLogger("tvr.extract")
Log = Callable[[str], None]


@dataclass
class ExtractConfig:
    """What to extract and how; plain values only, so it travels to tasks and workers.

    ``weights`` / ``models`` / ``batch_sizes``: per modality (``clip_text`` defaults to the
    ``clip_frames`` model and weights). ``options``: per-modality parameters, e.g.
    ``{"motion": {"size": 128, "fps": 15}, "clip_frames": {"fps": 1}}``. ``decode``,
    ``decode_threads``, ``decode_budget_s``, ``hwaccel``: see :class:`DecodeOptions` (``hwaccel``
    ``auto`` = NVDEC when the device is CUDA).
    """

    modalities: tuple[str, ...] = MODALITIES
    weights: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    decode_workers: int = 1
    prefetch: int = 4
    decode: str = "fast"
    decode_threads: int = 0
    decode_budget_s: float = 900.0
    hwaccel: str = "auto"

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities {unknown or '[]'}: choose from {', '.join(MODALITIES)}")

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], settings: Settings) -> "ExtractConfig":
        """The config from named values, e.g. a flow's parameters or the command line's options: a
        name that is not a field is ignored; a value None (or absent) takes the field's default, for
        ``seed`` and ``device`` the settings' (``$TVR_SEED``, ``$TVR_DEVICE``)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in parameters.items() if k in names and v is not None}
        return cls(**{"seed": settings.seed, "device": settings.device, **given})

    def model_for(self, modality: str) -> str:
        if modality == "clip_text" and modality not in self.models:
            return self.models.get("clip_frames", DEFAULT_MODELS[modality])
        return self.models.get(modality, DEFAULT_MODELS[modality])

    def weights_for(self, modality: str) -> str:
        if modality == "clip_text" and modality not in self.weights:
            return self.weights.get("clip_frames", "random")
        return self.weights.get(modality, "random")

    def build(self) -> list[Extractor]:
        """Fresh extractors (the models behind them are cached per process)."""
        return [build_extractor(m, self.model_for(m), self.weights_for(m), seed=self.seed, device=self.device,
                                precision=self.precision, batch_size=self.batch_sizes.get(m),
                                **self.options.get(m, {}))
                for m in self.modalities]

    def to_dict(self) -> dict:
        return asdict(self)

    def decode_options(self) -> DecodeOptions:
        """How this run decodes; decoder threads default to the cores shared by the decode workers."""
        hwaccel = self.hwaccel
        if hwaccel == "auto":
            hwaccel = "cuda" if resolve_device(self.device).type == "cuda" else "none"
        threads = self.decode_threads or max(1, (os.cpu_count() or 1) // max(1, self.decode_workers))
        return DecodeOptions(mode=self.decode, threads=threads, hwaccel=None if hwaccel == "none" else hwaccel,
                             budget_s=self.decode_budget_s)


@dataclass
class ModalityCounts:
    """Per-modality outcome (videos; ``clip_text`` counts videos too, not captions)."""

    modality: str
    extractor_id: str
    random_weights: bool
    done: int = 0       # encoded in this run, status ok
    empty: int = 0      # encoded in this run, nothing to encode (e.g. no audio stream)
    failed: int = 0     # recorded as failed in this run
    skipped: int = 0    # already done before this run
    kept: int = 0       # text: unchanged caption rows written again beside a video's re-encoded ones
    errors: list[str] = field(default_factory=list)  # first few error texts

    def add(self, other: "ModalityCounts") -> None:
        self.done += other.done
        self.empty += other.empty
        self.failed += other.failed
        self.skipped += other.skipped
        self.kept += other.kept
        self.errors = (self.errors + other.errors)[:5]


def load_manifest(dataset: str, settings: Settings) -> Manifest:
    return read_manifest(settings.manifest_path(dataset))


def plan_shards(dataset: str, config: ExtractConfig, *, shard_size: int | None = None,
                settings: Settings | None = None) -> list[list[str]]:
    """Video ids of each shard, in manifest order; prepares every modality's feature folder.

    Preparing tidies a folder (killed writers' debris, superseded rows) only when no other writer
    is busy in it, so it is safe to call while other runs of the same dataset are going on.
    """
    settings = settings or get_settings()
    ids = load_manifest(dataset, settings).video_ids
    size = shard_size or settings.shard_size
    if size < 1:
        raise ValueError(f"shard size {size}: must be at least 1")
    for ext in config.build():
        ext.feature_set(settings, dataset).prepare()
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def finish_run(dataset: str, counts: dict[str, "ModalityCounts"], settings: Settings | None = None) -> None:
    """End of a run: tidy each modality's folder (debris out, superseded rows compacted away) so
    the store at rest is plain Parquet; skipped where another writer is busy (the last one tidies)."""
    settings = settings or get_settings()
    for m, c in counts.items():
        folder = settings.feature_dir(dataset, m, c.extractor_id)
        if (folder / "_extractor.json").is_file():
            FeatureSet(folder).tidy()


def content_keys(fs: FeatureSet, manifest: Manifest, video_ids: list[str],
                 file_fingerprints: dict[str, str]) -> dict[str, str | tuple[str, ...]]:
    """``video_id -> fingerprint`` each stored row of ``fs`` must carry to count as done; for a set
    keyed by captions, the tuple of the video's caption digests (one per text row, in order)."""
    if fs.spec.keyed_by == "captions":
        captions = dict(zip(manifest.video_ids, manifest.table.column("captions").to_pylist()))
        return {v: caption_digests(captions[v]) for v in video_ids}
    return {v: file_fingerprints[v] for v in video_ids}


def merged_request(extractors: Iterable[Extractor]) -> DecodeRequest:
    """One decode request covering what every extractor needs."""
    request = DecodeRequest()
    for e in extractors:
        request = request.merge(e.request)
    return request


_END = object()


class _Handoff:
    """A bounded queue of one video's decode messages, from a decode thread to the consumer."""

    def __init__(self, size: int, where: str):
        self.where = where
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.cancelled = threading.Event()

    def put(self, message) -> bool:
        """Wait for room (False: the consumer gave the video up)."""
        while not self.cancelled.is_set():
            try:
                self.queue.put(message, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.cancelled.is_set():
                    raise DecodeError(f"{self.where}: decoding abandoned (the next video was asked for first)") from None

    def chunks(self):
        """The windows in order; re-raises the decoder's error; cancels the producer when left early."""
        try:
            while (message := self.get()) is not _END:
                if isinstance(message, DecodeError):
                    raise message
                yield message
        finally:
            self.cancelled.set()


def iter_decoded(jobs: Iterable[tuple[VideoRecord, DecodeRequest]], video_root, *, workers: int = 1,
                 prefetch: int = 4, window_queue: int = 2,
                 guard: Callable[[VideoRecord], ContextManager] | None = None) -> Iterator[VideoItem]:
    """Decode each job once in ``workers`` background threads, up to ``prefetch`` videos ahead.

    Yields :class:`VideoItem` in job order as soon as its file is open; ``item.chunks`` streams the
    decoded windows, each decoder waiting when ``window_queue`` windows are unread (so memory is
    about ``(prefetch + 1) * window_queue`` windows, whatever the videos' lengths). A file that cannot
    be opened (or a path that leaves the video root) gives ``item.error``; a :class:`DecodeError`
    later is raised from ``item.chunks``. Jobs with an empty request are not opened at all. Consume
    (or drop) items in order. ``guard(record)`` wraps each decode (the in-progress record of
    :func:`decoding`).
    """
    def work(record: VideoRecord, request: DecodeRequest, box: _Handoff) -> None:
        path = video_root / record.path
        try:
            path = safe_video_path(video_root, record.path)
            with guard(record) if guard else nullcontext():
                with stream_video(path, request) as stream:
                    if not box.put(stream.info):
                        return
                    for chunk in stream.chunks():
                        if not box.put(chunk):
                            return
            box.put(_END)
        except DecodeError as exc:
            box.put(exc)
        except ManifestError as exc:
            box.put(DecodeError(str(exc)))
        except Exception as exc:  # noqa: BLE001 - an unforeseen decoder failure is still one video's failure
            box.put(DecodeError(f"{path}: decoding failed ({exc.__class__.__name__}: {exc})"))

    def item(record: VideoRecord, request: DecodeRequest, box: _Handoff | None) -> VideoItem:
        if box is None:
            return VideoItem(record)
        first = box.get()
        if isinstance(first, DecodeError):
            return VideoItem(record, error=str(first))
        return VideoItem(record, first, chunks=box.chunks())

    ahead: deque = deque()
    current: list = []  # the box of the item last yielded: dropped when the next one is asked for

    def next_item() -> VideoItem:
        for box in current:
            box.cancelled.set()
        record, request, box = ahead.popleft()
        current[:] = [box] if box is not None else []
        return item(record, request, box)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        try:
            for record, request in jobs:
                box = None if request.empty else _Handoff(window_queue, str(video_root / record.path))
                if box is not None:
                    pool.submit(work, record, request, box)
                ahead.append((record, request, box))
                if len(ahead) > prefetch:
                    yield next_item()
            while ahead:
                yield next_item()
        finally:
            for box in current + [b for _, _, b in ahead if b is not None]:
                box.cancelled.set()


def extract_shard(dataset: str, video_ids: list[str], config: ExtractConfig | dict, *,
                  settings: Settings | None = None, progress: Log | None = None,
                  on_progress: ProgressFn | None = None) -> dict[str, ModalityCounts]:
    """Extract every requested modality for ``video_ids`` (one decode per video); write the shards.

    Videos already ``ok`` / ``empty`` for the same extractor-id and content fingerprint are skipped;
    a video that fails is recorded as ``failed`` with its error and the others go on; a video whose
    decoding process died earlier is recorded as failed without decoding it. ``on_progress`` gets an
    event per video (info: rows produced so far per modality). Returns counts per modality.
    """
    config = ExtractConfig(**config) if isinstance(config, dict) else config
    settings = settings or get_settings()
    say = progress or log.info
    manifest = load_manifest(dataset, settings)
    wanted_ids = set(video_ids)
    records = {r.video_id: r for r in manifest.records() if r.video_id in wanted_ids}
    missing = [v for v in video_ids if v not in records]
    if missing:
        raise KeyError(f"dataset {dataset!r}: videos not in the manifest: {missing[:5]}")
    extractors = config.build()
    sets = {e.modality: e.feature_set(settings, dataset) for e in extractors}
    counts = {e.modality: ModalityCounts(e.modality, e.extractor_id, e.spec.random_weights) for e in extractors}
    fingerprints = current_fingerprints(manifest, video_ids)
    keys = {e.modality: content_keys(sets[e.modality], manifest, video_ids, fingerprints) for e in extractors}
    todo: dict[str, set[str]] = {}
    plans: dict[str, CaptionPlan] = {}
    for e in extractors:
        if sets[e.modality].spec.keyed_by == "captions":
            plans[e.modality] = plan = plan_captions(sets[e.modality], keys[e.modality], records)
            todo[e.modality] = set(plan.encode)
            counts[e.modality].skipped = len(video_ids) - len(plan.redo)
        else:
            done = sets[e.modality].done_ids(keys[e.modality])
            todo[e.modality] = {v for v in video_ids if v not in done}
            counts[e.modality].skipped = len(video_ids) - len(todo[e.modality])
    rows: dict[str, list[FeatureRow]] = {e.modality: [] for e in extractors}
    in_progress = records_dir(dataset, settings)
    dead = dead_records(in_progress, video_ids)
    for vid, (info, _) in dead.items():
        say(f"{dataset}: video {vid!r}: {crash_error(records[vid], info)}")
        for e in extractors:
            if vid in todo[e.modality] and not e.request.empty:
                rows[e.modality] += e.failed_rows(VideoItem(records[vid]), crash_error(records[vid], info))
                todo[e.modality].discard(vid)
    jobs = []
    for vid in video_ids:
        wanted = [e for e in extractors if vid in todo[e.modality]]
        if wanted:
            jobs.append((records[vid], merged_request(wanted)))
    start, last_report = time.time(), time.time()
    jobs = [(record, replace(request, options=config.decode_options())) for record, request in jobs]
    for n, item in enumerate(iter_decoded(jobs, manifest.video_root, workers=config.decode_workers,
                                          prefetch=config.prefetch, guard=partial(decoding, in_progress)), 1):
        item.captions = {m: plan.encode[item.video_id] for m, plan in plans.items() if item.video_id in plan.encode}
        for modality, new in push_video([e for e in extractors if item.video_id in todo[e.modality]], item).items():
            rows[modality] += new
        if on_progress:
            on_progress(ProgressEvent(f"{dataset} shard", n, len(jobs), "video",
                                      {m: len(r) for m, r in rows.items()}))
        if time.time() - last_report > 10 or n == len(jobs):
            say(f"{dataset}: {n}/{len(jobs)} videos of this shard decoded and queued "
                f"({time.time() - start:.1f} s)")
            last_report = time.time()
    stamps = {"file": fingerprints, "captions": manifest.captions_digests()}
    for e in extractors:
        rows[e.modality] += e.flush()
        if e.modality in plans:
            rows[e.modality], counts[e.modality].kept = plans[e.modality].complete(rows[e.modality])
        for r in rows[e.modality]:
            if r.fingerprint is None:   # text rows carry their caption's digest; the video's otherwise
                r.fingerprint = stamps[e.spec.keyed_by][r.video_id]
        if rows[e.modality]:
            sets[e.modality].write_shard(rows[e.modality])
        _count(counts[e.modality], rows[e.modality])
    for _, files in dead.values():
        for path in files:
            path.unlink(missing_ok=True)   # its failure is stored now
    return counts


def _count(c: ModalityCounts, rows: list[FeatureRow]) -> None:
    """Per-video outcome of ``rows`` (a video fails if any of its rows failed)."""
    status: dict[str, str] = {}
    for r in rows:
        if status.get(r.video_id) != "failed":
            status[r.video_id] = r.status
        if r.status == "failed" and len(c.errors) < 5:
            c.errors.append(r.error)
    values = list(status.values())
    c.done += values.count("ok")
    c.empty += values.count("empty")
    c.failed += values.count("failed")


def extract_dataset(dataset: str, config: ExtractConfig | None = None, *, shard_size: int | None = None,
                    settings: Settings | None = None, progress: Log | None = None,
                    on_progress: ProgressFn | None = None) -> dict[str, ModalityCounts]:
    """Plan and extract every shard in this process; returns the summed counts per modality."""
    config = config or ExtractConfig()
    settings = settings or get_settings()
    say = progress or log.info
    shards = plan_shards(dataset, config, shard_size=shard_size, settings=settings)
    total: dict[str, ModalityCounts] = {}
    for k, ids in enumerate(shards, 1):
        result = extract_shard(dataset, ids, config, settings=settings, progress=say, on_progress=on_progress)
        merge_counts(total, result)
        if on_progress:
            on_progress(ProgressEvent(f"{dataset} shards", k, len(shards), "shard"))
        say(f"{dataset}: shard {k}/{len(shards)} finished: " + "; ".join(
            f"{m} {c.done} ok, {c.empty} empty, {c.failed} failed, {c.skipped} skipped" for m, c in result.items()))
    finish_run(dataset, total, settings)
    return total


def merge_counts(total: dict[str, ModalityCounts], part: dict[str, ModalityCounts]) -> None:
    for m, c in part.items():
        if m not in total:
            total[m] = ModalityCounts(m, c.extractor_id, c.random_weights)
        total[m].add(c)


def summary_lines(dataset: str, counts: dict[str, ModalityCounts]) -> list[str]:
    """Human summary; a loud RANDOM WEIGHTS line when any modality used random weights."""
    lines = [f"extraction of {dataset!r}:"]
    for m, c in counts.items():
        flag = "  [RANDOM WEIGHTS]" if c.random_weights else ""
        kept = f" (kept {c.kept} unchanged captions)" if c.kept else ""
        lines.append(f"  {m:<12} {c.extractor_id}  done {c.done}{kept}, empty {c.empty}, failed {c.failed}, "
                     f"skipped {c.skipped}{flag}")
        lines += [f"      error: {e}" for e in c.errors]
    randoms = [m for m, c in counts.items() if c.random_weights]
    if randoms:
        lines.append(f"!!! {RANDOM_WARNING} ({', '.join(randoms)}) !!!")
    return lines


def summary_markdown(dataset: str, counts: dict[str, ModalityCounts]) -> str:
    out = [f"# Extraction summary: `{dataset}`", ""]
    randoms = [m for m, c in counts.items() if c.random_weights]
    if randoms:
        out += [f"**{RANDOM_WARNING}** (modalities: {', '.join(randoms)})", ""]
    out += ["| modality | extractor-id | weights | done | empty | failed | skipped |", "|---|---|---|---|---|---|---|"]
    for m, c in counts.items():
        weights = "**RANDOM**" if c.random_weights else "pretrained"
        out.append(f"| {m} | `{c.extractor_id}` | {weights} | {c.done} | {c.empty} | {c.failed} | {c.skipped} |")
    errors = [(m, e) for m, c in counts.items() for e in c.errors]
    if errors:
        out += ["", "First errors:", ""] + [f"- {m}: {e}" for m, e in errors]
    return "\n".join(out) + "\n"


# ---- command line --------------------------------------------------------------------------------
def _pairs(text: str, what: str, cast=str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"{what}: expected MODALITY=VALUE, got {part!r}")
        key, value = part.split("=", 1)
        if key not in MODALITIES:
            raise argparse.ArgumentTypeError(f"{what}: unknown modality {key!r}")
        out[key] = cast(value)
    return out


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Extract features of a dataset (one decode per video feeds every modality).",
        epilog="Example: %(prog)s synthetic --modalities clip_frames,clip_text,audio "
               "--weights clip_frames=random,audio=/models/vggish.pth")
    p.add_argument("dataset", help="dataset name (its manifest: $TVR_HOME/datasets/<name>/manifest.parquet)")
    p.add_argument("--modalities", default=",".join(MODALITIES),
                   help=f"comma-separated subset of {','.join(MODALITIES)} (default: all)")
    p.add_argument("--weights", default="", type=lambda s: _pairs(s, "--weights"),
                   help="MODALITY=random|FILE|TAG, comma-separated (default random; clip_text follows clip_frames)")
    p.add_argument("--model", default="", type=lambda s: _pairs(s, "--model"),
                   help=f"MODALITY=NAME (defaults: {', '.join(f'{k}={v}' for k, v in DEFAULT_MODELS.items())})")
    p.add_argument("--batch-size", default="", type=lambda s: _pairs(s, "--batch-size", int),
                   help="MODALITY=N units per forward pass (frames, captions, windows, clips)")
    p.add_argument("--frame-fps", type=float, default=None, help="clip_frames sampling rate (default 1)")
    p.add_argument("--motion-fps", type=float, default=None, help="motion dense frame rate (default 15)")
    p.add_argument("--motion-size", type=int, default=None, help="motion crop side, multiple of 32 (default 128)")
    p.add_argument("--motion-clip-frames", type=int, default=None,
                   help="motion fast-pathway frames per clip, multiple of 4 (default 32)")
    p.add_argument("--seed", type=int, default=None, help="torch seed of random weights (default $TVR_SEED or 0)")
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp16", "fp32"],
                   help="auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--shard-size", type=int, default=None, help="videos per shard (default $TVR_SHARD_SIZE or 64)")
    p.add_argument("--decode-workers", type=int, default=1, help="background decode threads (default 1)")
    p.add_argument("--prefetch", type=int, default=4, help="videos decoded ahead of the models (default 4)")
    p.add_argument("--decode", default="fast", choices=["fast", "exact"],
                   help="fast: skip frames nothing refers to (same frames, fewer decoded); exact: decode every "
                        "frame in one thread (default fast)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="FFmpeg threads per decoder (default 0: cores / decode workers for >= 640x360)")
    p.add_argument("--decode-budget", type=float, default=900.0,
                   help="seconds of decoding allowed per video before it is recorded failed (default 900)")
    p.add_argument("--hwaccel", default="auto", choices=["auto", "none", "cuda"],
                   help="GPU decoding (NVDEC); auto = when the device is CUDA; falls back to the CPU with a log line")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


def config_from_args(args: argparse.Namespace, settings: Settings) -> ExtractConfig:
    options: dict[str, dict] = {}
    if args.frame_fps is not None:
        options["clip_frames"] = {"fps": args.frame_fps}
    motion = {k: v for k, v in (("fps", args.motion_fps), ("size", args.motion_size),
                                ("clip_frames", args.motion_clip_frames)) if v is not None}
    if motion:
        options["motion"] = motion
    return ExtractConfig.from_parameters(dict(
        modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()),
        weights=args.weights, models=args.model, batch_sizes=args.batch_size, options=options,
        seed=args.seed, device=args.device or None, precision=args.precision, decode_workers=args.decode_workers,
        prefetch=args.prefetch, decode=args.decode, decode_threads=args.decode_threads,
        decode_budget_s=args.decode_budget, hwaccel=args.hwaccel), settings)
