"""Property-based tests (Hypothesis): arbitrary input never crashes the readers and validators with
anything but their documented error, and the feature store behaves like a dict of newest rows."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from html.parser import HTMLParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from data.folder import read_records
from data.manifest import ManifestError, VideoRecord, build_manifest, read_manifest, safe_video_path, write_manifest
from data.names import InvalidName, check_name
from data.store import ExtractorSpec, FeatureRow, FeatureSet

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# text that likes path trouble: separators, dots, NUL, newlines, surrogates, backslashes, colons
TRICKY = st.lists(st.sampled_from(list("ab./\\:\x00\n ~") + ["..", "\ud800", "é", "out", "/etc", "sub/up/"]),
                  max_size=6).map("".join)
TEXT = st.one_of(st.text(max_size=20), TRICKY)


@FAST
@given(value=st.one_of(TEXT, st.integers(), st.none(), st.binary(max_size=5)))
def test_check_name_accepts_only_one_safe_path_part(value):
    try:
        name = check_name(value, "dataset name")
    except InvalidName as err:
        assert "dataset name" in str(err)
        return
    root = Path("/srv/root")
    assert (root / name).parent == root and name not in (".", "..") and "\x00" not in name
    assert len(Path(name).parts) == 1


@pytest.fixture(scope="module")
def video_root():
    """A videos folder holding a file, a sub-folder and a symlink pointing outside it."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        (root / "sub").mkdir(parents=True)
        (root / "a.mp4").write_bytes(b"x")
        (Path(tmp) / "secret.mp4").write_bytes(b"s")
        os.symlink(Path(tmp) / "secret.mp4", root / "out")
        os.symlink(Path(tmp), root / "sub" / "up")
        yield root


@FAST
@given(relative=TEXT)
def test_video_paths_never_leave_the_root(video_root, relative):
    try:
        path = safe_video_path(video_root, relative)
    except ManifestError:
        return
    real = Path(os.path.realpath(path))
    assert real == video_root.resolve() or video_root.resolve() in real.parents


def test_symlink_out_of_the_root_is_refused_clearly(video_root):
    with pytest.raises(ManifestError, match="outside the video root"):
        safe_video_path(video_root, "out")
    with pytest.raises(ManifestError, match="outside the video root"):
        safe_video_path(video_root, "sub/up/secret.mp4")
    with pytest.raises(ManifestError, match="absolute"):
        safe_video_path(video_root, "/etc/passwd")
    assert safe_video_path(video_root, "a.mp4") == video_root.resolve() / "a.mp4"


RECORD = st.builds(VideoRecord, video_id=TEXT, path=TEXT, split=TEXT,
                   captions=st.lists(TEXT, max_size=3), duration_s=st.one_of(st.none(), st.floats()))


@FAST
@given(records=st.lists(RECORD, max_size=4))
def test_manifest_builder_round_trips_or_refuses(video_root, records):
    try:
        table, report = build_manifest(records, video_root, dataset="d")
    except ManifestError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        back = read_manifest(write_manifest(table, Path(tmp) / "manifest.parquet"))
    assert back.video_ids == [r.video_id for r in records]
    assert len(report.missing) <= len(records)


@FAST
@given(data=st.binary(max_size=300))
def test_manifest_reader_refuses_garbage_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        path.write_bytes(data)
        with pytest.raises(ManifestError):
            read_manifest(path)


@FAST
@given(ids=st.lists(st.one_of(TEXT, st.none()), min_size=1, max_size=3), paths=st.lists(st.one_of(TEXT, st.none()), min_size=3, max_size=3),
       captions=st.lists(st.one_of(st.none(), st.lists(st.one_of(TEXT, st.none()), max_size=2)), min_size=3, max_size=3))
def test_manifest_reader_validates_hand_edited_rows(ids, paths, captions):
    """A manifest written by anything (e.g. a hand edit): the reader's checks hold or it refuses."""
    n = len(ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.parquet"
        try:
            table = pa.table({"video_id": pa.array(ids, pa.string()), "path": pa.array(paths[:n], pa.string()),
                              "split": pa.array(["train"] * n), "duration_s": pa.array([None] * n, pa.float64()),
                              "captions": pa.array(captions[:n], pa.list_(pa.string()))})
            pq.write_table(table, path)
        except (UnicodeEncodeError, pa.ArrowException):
            return  # not writable as Parquet: nothing to read
        try:
            manifest = read_manifest(path)
        except ManifestError:
            return
    for vid, rel, caps in zip(manifest.video_ids, manifest.table.column("path").to_pylist(),
                              manifest.table.column("captions").to_pylist()):
        assert vid and rel and not rel.startswith("/") and ".." not in rel.split("/") and caps


@FAST
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)),
       suffix=st.sampled_from([".jsonl", ".csv"]))
