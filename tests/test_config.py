"""Typed, validated configuration: model configs (fusion.schema) and settings (data.settings)."""
from __future__ import annotations

import pytest

from data.settings import SettingsError, get_settings
from fusion.config import ConfigError, load_config, model_names
from fusion.train import main as train_main


@pytest.mark.parametrize("name", model_names())
def test_every_shipped_config_validates(name):
    config = load_config(name)
    assert config["model"] == name and config["train"]["precision"] == "fp32"


def test_a_misspelt_nested_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown option 'train\.epoch' \(did you mean 'train\.epochs'\?\); "
                                          r"valid keys in 'train': .*epochs"):
        load_config("hcmi", overrides=["train.epoch=3"])


def test_the_training_cli_refuses_a_misspelt_key(capsys):
    assert train_main(["--dataset", "none", "--model", "meanP", "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "'train.epoch'" in err and "did you mean 'train.epochs'" in err and "Traceback" not in err


@pytest.mark.parametrize("override, option", [("train.lr=fast", "train.lr"), ("branches=[V,XX]", "branches.1"),
                                              ("margin=-1", "margin"), ("train.precision=fp8", "train.precision"),
                                              ("train={epochs: 2, bogus: 1}", "train.bogus")])
def test_wrong_types_values_and_keys_are_errors(override, option):
    name = "m2hf" if "branches" in override else "hcmi"
    with pytest.raises(ConfigError, match=f"'{option}'"):
        load_config(name, overrides=[override])


def test_a_config_file_with_an_unknown_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown option 'train\.batchsize' \(did you mean 'train\.batch_size'"):
        load_config("meanP", bad)


@pytest.mark.parametrize("var, value", [("TVR_SHARD_SIZE", "many"), ("TVR_SHARD_SIZE", "0"),
                                        ("TVR_DEVICE", "gpu"), ("TVR_DASK_LOCAL_WORKERS", "-2"),
                                        ("TVR_QUERY_PRECISION", "int4")])
def test_bad_environment_settings_are_clear_errors(monkeypatch, tmp_path, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=f"environment variable {var}='{value}'"):
        get_settings(tmp_path)


def test_settings_read_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TVR_SHARD_SIZE", "8")
    monkeypatch.setenv("TVR_DEVICE", "cuda:1")
    monkeypatch.setenv("TVR_QUERY_PRECISION", "bf16")
    monkeypatch.setenv("TVR_HOME", str(tmp_path / "home"))
    s = get_settings()
    assert (s.shard_size, s.device, s.query_precision, s.root) == (8, "cuda:1", "bf16", (tmp_path / "home").resolve())
    assert get_settings(tmp_path).runs_dir == tmp_path.resolve() / "runs"
