"""The wake-word pipeline's parts: features, head, detector, backbone, engine."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from assistant.audio import FRAME_SAMPLES
from assistant.errors import ModelError
from assistant.kws.backbone import Backbone, sha256_file
from assistant.kws.detector import Detector
from assistant.kws.engine import Engine
from assistant.kws.features import HOP, N_MELS, WIN, StreamingLogMel, log_mel
from assistant.kws.head import Head


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 9000), cuts=st.lists(st.integers(1, 2500), max_size=12))
def test_streaming_features_equal_batch_features_exactly(seed, n, cuts):
    x = (np.random.default_rng(seed).standard_normal(n) * 4000).astype(np.int16)
    s, parts, i = StreamingLogMel(), [], 0
    for c in [*cuts, n]:
        parts.append(s.push(x[i : i + c]))
        i += c
    streamed = np.concatenate(parts) if parts else np.zeros((0, N_MELS))
    assert np.array_equal(streamed, log_mel(x))
    assert len(streamed) == (0 if n < WIN else 1 + (n - WIN) // HOP)


def test_features_see_where_the_energy_is():
    t = np.arange(16000) / 16000
    low = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    high = (8000 * np.sin(2 * np.pi * 5000 * t)).astype(np.int16)
    assert log_mel(low).mean(0).argmax() < N_MELS // 3 < 2 * N_MELS // 3 < log_mel(high).mean(0).argmax()


def test_head_gradient_matches_finite_differences_and_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    head = Head.init(window=3, embed=5, hidden=4, rng=rng)
    head = head.with_flat(head.flat() + 0.1 * rng.standard_normal(head.size))  # nonzero biases too
    x, y = rng.standard_normal((9, 3, 5)), (rng.random(9) > 0.5).astype(float)
    loss, grad = head.loss_and_grad(x, y)
    v, eps = head.flat(), 1e-6
    num = np.array([(head.with_flat(v + eps * e).loss_and_grad(x, y)[0]
                     - head.with_flat(v - eps * e).loss_and_grad(x, y)[0]) / (2 * eps) for e in np.eye(len(v))])
    assert np.allclose(grad, num, atol=1e-7) and loss > 0
    p = head.forward(x)
    assert np.allclose(loss, np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))
    head.save(tmp_path / "h.npz")
    again = Head.load(tmp_path / "h.npz")
    assert np.array_equal(again.flat(), head.flat()) and (again.window, again.embed) == (3, 5)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelError):
        Head.load(tmp_path / "bad.npz")


def test_a_few_gradient_steps_learn_a_separable_task():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 2, 4))
    y = (x[:, 0, 0] + x[:, 1, 3] > 0).astype(float)
    head = Head.init(2, 4, 8, rng)
    first = head.loss_and_grad(x, y)[0]
    for _ in range(300):
        head = head.with_flat(head.flat() - 0.5 * head.loss_and_grad(x, y)[1])
    assert head.loss_and_grad(x, y)[0] < first / 3
    assert ((head.forward(x) > 0.5) == y).mean() > 0.9


def test_detector_threshold_patience_and_refractory_period():
    d = Detector(threshold=0.5, patience=2, refractory_s=1.0)
    scores = [0.1, 0.9, 0.2, 0.9, 0.95, 0.99, 0.99, 0.99, 0.1, 0.9, 0.9]
    times = [0.08 * (i + 1) for i in range(len(scores))]
    fired = [t for s, t in zip(scores, times, strict=True) if d.update(s, t)]
    assert fired == [pytest.approx(0.40)]  # two in a row at 0.32 and 0.40; quiet for 1 s after
    d2 = Detector(threshold=0.5, patience=2, refractory_s=0.3)
    fired2 = [t for s, t in zip(scores, times, strict=True) if d2.update(s, t)]
    assert fired2 == [pytest.approx(0.40), pytest.approx(0.88)]
    with pytest.raises(ValueError):
        Detector(threshold=1.5)


def energy_backbone(path, context=12, embed=4) -> None:
    """A tiny ONNX backbone for plumbing tests: the mean log-mel energy of the window's last
    frames, repeated. (Not a wake-word model: the shipped one comes from models/.)"""
    w = np.full((context * N_MELS, embed), 1.0 / (context * N_MELS), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["mel"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["emb"])],
        "energy", [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, context, N_MELS])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, embed])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_backbone_runs_single_threaded_and_refuses_bad_files(tmp_path):
    energy_backbone(tmp_path / "b.onnx")
    b = Backbone(tmp_path / "b.onnx")
    assert (b.context, b.n_mels, b.embed) == (12, N_MELS, 4)
    assert b.session.get_session_options().intra_op_num_threads == 1
    mel = np.random.default_rng(0).standard_normal((12, N_MELS)).astype(np.float32)
    assert np.allclose(b(mel), mel.mean(), atol=1e-5)
    assert len(sha256_file(tmp_path / "b.onnx")) == 64
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load"):
        Backbone(tmp_path / "bad.onnx")


def test_engine_fires_once_on_a_loud_burst_and_stays_quiet_on_silence(tmp_path):
    energy_backbone(tmp_path / "b.onnx")
    backbone = Backbone(tmp_path / "b.onnx")
    head = Head(W1=np.full((12, 1), 1.0), b1=np.array([0.0]), w2=np.array([2.0]), b2=np.array(0.0) + 0,
                window=3, embed=4)
    # score = sigmoid(2 * relu(sum of 3 embeddings x 4 dims) + b2): high only when energy is high
    head = head.with_flat(np.concatenate([head.flat()[:-1], [-30.0]]))
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 3) * 30).astype(np.int16)
    loud = (rng.standard_normal(16000) * 12000).astype(np.int16)
    audio = np.concatenate([quiet, loud, quiet])
    engine = Engine(backbone, head, Detector(threshold=0.5, patience=2, refractory_s=2.0))
    steps = [engine.process(audio[i : i + FRAME_SAMPLES]) for i in range(0, len(audio) - FRAME_SAMPLES + 1,
                                                                           FRAME_SAMPLES)]
    hits = [s.detection for s in steps if s.detection]
    assert len(hits) == 1 and 3.0 < hits[0].time_s < 4.0
    engine.reset()
    silent = [engine.process(quiet[i : i + FRAME_SAMPLES]).detection for i in range(0, 16000 * 2, FRAME_SAMPLES)]
    assert not any(silent)
    with pytest.raises(ModelError):
        Engine(backbone, Head.init(3, 5, 2, rng), Detector())
