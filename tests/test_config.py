"""The device configuration: YAML to one frozen typed object, every problem named with its key, value and what is
allowed; `assistant config check|show`; flags over the file in `assistant run`."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from assistant.cli import main
from assistant.config import Config, ConfigError, config_path, load_config, override, parse_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "systemd" / "assistant.yaml"
CLIP = ROOT / "tests" / "data" / "kws" / "positive_hey_snips_en-us_female2.wav"


def problems(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "test.yaml")
    assert str(err.value).startswith("config test.yaml: ")
    return err.value.problems


def test_empty_file_is_the_defaults_and_the_object_is_frozen():
    cfg = parse_config("")
    assert cfg == Config()
    assert cfg.model.threshold is None and cfg.model.patience == 1 and cfg.model.verifier is True
    assert cfg.learning.enabled is False and cfg.log.level == "info"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.patience = 3  # type: ignore[misc]


def test_values_are_converted_to_their_types():
    cfg = parse_config("""
audio: {device: 2, input: /tmp/a.wav}
model: {dir: /opt/m, threshold: 0.7, patience: 3, refractory_s: 1, verifier: false}
store: {dir: /var/lib/assistant}
hermes: {url: mqtt://127.0.0.1:1883}
learning: {credentials: /etc/assistant/c.yaml, min_crowd: 50}
log: {level: debug}
""")
    assert cfg.audio.device == "2" and cfg.audio.input == Path("/tmp/a.wav")
    assert cfg.model.dir == Path("/opt/m") and cfg.model.threshold == 0.7 and cfg.model.patience == 3
    assert isinstance(cfg.model.refractory_s, float) and cfg.model.verifier is False
    assert cfg.learning.enabled and cfg.learning.min_crowd == 50 and cfg.log.level == "debug"


@pytest.mark.parametrize(("text", "key", "shown", "allowed"), [
    ("model: {threshold: high}", "model.threshold", "'high'", "a probability strictly between 0 and 1"),
    ("model: {patience: 2.5}", "model.patience", "2.5", "frames above the threshold, 1 to 50"),
    ("model: {verifier: 1}", "model.verifier", "1", "true or false"),
    ("model: {dir: 5}", "model.dir", "5", "an absolute path"),
    ("store: {dir: relative/path}", "store.dir", "'relative/path'", "an absolute path"),
    ("hermes: {url: http://x}", "hermes.url", "'http://x'", "a broker URL"),
    ("log: {level: loud}", "log.level", "'loud'", "one of 'debug', 'info', 'warning', 'error'"),
    ("model: [1, 2]", "model", "[1, 2]", "a mapping of keys to values"),
    ("audio: {realtime: null}", "audio.realtime", "None", "true or false"),
])
def test_a_wrong_type_names_the_key_the_value_and_what_is_allowed(text, key, shown, allowed):
    (p,) = problems(text)
    assert p.startswith(f"{key}: got {shown}; need ") and allowed in p


@pytest.mark.parametrize(("text", "key", "shown"), [
    ("model: {threshold: 1.0}", "model.threshold", "1.0"),
    ("model: {threshold: 0}", "model.threshold", "0"),
    ("model: {patience: 0}", "model.patience", "0"),
    ("model: {patience: 51}", "model.patience", "51"),
    ("model: {refractory_s: -1}", "model.refractory_s", "-1"),
    ("model: {pre_roll_s: 9.95}", "model.pre_roll_s", "9.95"),
    ("model: {refractory_s: .nan}", "model.refractory_s", "nan"),
    ("learning: {min_crowd: 1}", "learning.min_crowd", "1"),
])
def test_an_out_of_range_value_is_refused(text, key, shown):
    (p,) = problems(text)
    assert p.startswith(f"{key}: got {shown}; need ")


def test_the_edges_of_a_range_are_allowed():
    cfg = parse_config("model: {patience: 50, refractory_s: 0, pre_roll_s: 9.92, threshold: 0.999}")
    assert (cfg.model.patience, cfg.model.refractory_s, cfg.model.pre_roll_s) == (50, 0.0, 9.92)


def test_unknown_keys_are_refused_with_a_suggestion():
    (p,) = problems("model: {treshold: 0.5}")
    assert p.startswith("model.treshold: unknown key (did you mean 'threshold'?)") and "allowed here: dir," in p
    (p,) = problems("microphone: {device: 1}")
    assert p.startswith("microphone: unknown key") and "audio, model, store, hermes, learning, log" in p
    assert "source" not in p  # internal fields are not keys


def test_every_problem_is_listed_at_once():
    found = problems("model: {threshold: 2, patience: x}\nstore: {dirr: /x}\nlog: {level: 3}")
    assert sorted(p.split(":")[0] for p in found) == ["log.level", "model.patience", "model.threshold", "store.dirr"]


def test_not_yaml_or_not_a_mapping():
    (p,) = problems("model: {threshold: [")
    assert p.startswith("not valid YAML at line 1")
    (p,) = problems("- 1\n- 2")
    assert p.startswith("the top level: got [1, 2]; need a mapping")


def test_a_missing_or_huge_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "absent.yaml")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_the_shipped_example_is_valid_and_says_where_things_go():
    cfg = load_config(EXAMPLE)
    assert cfg.store.dir == Path("/var/lib/assistant")
    assert cfg.model.dir == Path("/opt/assistant/models/hey_snips")
    # apart from the installed paths, the example documents the defaults
    assert dataclasses.replace(cfg, store=Config().store, model=dataclasses.replace(cfg.model, dir=None),
                               source=None) == Config()
    # every key of the schema appears in the example, so the file documents all of them
    text = yaml.safe_load(EXAMPLE.read_text())
    assert {s: set(v) for s, v in text.items()} == {s: set(v) for s, v in Config().as_dict().items()}


def test_flags_override_the_file_and_the_env_var_names_the_file(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("model: {threshold: 0.6, patience: 2}\n")
    assert config_path(None, {"ASSISTANT_CONFIG": str(f)}) == f
    assert config_path(tmp_path / "b.yaml", {"ASSISTANT_CONFIG": str(f)}) == tmp_path / "b.yaml"
    assert config_path(None, {}) is None
    cfg = override(load_config(f), {"model": {"threshold": 0.8, "patience": None}})
    assert (cfg.model.threshold, cfg.model.patience) == (0.8, 2)


def test_config_check_and_show(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("model: {threshold: 0.6}\n")
    bad.write_text("model: {threshold: 7, patiense: 2}\n")
    assert main(["config", "check", str(good)]) == 0
    assert f"ok: {good}" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "2 problems" in err and "model.threshold: got 7" in err and "model.patiense: unknown key" in err
    assert main(["config", "show", "--config", str(good)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["model"]["threshold"] == 0.6 and shown["model"]["patience"] == 1


def test_run_reads_its_settings_from_the_config_file(tmp_path):
    """`assistant run --config` takes input, store, threshold from the file; a bad file stops it before it starts."""
    store = tmp_path / "store"
    cfg = tmp_path / "assistant.yaml"
    cfg.write_text(f"audio: {{input: {CLIP}}}\nstore: {{dir: {store}}}\nmodel: {{verifier: false}}\n")
    cmd = [sys.executable, "-m", "assistant.cli", "run", "--config", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "hey_snips  score" in r.stdout and "1 detection" in r.stdout
    assert (store / "store.db").exists()
    # a flag wins over the file: a threshold no score reaches
    r = subprocess.run([*cmd, "--threshold", "0.99999"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and "0 detections" in r.stdout
    cfg.write_text(f"audio: {{input: {CLIP}}}\nstore: {{dir: {tmp_path / 'other'}}}\nmodel: {{threshold: 3}}\n")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1 and "model.threshold: got 3" in r.stderr
    assert not (tmp_path / "other").exists()  # nothing created on disk by a refused configuration
