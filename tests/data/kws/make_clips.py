"""Regenerate the committed wake-word test clips: `python tests/data/kws/make_clips.py`.

Every voice here is held out of training (models.data.split_voices), so the clips test the
shipped models on speakers they never heard. Positives: each wake word once in 3 s of pink noise
at 20 dB SNR, by three held-out espeak-ng voices. Negatives: 20 s of noise of
three colours and near silence, and 20 s of evaluation-only sentences and confusable phrases.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from assistant.audio import SAMPLE_RATE, write_wav  # noqa: E402
from models import data as D  # noqa: E402

# Regression clips: held-out espeak-ng voices of three accents. The held-out recorded speaker (slt) is
# not among them: the shipped models miss that voice (bench/kws_eval.py measures and reports it).
POSITIVE_VOICES = [D.Voice("en-us", "female2"), D.Voice("en-gb", "male3"), D.Voice("en-gb-scotland", "Boris")]


def in_noise(speech: np.ndarray, rng: np.random.Generator, seconds: float = 3.0, start_s: float = 0.8) -> np.ndarray:
    clip = np.zeros(int(seconds * SAMPLE_RATE))
    start = int(start_s * SAMPLE_RATE)
    clip[start : start + len(speech)] = speech[: len(clip) - start]
    return D.to_int16(D.mix_at_snr(clip, D.noise("pink", len(clip), rng), 20.0))


def main() -> None:
    rng = np.random.default_rng(7)
    _, test = D.split_voices(D.all_voices())
    assert all(v in test for v in POSITIVE_VOICES), "positive voices must be held out of training"
    for word in ("hey snips", "hey jarvis"):
        for v in POSITIVE_VOICES:
            speech = D.synthesize(word, v, 50, 160).astype(np.float64)
            write_wav(HERE / f"positive_{word.replace(' ', '_')}_{v.accent}_{v.variant}.wav", in_noise(speech, rng))
    noise = [D.noise(c, 5 * SAMPLE_RATE, rng) * 10 ** rng.uniform(2.0, 3.3) for c in ("white", "pink", "brown")]
    noise.append(D.noise("white", 5 * SAMPLE_RATE, rng) * 20)
    write_wav(HERE / "negative_noise.wav", D.to_int16(np.concatenate(noise)))
    texts = D.TEST_SENTENCES[:4] + D.CONFUSABLE["hey snips"][:3] + D.CONFUSABLE["hey jarvis"][:3]
    voices = [*[v for v in test if v.engine == "espeak"][:6], D.Voice("flite", "slt")]
    parts = []
    for i, t in enumerate(texts):
        s = D.synthesize(t, voices[i % len(voices)], 50, 160).astype(np.float64)
        parts += [D.mix_at_snr(s, D.noise("pink", len(s), rng), 20.0), np.zeros(SAMPLE_RATE // 2)]
    write_wav(HERE / "negative_speech.wav", D.to_int16(np.concatenate(parts)))


if __name__ == "__main__":
    main()
