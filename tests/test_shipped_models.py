"""The models we ship: files match their cards, and they hear their wake word from voices they
never heard in training (the committed clips of tests/data/kws) and nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assistant.audio import file_frames
from assistant.errors import ModelError
from assistant.kws.backbone import sha256_file
from assistant.kws.model import default_model_dir, load_model

CLIPS = Path(__file__).parent / "data" / "kws"
WAKEWORDS = ("hey_snips", "hey_jarvis")


def detections(model, clip: Path) -> list:
    engine = model.engine()
    return [s.detection for s in map(engine.process, file_frames(clip)) if s.detection is not None]


@pytest.mark.parametrize("wakeword", WAKEWORDS)
def test_shipped_files_match_their_cards(wakeword):
    d = default_model_dir(wakeword)
    card = json.loads((d / "card.json").read_text())
    assert card["wakeword"] == wakeword.replace("_", " ")
    for name in ("backbone.onnx", "head.npz"):
        assert card["files"][name]["sha256"] == sha256_file(d / name)
        assert card["files"][name]["bytes"] == (d / name).stat().st_size
    assert 0.0 < card["threshold"] < 1.0
    assert card["evaluation"]["positives"] >= 400 and card["evaluation"]["negative_hours"] >= 6.0
    assert (d / "MODEL_CARD.md").read_text().count(card["files"]["backbone.onnx"]["sha256"]) == 1


@pytest.mark.parametrize("wakeword", WAKEWORDS)
def test_fires_once_on_each_held_out_positive_clip(wakeword):
    model = load_model(default_model_dir(wakeword))
    clips = sorted(CLIPS.glob(f"positive_{wakeword}_*.wav"))
    assert len(clips) == 3
    for clip in clips:
        found = detections(model, clip)
        assert len(found) == 1, clip.name
        assert 0.8 < found[0].time_s < 3.0  # the keyword starts at 0.8 s


@pytest.mark.parametrize("wakeword", WAKEWORDS)
@pytest.mark.parametrize("clip", ["negative_noise.wav", "negative_speech.wav"])
def test_silent_on_noise_and_speech(wakeword, clip):
    assert detections(load_model(default_model_dir(wakeword)), CLIPS / clip) == []


def test_the_other_wake_word_does_not_fire():
    snips = load_model(default_model_dir("hey_snips"))
    assert all(detections(snips, c) == [] for c in CLIPS.glob("positive_hey_jarvis_*.wav"))


def test_a_tampered_or_missing_file_is_refused(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(default_model_dir("hey_snips"), d, ignore=shutil.ignore_patterns("checkpoint.pt"))
    load_model(d)
    head = (d / "head.npz").read_bytes()
    (d / "head.npz").write_bytes(head[:-1] + bytes([head[-1] ^ 1]))
    with pytest.raises(ModelError, match=r"head\.npz: SHA-256 does not match"):
        load_model(d)
    (d / "head.npz").unlink()
    with pytest.raises(ModelError, match=r"head\.npz: missing"):
        load_model(d)
    with pytest.raises(ModelError, match=r"no card\.json"):
        load_model(tmp_path)
