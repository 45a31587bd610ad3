"""data.names (one path component) and retrieval.index.serving (the serving-run record)."""
import pytest

from data.names import InvalidName, check_name
from data.settings import get_settings
from retrieval.runs import ZERO_SHOT
from retrieval.index.serving import recorded_serving_run, serving_run, set_serving_run


@pytest.mark.parametrize("good", ["msrvtt", "video123", "v_-1a2b", "0001_American_Beauty_00.00.51.926-00.00.54.129",
                                  "m2hf-full-s0", "clip with spaces", "vidéo"])
def test_safe_names_pass(good):
    assert check_name(good) == good


@pytest.mark.parametrize("bad", ["", " x", "x ", ".", "..", ".hidden", "a/b", "a\\b", "../x", "a\x00b", "a\nb",
                                 "a\rb", "x" * 256, None, 3])
def test_unsafe_names_are_refused_with_the_kind_named(bad):
    with pytest.raises(InvalidName, match="^run "):
        check_name(bad, "run")


def test_serving_run_defaults_to_zero_shot_and_records_atomically(tmp_path):
    settings = get_settings(tmp_path)
    assert recorded_serving_run("synthetic", settings) is None
    assert serving_run("synthetic", settings) == ZERO_SHOT
    path = set_serving_run("synthetic", "m2hf-full-s0", settings)
    assert path.parent == settings.indexes_dir / "synthetic"
    assert serving_run("synthetic", settings) == "m2hf-full-s0"
    with pytest.raises(InvalidName):
        set_serving_run("synthetic", "../elsewhere", settings)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable serving-run record"):
        serving_run("synthetic", settings)
