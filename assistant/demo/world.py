"""The demo's world: what each simulated device hears in a day, and the held-out audio its before/after is
measured on. All speech is synthesised by espeak-ng in voices the shipped model never heard in training (the
test side of models.data.split_voices), so the figures are not the training set read back.

A day is a stream: utterances (the wake word, phrases that sound like it, sentences, random words) with pauses
between them, over the device's own background noise at its own SNR. The stream knows where each wake word
is, which is how the simulated owner knows which detections were right.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE
from ..errors import AssistantError

WAKEWORD = "hey snips"
SEED = 2611  # the demo's own seed stream: never a training or benchmark seed


def models_data():
    """models.data from the source checkout (the demo, like the training recipe, needs it and espeak-ng)."""
    from ..kws.model import CHECKOUT

    root = str(CHECKOUT.parent)
    if CHECKOUT.is_dir() and root not in sys.path:
        sys.path.append(root)  # a console script does not put the checkout on the path; `models` is not installed
    try:
        from models import data
    except ImportError as exc:
        raise AssistantError("the demo needs the source checkout (it synthesises speech with models/data.py):"
                             " run it from the repository with `make demo`") from exc
    import shutil

    if shutil.which("espeak-ng") is None:
        raise AssistantError("the demo synthesises speech with espeak-ng: `sudo apt-get install espeak-ng`"
                             " (`make demo` does it when run as root)")
    return data


def held_out_voices() -> list:
    """espeak-ng voices on the test side of the training split, in a fixed shuffled order (accents mixed)."""
    D = models_data()
    _, test = D.split_voices(D.espeak_voices())
    order = np.random.default_rng(SEED).permutation(len(test))
    return [test[i] for i in order]


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class Stream:
    """samples (n,) int16 at 16 kHz; wake (w, 2) seconds [start, end) of each wake word in it; voice's name."""

    samples: np.ndarray
    wake: np.ndarray
    voice: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def compose(voice, texts: list[str], is_wake: list[bool], rng: np.random.Generator, snr_db: float,
            colour: str, gap_s: tuple[float, float] = (1.0, 4.0)) -> Stream:
    """The utterances `texts` in `voice` one after another with pauses, over `colour` noise at `snr_db`."""
    D = models_data()
    speech = D.synthesize_many([(t, voice, int(rng.integers(30, 70)), int(rng.integers(140, 185))) for t in texts])
    parts, wake, at = [], [], 0
    for s, w in zip(speech, is_wake, strict=True):
        gap = np.zeros(int(rng.uniform(*gap_s) * SAMPLE_RATE))
        parts += [gap, s.astype(np.float64)]
        at += len(gap)
        if w:
            wake.append((at / SAMPLE_RATE, (at + len(s)) / SAMPLE_RATE))
        at += len(s)
    parts.append(np.zeros(2 * SAMPLE_RATE))
    clean = np.concatenate(parts)
    mixed = D.mix_at_snr(clean, D.noise(colour, len(clean), rng), snr_db)
    return Stream(D.to_int16(mixed), np.array(wake, np.float64).reshape(-1, 2), voice.name)


def device_day(index: int, day: int, wake_words: int = 12, others: int = 36) -> Stream:
    """Device `index`'s day number `day`: its own voice, noise colour and SNR (the same every day); wake words
    among confusable phrases, sentences and random words (the evaluation's sentences are never among them)."""
    D = models_data()
    own = np.random.default_rng([SEED, 1, index])
    snr, colour = float(own.uniform(10, 25)), str(own.choice(["white", "pink", "brown"]))
    rng = np.random.default_rng([SEED, 1, index, day])
    voices = held_out_voices()
    voice = voices[index % len(voices)]
    kinds = rng.permutation([0] * wake_words + [1, 2, 3] * (others // 3))
    texts = [WAKEWORD if k == 0 else str(rng.choice(D.CONFUSABLE[WAKEWORD])) if k == 1 else
             str(rng.choice(D.SENTENCES)) if k == 2 else D.word_sequence(rng) for k in kinds]
    return compose(voice, texts, [k == 0 for k in kinds], rng, snr, colour)


def evaluation_streams(devices: int, wake_per_device: int = 4, negative_minutes: float = 20.0
                       ) -> tuple[list[Stream], Stream]:
    """(one stream of held-out wake words per device voice, one negative stream): what before and after are
    measured on. Other pitches, speeds and noise than the devices' days; the negatives are the evaluation's own
    sentences (models.data.TEST_SENTENCES) and random words, in the devices' voices."""
    D = models_data()
    voices = held_out_voices()
    rng = np.random.default_rng([SEED, 2])
    positives = [compose(voices[i % len(voices)], [WAKEWORD] * wake_per_device, [True] * wake_per_device, rng,
                         float(rng.uniform(10, 25)), str(rng.choice(["white", "pink", "brown"])))
                 for i in range(devices)]
    texts: list[str] = []
    seconds = 0.0
    while seconds < negative_minutes * 60:  # about 2.5 s an utterance, 2.5 s a pause
        texts.append(str(rng.choice(D.TEST_SENTENCES)) if rng.random() < 0.5 else D.word_sequence(rng))
        seconds += 5.0
    chunks = [texts[i::devices] for i in range(min(devices, len(texts)))]
    parts = [compose(voices[i % len(voices)], c, [False] * len(c), rng, float(rng.uniform(10, 25)),
                     str(rng.choice(["white", "pink", "brown"]))) for i, c in enumerate(chunks)]
    negative = Stream(np.concatenate([p.samples for p in parts]), np.zeros((0, 2)), "mixed")
    return positives, negative
