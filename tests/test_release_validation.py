"""The developer's validation set and release gate (issue 7): the set's embeddings are exactly the device
Engine's; it is built from the committed clips through a real ONNX backbone and cached by the backbone's hash;
the metrics on a tiny hand-made set are the numbers worked out by hand; the policy releases only what is not
worse; and the synthetic clips come from training voices only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_kws import energy_backbone

from assistant.audio import FRAME_SAMPLES, frames, read_audio
from assistant.kws.backbone import Backbone, sha256_file
from assistant.kws.detector import Detector
from assistant.kws.engine import Engine
from assistant.kws.head import Head
from assistant.learning.errors import LearningError
from assistant.learning.validation import (
    LabelledClip,
    Metrics,
    ReleasePolicy,
    ValidationSet,
    build,
    clip_embeddings,
    decide_release,
    evaluate,
    synthetic_clips,
)
from models import data as D

CLIPS = Path(__file__).parent / "data" / "kws"


def committed_clips() -> list[LabelledClip]:
    """The committed held-out clips, the long negatives cut in 3 s pieces (here only to exercise the builder)."""
    out = [LabelledClip(read_audio(p), 1, p.name) for p in sorted(CLIPS.glob("positive_*.wav"))]
    for p in sorted(CLIPS.glob("negative_*.wav")):
        a = read_audio(p)
        out += [LabelledClip(a[i : i + 48000], 0, p.name) for i in range(0, len(a) - 48000 + 1, 48000)]
    return out


def test_set_embeddings_are_the_engines_embeddings(tmp_path):
    energy_backbone(tmp_path / "b.onnx")
    backbone = Backbone(tmp_path / "b.onnx")
    audio = read_audio(CLIPS / "positive_hey_snips_en-us_female2.wav")
    engine = Engine(backbone, Head.init(3, 4, 2, np.random.default_rng(0)), Detector())
    streamed = [s.embedding for f in frames(audio) if (s := engine.process(f)).embedding is not None]
    whole = len(audio) // FRAME_SAMPLES
    ours = clip_embeddings(backbone, audio)
    assert len(ours) == whole - 1  # 12 mel windows (the context) are complete from the second frame on
    assert np.array_equal(ours, np.stack(streamed[: len(ours)]))


def test_the_builder_runs_the_backbone_over_clips_and_caches_by_its_hash(tmp_path):
    energy_backbone(tmp_path / "b.onnx")
    calls = []

    def make():
        calls.append(1)
        return committed_clips()

    cache = tmp_path / "validation.npz"
    vset = build(make, tmp_path / "b.onnx", window=3, cache=cache, recipe="committed")
    assert calls == [1] and vset.positives == 6 and len(vset.labels) == 6 + 6 + 6
    assert vset.backbone_sha256 == sha256_file(tmp_path / "b.onnx") and vset.embeddings.dtype == np.float32
    assert vset.negative_windows == 12 * (36 - 3 + 1)  # 3 s: 37 frames, 36 embeddings, windows of 3
    again = build(make, tmp_path / "b.onnx", window=3, cache=cache, recipe="committed")
    assert calls == [1] and np.array_equal(again.embeddings, vset.embeddings)  # from the cache
    build(make, tmp_path / "b.onnx", window=3, cache=cache, recipe="other clips")
    assert calls == [1, 1]
    energy_backbone(tmp_path / "b.onnx", context=10)  # a new backbone: the cache no longer applies
    rebuilt = build(make, tmp_path / "b.onnx", window=3, cache=cache, recipe="other clips")
    assert calls == [1, 1, 1] and rebuilt.backbone_sha256 != vset.backbone_sha256
    assert ValidationSet.load(cache).backbone_sha256 == rebuilt.backbone_sha256
    with pytest.raises(LearningError, match="no clip gave"):
        build(lambda: [LabelledClip(np.zeros(3000, np.int16), 1)], tmp_path / "b.onnx", window=3)


def one_by_one(clips: list[list[float]], labels: list[int]) -> ValidationSet:
    e = np.array([x for c in clips for x in c], np.float32)[:, None]
    return ValidationSet(e, np.array([len(c) for c in clips]), np.array(labels, np.int8), 1, "00" * 32)


def test_metrics_on_a_tiny_set_are_the_numbers_worked_out_by_hand():
    relu = Head(np.ones((1, 1)), np.zeros(1), np.ones(1), np.zeros(()), 1, 1)  # logit = relu(x)
    vset = one_by_one([[0.0, 3.0], [1.0, 0.5], [0.2, 2.0, 0.0], [0.0, 0.0, 0.1]], [1, 1, 0, 0])
    # positives by their best window: 3 and 1; negatives by window: 0.2, 2, 0, 0, 0, 0.1
    pos, neg = np.array([3.0, 1.0]), np.array([0.2, 2.0, 0.0, 0.0, 0.0, 0.1])
    m = evaluate(relu, vset, threshold=0.7, fa_budget=1 / 6)
    loss = 0.5 * (np.mean(np.log1p(np.exp(-pos))) + np.mean(np.log1p(np.exp(neg))))
    assert m.loss == pytest.approx(loss) and (m.positives, m.negatives) == (2, 6)
    assert m.accuracy == pytest.approx(0.5 * (1 + 5 / 6))  # 2 > logit(0.7) = 0.85 fires on a negative
    assert m.fa_threshold == pytest.approx(0.2) and m.frr == 0.0  # one window of six may fire: the 2.0
    strict = evaluate(relu, vset, threshold=0.7, fa_budget=0.0)
    assert strict.fa_threshold == pytest.approx(2.0) and strict.frr == 0.5  # the clip peaking at 1 is rejected
    with pytest.raises(LearningError, match="positive and negative"):
        evaluate(relu, one_by_one([[1.0]], [1]))
    with pytest.raises(LearningError, match="window"):
        evaluate(Head.init(2, 1, 1, np.random.default_rng(0)), vset)


def test_release_only_when_not_worse_within_the_tolerance():
    current = Metrics(0.300, 0.9, 0.10, 0.01, 2.0, 50, 1000)

    def cand(loss: float, frr: float) -> Metrics:
        return Metrics(loss, 0.9, frr, 0.01, 2.0, 50, 1000)

    policy = ReleasePolicy(loss_tolerance=0.005, frr_tolerance=0.02)
    assert decide_release(cand(0.25, 0.08), current, policy).release
    assert decide_release(cand(0.304, 0.12), current, policy).release  # within both tolerances
    worse = decide_release(cand(0.31, 0.10), current, policy)
    assert not worse.release and "loss 0.3100 > 0.3000" in worse.reason
    worse = decide_release(cand(0.2, 0.13), current, policy)
    assert not worse.release and "FRR" in worse.reason
    with pytest.raises(LearningError, match="different sets"):
        decide_release(Metrics(0.2, 0.9, 0.1, 0.01, 2.0, 49, 1000), current)


def test_synthetic_clips_come_from_training_voices_and_build_a_set(tmp_path):
    clips = synthetic_clips("hey jarvis", positives=2, negatives=6, seed=3, seconds=2.5)
    _, held_out = D.split_voices(D.all_voices())
    assert [c.label for c in clips] == [1, 1, 0, 0, 0, 0, 0, 0]
    assert all(len(c.samples) == 40000 and c.samples.dtype == np.int16 for c in clips)
    assert not {c.source for c in clips} & {v.name for v in held_out}
    assert clips[-1].source.startswith("noise:") and np.abs(clips[0].samples).max() > 1000
    energy_backbone(tmp_path / "b.onnx")
    vset = build(lambda: clips, tmp_path / "b.onnx", window=3)
    assert vset.positives == 2 and len(vset.labels) == 8 and vset.negative_windows == 6 * (30 - 3 + 1)
