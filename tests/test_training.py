"""The training recipe on tiny data: it builds, trains, checkpoints, resumes and exports files the
device pipeline loads, and the exported backbone computes what the trained one did."""

from __future__ import annotations

import numpy as np
import pytest

from models import data as D
from models import train as T


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    voices, _ = D.split_voices(D.espeak_voices())
    x, y = T.build("hey snips", voices[:12], n_pos=10, n_neg=12, seed=1)
    out = tmp_path_factory.mktemp("model")
    logs: list[str] = []
    info = T.train(x, y, out, epochs=2, resume=False, log=logs.append)
    return x, y, out, logs, info


def test_dataset_has_the_device_feature_shape_and_both_labels(tiny):
    x, y, *_ = tiny
    assert x.shape == (22, T.SPAN, 40) and x.dtype == np.float32
    assert y.sum() == 10 and set(np.unique(y)) == {0.0, 1.0}
    assert np.isfinite(x).all()


def test_training_checkpoints_resumes_and_exports_loadable_models(tiny):
    x, y, out, logs, info = tiny
    assert [m.split(":")[0] for m in logs] == ["epoch 1/2", "epoch 2/2"] and info["epochs"] == 2
    assert (out / "checkpoint.pt").exists() and (out / "backbone.onnx").exists() and (out / "head.npz").exists()
    more: list[str] = []
    T.train(x, y, out, epochs=3, resume=True, log=more.append)
    assert more[0] == "resumed from epoch 2" and more[1].startswith("epoch 3/3")


def test_exported_backbone_and_head_match_the_trained_torch_model(tiny):
    import torch

    from assistant.kws.backbone import Backbone
    from assistant.kws.head import Head

    x, _, out, _, _ = tiny
    backbone_t, head_t = T.make_model()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    backbone_t.load_state_dict(state["backbone"])
    head_t.load_state_dict(state["head"])
    backbone_t.eval()
    # the files written after the last (3rd) epoch in the previous test
    onnx_b, head = Backbone(out / "backbone.onnx"), Head.load(out / "head.npz")
    assert (onnx_b.context, onnx_b.embed, head.window) == (T.CONTEXT, T.EMBED, T.WINDOW)
    with torch.no_grad():
        emb_t = T.embed_windows(backbone_t, torch.from_numpy(x[:3])).numpy()
        logit_t = head_t(torch.from_numpy(emb_t)).numpy()
    emb_onnx = np.stack([[onnx_b(x[i, s * T.STEP : s * T.STEP + T.CONTEXT]) for s in range(T.WINDOW)]
                         for i in range(3)])
    assert np.allclose(emb_onnx, emb_t, atol=1e-4)
    assert np.allclose(head.logits(emb_onnx.astype(np.float64)), logit_t, atol=1e-3)


def test_evaluation_harness_runs_end_to_end_on_tiny_models(tiny, tmp_path):
    """bench/kws_eval.py on the tiny model (as both wake words) and a minute of negatives: the JSON
    contract holds, every figure is in range, and the cached test set is reused with the same figures."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    _, _, out, _, _ = tiny
    for name in ("hey_snips", "hey_jarvis"):
        shutil.copytree(out, tmp_path / name)
    root = Path(__file__).resolve().parents[1]

    def kws_eval(engines: str) -> tuple[dict, str]:
        proc = subprocess.run([sys.executable, str(root / "bench" / "kws_eval.py"), "--json", "--models",
                               str(tmp_path), "--negative-hours", "0.02", "--positives", "6", "--plot",
                               str(tmp_path / "det.png"), "--cache", str(tmp_path / "cache"), "--engines", engines],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    res, log = kws_eval("ours_hey_snips,ours_hey_jarvis")
    assert res["positives"] == 6 and 0.015 < res["negative_hours"] < 0.03 and res["missing"] == []
    assert list(res["engines"]) == ["ours_hey_snips", "ours_hey_jarvis"]
    for name in ("ours_hey_snips", "ours_hey_jarvis"):
        e = res["engines"][name]
        assert all(0.0 <= e[f"frr_at_{b}"] <= 1.0 for b in (0.1, 0.5, 1.0))
        assert 0 < e["cpu_ms_per_frame"] < 50 and 10 < e["peak_rss_mb"] < 2000
        assert 0.0 <= e["frr_at_0.5_without_confusables"] <= 1.0
        assert 0.0 < e["confusable_hours"] < res["negative_hours"] and 0.0 < e["threshold_at_0.5"] < 1.0
    assert (tmp_path / "det.png").stat().st_size > 1000
    assert "100% of the negatives scored" in log
    for word in ("hey_snips", "hey_jarvis"):  # one test set per wake word, as raw int16 and spans
        d = tmp_path / "cache" / f"kws_testset-v4-2026-0.02-6-{word}"
        meta = json.loads((d / "testset.json").read_text())
        assert len(meta["spans_s"]) == 6 and (d / "negatives.i16").stat().st_size == meta["negative_frames"] * 2560
        assert sum(n for n, _ in meta["segments"]) == meta["negative_frames"]
        assert {k for _, k in meta["segments"]} <= {"sentence", "words", "confusable", "noise", "silence"}
    again, log = kws_eval("ours_hey_snips")
    assert "hey snips: reusing the test set" in log and "building" not in log
    assert again["engines"]["ours_hey_snips"]["frr_at_0.5"] == res["engines"]["ours_hey_snips"]["frr_at_0.5"]
    assert again["negative_hours"] == res["negative_hours"]


def test_hard_negative_mining_returns_the_highest_scoring_windows(tiny):
    from assistant.kws.backbone import Backbone
    from assistant.kws.head import Head

    _, _, out, _, _ = tiny
    voices, _ = D.split_voices(D.espeak_voices())
    hard, scores = T.mine_hard_negatives(out, "hey snips", voices[:6], minutes=0.3, top=4, seed=3)
    assert hard.shape == (4, T.SPAN, 40) and np.isfinite(hard).all()
    assert list(scores) == sorted(scores, reverse=True)  # the worst mistakes first
    # the windows are exactly what the streaming engine scored: replayed, they score the same
    b, h = Backbone(out / "backbone.onnx"), Head.load(out / "head.npz")
    emb = np.stack([[b(w[s * T.STEP : s * T.STEP + T.CONTEXT]) for s in range(T.WINDOW)] for w in hard])
    assert np.allclose(h.forward(emb.astype(np.float64)), scores, atol=1e-4)
    assert len(np.unique(hard.reshape(4, -1), axis=0)) == 4  # distinct windows
