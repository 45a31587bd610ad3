"""The one-command pipeline end to end on a tiny synthetic set and a tiny synthetic-events set (real
default extractors, random weights, 1 epoch): a report is written, labelled RANDOM WEIGHTS, and its
numbers (ranking and moments) are exactly those of `python -m retrieval.evaluate` on the same runs
afterwards; a second run reuses the features."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_pipeline_report_matches_evaluate(tvr_home, tmp_path, capsys, monkeypatch):
    from flows.pipeline import pipeline_flow
    from retrieval.evaluation import evaluate

    report = pipeline_flow(n=16, seed=3, epochs=1, events_n=8)
    folder = tvr_home.resolve() / "runs" / "pipeline-synthetic"
    assert report == str(folder / "report.md")
    text = (folder / "report.md").read_text()
    assert "RANDOM WEIGHTS" in text and "## Example queries" in text and "![training curves](curves.png)" in text
    assert "data:image/png;base64" in (folder / "report.html").read_text()
    summary = json.loads((folder / "report.json").read_text())
    names = [row["name"] for row in summary["rows"]]
    assert names[0] == "zero-shot" and "M2HF full" in names and "HCMI" in names
    for row in (summary["rows"][0], summary["rows"][-1]):
        out = tmp_path / f"{row['run']}.json"
        assert evaluate.main(["--run", row["run"], "--dataset", "synthetic", "--json", str(out)]) == 0
        again = json.loads(out.read_text())
        assert again["t2v"] == row["t2v"] and again["v2t"] == row["v2t"]
    moments = summary["moments"]
    runs = sorted(p.name for p in (tvr_home.resolve() / "runs").glob("pipeline-synthetic-events-*"))
    assert len(runs) == len(moments["runs"]) == 3 and [r[-2:] for r in runs] == ["s3", "s4", "s5"]
    assert "## Moments: synthetic\\-events, 3 runs" in text and "trained head" in text and "oracle:" in text
    assert "trained head" in (folder / "report.html").read_text()
    out = tmp_path / "moments.json"
    assert evaluate.main(["--task", "moments", "--dataset", "synthetic-events", "--json", str(out),
                          *[arg for r in runs for arg in ("--run", r)]]) == 0
    again = json.loads(out.read_text())
    assert again["methods"] == moments["methods"] and again["goal"] == moments["goal"]
    assert (tvr_home.resolve() / "evals" / "synthetic-events-test-moments-pipeline.md").is_file()
    capsys.readouterr()

    import extractors.reader
    from extractors.audio import AudioExtractor
    from extractors.clip import ClipFramesExtractor
    from extractors.motion import MotionExtractor

    def no_extraction(*args, **kwargs):
        raise AssertionError("the second run decoded or encoded a video again")

    monkeypatch.setattr(extractors.reader, "stream_video", no_extraction)
    for cls in (ClipFramesExtractor, AudioExtractor, MotionExtractor):  # the text tower still encodes
        monkeypatch.setattr(cls, "forward", no_extraction)               # the report's example queries
    assert pipeline_flow(n=16, seed=3, epochs=1, events_n=8) == report  # second run: all already extracted
    for dataset in ("synthetic", "synthetic-events"):
        features = tvr_home.resolve() / "features" / dataset
        for modality in ("clip_frames", "clip_text", "audio", "motion"):
            (extractor,) = list((features / modality).iterdir())
            assert len(list(extractor.glob("part-*.done"))) == 1, (dataset, modality)


@pytest.mark.parametrize("events_n", ["-1", "3"])
def test_too_few_events_videos_are_refused_before_any_run(events_n, tvr_home, capsys):
    from flows.pipeline import main

    assert main(["--events-n", events_n]) == 2
    assert f"--events-n {events_n}: 0 (no moments step) or at least 4 videos" in capsys.readouterr().err
    assert not (tvr_home / "datasets").exists()
