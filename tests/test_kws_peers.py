"""bench/kws_peers.py: the peer engines run on real models (openWakeWord's ONNX files from its
PyPI wheel, microWakeWord's TFLite model from pymicro-wakeword) and tell "hey jarvis" from noise
and from an unrelated sentence. Never skipped: a peer that cannot be obtained fails the test."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from models import data as D

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kws_peers", ROOT / "bench" / "kws_peers.py")
P = importlib.util.module_from_spec(_spec)
sys.modules["kws_peers"] = P
_spec.loader.exec_module(P)

FRAME = P.FRAME_SAMPLES
WARM_FRAMES = 25  # 2 s of light noise first, so every engine's windows have filled
PEERS = {"openwakeword": P.openwakeword_hey_jarvis, "microwakeword": P.microwakeword_hey_jarvis}
# Both peers were trained on other synthetic voices; these two are ones both hear clearly.
POSITIVE_VOICES = [D.Voice("flite", "kal16"), D.Voice("en-gb-x-rp", "sandro")]


@pytest.fixture(scope="session")
def peer_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kws_peers")


def obtain(name: str, cache: Path):
    try:
        return PEERS[name](cache)
    except P.PeerUnavailable as e:
        why = str(e)
    pytest.fail(f"peer {name} unavailable: {why}", pytrace=False)


def clip(text: str | None, voice: D.Voice | None, rng: np.random.Generator) -> np.ndarray:
    """Warm-up, then 3 s of light noise with `text` spoken from 0.5 s. (frames * 1280,) int16"""
    n = (WARM_FRAMES + 38) * FRAME
    x = rng.standard_normal(n) * 30.0
    if text is not None:
        speech = D.synthesize(text, voice).astype(np.float64)[: 2 * 16000]
        start = WARM_FRAMES * FRAME + 8000
        x[start : start + len(speech)] += speech
    return np.clip(x, -32768, 32767).astype(np.int16)


def scores(score, reset, samples: np.ndarray) -> list[float | None]:
    reset()
    return [score(f) for f in samples.reshape(-1, FRAME)]


def peak(score, reset, samples: np.ndarray) -> float:
    s = scores(score, reset, samples)[WARM_FRAMES:]
    assert all(v is not None for v in s), "windows still filling after 2 s"
    return max(s)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_scores_hey_jarvis_above_noise_and_an_unrelated_sentence(name, peer_cache):
    score, reset = obtain(name, peer_cache)
    rng = np.random.default_rng(11)
    negatives = {
        "light noise": clip(None, None, rng),
        "loud pink noise": (D.noise("pink", (WARM_FRAMES + 38) * FRAME, rng) * 3000).astype(np.int16),
        **{f"weather/{v.name}": clip("what is the weather like today", v, rng) for v in POSITIVE_VOICES},
    }
    worst_negative = max(peak(score, reset, x) for x in negatives.values())
    for v in POSITIVE_VOICES:
        hit = peak(score, reset, clip("hey jarvis", v, rng))
        # 3 logits of margin: a peer that scored by loudness or at random would not keep it
        assert hit > worst_negative + 3.0, (name, v.name, hit, worst_negative)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_streams_are_none_while_filling_then_repeat_exactly_after_reset(name, peer_cache):
    score, reset = obtain(name, peer_cache)
    x = clip("hey jarvis", POSITIVE_VOICES[0], np.random.default_rng(3))
    first, second = scores(score, reset, x), scores(score, reset, x)
    assert first == second
    filling = {"openwakeword": 24, "microwakeword": 2}[name]  # 16 embeddings of 76 mels; 5 steps of 30 ms
    assert first[:filling] == [None] * filling
    assert all(isinstance(v, float) and np.isfinite(v) for v in first[filling:])
    with pytest.raises(ValueError, match="1280"):
        score(x[:640])


def test_openwakeword_damaged_wheel_is_reported_and_removed(tmp_path):
    wheel = tmp_path / f"openwakeword-{P.OWW_VERSION}-py3-none-any.whl"
    wheel.write_bytes(b"not a zip file")
    with pytest.raises(P.PeerUnavailable, match="damaged"):
        P.openwakeword_hey_jarvis(tmp_path)
    assert not wheel.exists()


def test_logit_is_monotone_and_finite_at_the_ends():
    p = np.array([0.0, 1e-9, 1e-3, 0.5, 0.999, 1 - 1e-9, 1.0], np.float32)
    z = [P.logit(v) for v in p]
    assert z[3] == 0.0 and all(np.isfinite(z))
    assert np.all(np.diff(z) >= 0)
    assert z[0] == z[1] == pytest.approx(-16.118, abs=1e-3)
