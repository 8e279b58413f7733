"""`assistant eval DIR`: an owner's labelled recordings through the real engine (ONNX Runtime), with
figures that follow from how the clips were made, and clear errors for a wrong folder."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile
from test_kws import energy_backbone

from assistant.audio import SAMPLE_RATE, write_wav
from assistant.kws.head import Head


def _clip(rng, burst_std: float | None, seconds: float = 3.0) -> np.ndarray:
    """Near silence with a 1 s noise burst in the middle (the energy model's 'wake word')."""
    x = rng.standard_normal(int(seconds * SAMPLE_RATE)) * 30
    if burst_std is not None:
        mid = len(x) // 2
        x[mid - SAMPLE_RATE // 2 : mid + SAMPLE_RATE // 2] = rng.standard_normal(SAMPLE_RATE) * burst_std
    return x.astype(np.int16)


@pytest.fixture
def owner(tmp_path):
    """The energy backbone and head of test_detect_cli (the logit is 24 x the mean log-mel energy
    - 30, floored at -30 by the ReLU: a 12000-std burst scores about 75, a 3000-std one about 8, a
    1000-std one and silence -30) and a folder of recordings:
    positive/: two loud bursts and one too faint to fire; negative/: twenty 3 s clips (60 s), one
    with a 3000-std burst (a false accept at 0.5, but below both loud positives)."""
    energy_backbone(tmp_path / "b.onnx")
    Head(W1=np.full((12, 1), 1.0), b1=np.zeros(1), w2=np.array([2.0]), b2=np.array(-30.0), window=3,
         embed=4).save(tmp_path / "h.npz")
    rng = np.random.default_rng(7)
    d = tmp_path / "mine"
    (d / "positive").mkdir(parents=True)
    (d / "negative").mkdir()
    write_wav(d / "positive" / "a.wav", _clip(rng, 12000))
    soundfile.write(d / "positive" / "b.flac", _clip(rng, 12000), SAMPLE_RATE, subtype="PCM_16")
    write_wav(d / "positive" / "c_faint.WAV", _clip(rng, 1000))
    (d / "positive" / "notes.txt").write_text("not audio: ignored")
    for i in range(19):
        write_wav(d / "negative" / f"quiet{i:02d}.wav", _clip(rng, None))
    write_wav(d / "negative" / "tv.wav", _clip(rng, 3000))
    return tmp_path, d


def run(models, *args):
    return subprocess.run([sys.executable, "-m", "assistant.cli", "eval", *map(str, args), "--backbone",
                           str(models / "b.onnx"), "--head", str(models / "h.npz")],
                          capture_output=True, text=True, timeout=120)


def test_eval_reports_frr_at_budgets_and_false_accepts_at_the_threshold(owner):
    models, d = owner
    out = run(models, d, "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["positives"] == 3 and res["negative_files"] == 20
    assert res["negative_hours"] == pytest.approx(60 / 3600)
    assert (res["threshold"], res["patience"], res["refractory_s"]) == (0.5, 1, 2.0)  # detect's defaults without a card
    # at 0.5 the negative burst fires once in 60 s, both loud positives fire, the faint one does not
    assert res["fa_per_hour_at_threshold"] == pytest.approx(60.0)
    assert res["frr_at_threshold"] == 0.3333
    for b in (0.1, 0.5, 1.0):
        # one false accept is already 60 per hour: every budget needs a threshold above the negative
        # burst (logit ~8), which the loud bursts (~75) still pass and the faint one never does
        assert res[f"frr_at_{b}"] == 0.3333
        lt = res[f"logit_threshold_at_{b}"]
        assert 5.0 < lt < 20.0
        assert res[f"threshold_at_{b}"] == pytest.approx(1 / (1 + math.exp(-lt)))
    assert "recordings scored" in out.stderr  # 23 files: progress shown

    table = run(models, d)
    assert table.returncode == 0, table.stderr
    assert "FA/h budget" in table.stdout and "60.000 false accepts per hour" in table.stdout
    assert "3 recordings" in table.stdout and "0.017 h" in table.stdout

    stricter = json.loads(run(models, d, "--json", "--threshold", "0.99999").stdout)
    assert stricter["fa_per_hour_at_threshold"] == 0.0 and stricter["frr_at_threshold"] == 0.3333


def test_eval_refuses_a_folder_laid_out_wrongly_naming_the_path(owner, tmp_path):
    models, d = owner
    lacking = tmp_path / "only_pos"
    (lacking / "positive").mkdir(parents=True)
    out = run(models, lacking)
    assert out.returncode == 1
    assert f"{lacking}: no negative/ folder" in out.stderr and "positive/*.wav|flac" in out.stderr

    empty = tmp_path / "empty"
    (empty / "positive").mkdir(parents=True)
    (empty / "negative").mkdir()
    (empty / "positive" / "readme.txt").write_text("x")
    out = run(models, empty)
    assert out.returncode == 1 and f"{empty / 'positive'}: no .wav or .flac files" in out.stderr

    out = run(models, tmp_path / "nowhere")
    assert out.returncode == 1 and "no such directory" in out.stderr

    (d / "negative" / "broken.wav").write_bytes(b"RIFF junk")
    out = run(models, d)
    assert out.returncode == 1 and f"{d / 'negative' / 'broken.wav'}: not a readable WAV" in out.stderr