def test_folder_reader_refuses_with_manifest_error_only(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"captions{suffix}"
        path.write_bytes(content)
        try:
            records = read_records(path)
        except ManifestError:
            return
    assert all(isinstance(r.video_id, str) and r.captions for r in records)


@FAST
@given(objs=st.lists(st.dictionaries(st.sampled_from(["video", "video_id", "captions", "split", "duration_s"]),
                                     st.one_of(TEXT, st.lists(TEXT, max_size=2), st.integers(), st.none(),
                                               st.floats())), max_size=3))
def test_folder_reader_on_structured_jsonl(objs):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.jsonl"
        path.write_text("".join(json.dumps(o) + "\n" for o in objs))
        try:
            records = read_records(path)
        except ManifestError:
            return
    assert len(records) == len(objs)


# ---- the store against a dict of newest rows ---------------------------------------------------
DIM = 4
SPEC = ExtractorSpec("clip_frames", DIM, {"model": "prop"}, True)
IDS = ["a", "b", "c", "d", "e"]


class FeatureSetMachine(RuleBasedStateMachine):
    """Random writes, tidies and debris against a model: ``video_id -> newest (status, values)``."""

    @initialize()
    def start(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.fs = FeatureSet(Path(self.tmp.name) / "f", SPEC)
        self.fs.prepare()
        self.model: dict[str, tuple[str, np.ndarray]] = {}
        self.counter = 0

    @rule(ids=st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True), fail=st.booleans(),
          steps=st.integers(0, 3))
    def write(self, ids, fail, steps):
        rows = []
        for vid in ids:
            self.counter += 1
            if fail and vid == ids[0]:
                rows.append(FeatureRow.failed(vid, DIM, "boom"))
            else:
                values = np.full((steps, DIM), self.counter, np.float32)
                rows.append(FeatureRow(vid, values, np.arange(steps, dtype=float), "ok" if steps else "empty"))
        self.fs.write_shard(rows)
        for r in rows:
            self.model[r.video_id] = (r.status, r.values)

    @rule()
    def tidy(self):
        assert self.fs.tidy()
        glob = sorted(self.fs.folder.glob("part-*.parquet"))
        plain = pads.dataset(glob).to_table(columns=["video_id"]).column("video_id").to_pylist() if glob else []
        assert sorted(plain) == sorted(self.model)           # at rest: one row per video, any reader

    @rule(kind=st.sampled_from(["tmp", "unmarked", "orphan-marker"]))
    def debris(self, kind):
        """What a killed writer leaves behind: never visible to readers, gone after a tidy."""
        folder = self.fs.folder
        number = self.fs._reserve_index()   # a killed writer had reserved its number, as every writer does
        if kind == "tmp":
            (folder / f".part-{number:05d}.parquet.x.tmp").write_bytes(b"half")
        elif kind == "unmarked":
            pq.write_table(self.fs._to_table([FeatureRow("a", np.ones((1, DIM), np.float32), np.zeros(1))]),
                           folder / f"part-{number:05d}.parquet")
        else:
            (folder / f"part-{number:05d}.done").write_text("{}")

    @invariant()
    def reads_match_the_model(self):
        if not hasattr(self, "fs"):
            return
        table = self.fs.read()
        assert sorted(table.video_ids) == sorted(self.model)
        for i, vid in enumerate(table.video_ids):
            status, values = self.model[vid]
            assert table.status[i] == status
            np.testing.assert_array_equal(table.row(i), values)

    def teardown(self):
        if hasattr(self, "tmp"):
            self.tmp.cleanup()


TestFeatureSetMachine = FeatureSetMachine.TestCase
TestFeatureSetMachine.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)


# ---- the HTML report shows captions and ids verbatim, never as markup ------------------------------
class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


PRINTABLE = st.characters(blacklist_categories=("Cc", "Cs"))   # the page shows NUL as U+FFFD (CommonMark)
REPORT_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "strong", "table", "thead",
               "tbody", "tr", "th", "td", "br", "img"}


@FAST
@given(caption=st.text(PRINTABLE, min_size=1, max_size=40), video_id=st.text(PRINTABLE, min_size=1, max_size=20),
       name=st.sampled_from(["<script>alert(1)</script>", "a|b", "`x`", "m2hf"]))
def test_report_escapes_captions_and_ids(caption, video_id, name):
    from retrieval.evaluation.pipeline_report import QueryHit, ReportRow, html_page, markdown_report

    evaluation = {"t2v": {"R@1": 1.0}, "v2t": {"R@1": 2.0},
                  "protocol": {"n_queries_t2v": 1, "n_videos": 1, "ties": "mean", "v2t": "x"}}
    rows = [ReportRow(name, Path("/runs") / "run-1", evaluation)]
    hits = [QueryHit(caption, video_id, [(video_id, Path("v.mp4"), 0.5, True)])]
    page = html_page("<b>ds</b>", markdown_report("<b>ds</b>", rows, None, hits, name, "c.png",
                                                 {video_id: "thumbs/x.png"}, True, {}))
    parsed = _Page()
    parsed.feed(page)
    assert parsed.tags <= REPORT_TAGS, parsed.tags - REPORT_TAGS
    assert all(k in ("charset", "src", "alt") for k, _ in parsed.attrs), parsed.attrs
    text = " ".join("".join(parsed.text).split())
    for shown in (caption, video_id, name):
        assert " ".join(shown.split()) in text


def test_prepare_refuses_a_symlink_out_of_the_videos_folder(video_root):
    records = [VideoRecord("v", "out", "train", ["a caption"])]
    with pytest.raises(ManifestError, match="outside the video root"):
        build_manifest(records, video_root, source="ann.jsonl")
