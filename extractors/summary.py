"""What an extraction run did: per-modality counts, their sum over shards, and the summaries.

:class:`ModalityCounts` is what :func:`extractors.runner.extract_shard` returns per modality
(videos done / empty / failed / skipped / skipped as recorded failures); :func:`merge_counts` sums
shards; :func:`summary_lines` (terminal, logs) and :func:`summary_markdown` (the flow's artifact)
label random weights with :mod:`data.provenance`'s wording; :func:`systemic_failure` says when a
run must end as failed.

What a run's outcome means (the exit status of ``python -m flows.extract``, the state of the
``extract`` flow run, docs/extraction.md "Exit status"): a run is fine when every video is ok,
empty, skipped or a known failure (a failure recorded before, for the same content). It fails
only when the failure looks systemic: in some modality at least one video was attempted, every
attempted video failed and none of them was a known failure (a model that cannot run, a device
that is gone, a video folder that is not mounted). A broken file therefore fails at most the one
run that first meets it alone; later runs skip it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from data.provenance import random_weights_banner, random_weights_label
from data.store import FeatureRow


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
    known_failed: int = 0   # "skipped: recorded failure": failed before for the same content, not attempted
    retried: int = 0    # failed before for the same content and attempted again (--retry-failed, a crash record)
    kept: int = 0       # text: unchanged caption rows written again beside a video's re-encoded ones
    errors: list[str] = field(default_factory=list)  # first few error texts

    def add(self, other: "ModalityCounts") -> None:
        self.done += other.done
        self.empty += other.empty
        self.failed += other.failed
        self.skipped += other.skipped
        self.known_failed += other.known_failed
        self.retried += other.retried
        self.kept += other.kept
        self.errors = (self.errors + other.errors)[:5]

    def add_rows(self, rows: list[FeatureRow]) -> None:
        """Count the per-video outcome of ``rows`` (a video fails if any of its rows failed)."""
        status: dict[str, str] = {}
        for r in rows:
            if status.get(r.video_id) != "failed":
                status[r.video_id] = r.status
            if r.status == "failed" and len(self.errors) < 5:
                self.errors.append(r.error)
        values = list(status.values())
        self.done += values.count("ok")
        self.empty += values.count("empty")
        self.failed += values.count("failed")


def merge_counts(total: dict[str, ModalityCounts], part: dict[str, ModalityCounts]) -> None:
    """Add one shard's counts into ``total`` (in place)."""
    for m, c in part.items():
        if m not in total:
            total[m] = ModalityCounts(m, c.extractor_id, c.random_weights)
        total[m].add(c)


def systemic_failure(dataset: str, counts: dict[str, ModalityCounts]) -> str | None:
    """A message when the run must end as failed, else None: in some modality at least one video
    was attempted, every attempted video failed, and none of them was a known failure (see the
    module doc)."""
    bad = [m for m, c in counts.items() if c.failed and not (c.done or c.empty or c.retried)]
    if not bad:
        return None
    first = next((e for m in bad for e in counts[m].errors), "")
    return (f"{dataset}: every video failed in {', '.join(bad)}, none of them a known failure"
            + (f" (first error: {first})" if first else ""))


def summary_lines(dataset: str, counts: dict[str, ModalityCounts]) -> list[str]:
    """Human summary; a loud RANDOM WEIGHTS line when any modality used random weights."""
    lines = [f"extraction of {dataset!r}:"]
    for m, c in counts.items():
        flag = f"  [{random_weights_label(detail=False)}]" if c.random_weights else ""
        kept = f" (kept {c.kept} unchanged captions)" if c.kept else ""
        lines.append(f"  {m:<12} {c.extractor_id}  done {c.done}{kept}, empty {c.empty}, failed {c.failed}, "
                     f"skipped {c.skipped}, skipped: recorded failure {c.known_failed}{flag}")
        lines += [f"      error: {e}" for e in c.errors]
    if any(c.known_failed for c in counts.values()):
        lines.append("  (a recorded failure is retried when its file changes, or with --retry-failed)")
    randoms = [m for m, c in counts.items() if c.random_weights]
    if randoms:
        lines.append(random_weights_banner(f"{random_weights_label()} ({', '.join(randoms)})"))
    return lines


def summary_markdown(dataset: str, counts: dict[str, ModalityCounts]) -> str:
    """The summary as a markdown table (the extract flow's artifact)."""
    out = [f"# Extraction summary: `{dataset}`", ""]
    randoms = [m for m, c in counts.items() if c.random_weights]
    if randoms:
        out += [f"**{random_weights_label()}** (modalities: {', '.join(randoms)})", ""]
    out += ["| modality | extractor-id | weights | done | empty | failed | skipped | skipped: recorded failure |",
            "|---|---|---|---|---|---|---|---|"]
    for m, c in counts.items():
        weights = f"**{random_weights_label(detail=False)}**" if c.random_weights else "pretrained"
        out.append(f"| {m} | `{c.extractor_id}` | {weights} | {c.done} | {c.empty} | {c.failed} | {c.skipped} "
                   f"| {c.known_failed} |")
    errors = [(m, e) for m, c in counts.items() for e in c.errors]
    if errors:
        out += ["", "First errors:", ""] + [f"- {m}: {e}" for m, e in errors]
    return "\n".join(out) + "\n"
