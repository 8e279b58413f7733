"""Synthetic speech for training and testing wake-word models, and its augmentation.

Voices are espeak-ng accents crossed with its voice variants (about a thousand), each with its
own pitch and speed ranges; they are split into train and test sets by a hash of their name, so
the split is stable and no test voice is ever heard in training. Augmentation: gain, speed
(resampling), a synthetic room impulse response (exponentially decaying noise), and additive
noise at a chosen SNR (white, pink, brown, or any recording).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import wave
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000

#: Phrases that sound like each wake word: hard negatives.
CONFUSABLE = {
    "hey snips": ["hey snaps", "hey sniffs", "say snips", "hey slips", "hey ships", "a snip", "hey skips",
                  "hey nips", "they snip", "hey tips"],
    "hey jarvis": ["hey jarvi", "hey service", "hey travis", "hey harvest", "hey jar", "a jarvis",
                   "hey marvin", "hey jaws", "hey carpets", "say jarvis"],
}

#: Ordinary speech: negatives that must never fire.
SENTENCES = [
    "what is the weather like today", "please turn off the kitchen lights", "i will be home at six",
    "the cat is sleeping on the sofa", "can you set a timer for ten minutes", "we need more milk and bread",
    "the train leaves from platform four", "my sister lives in a small town", "open the window please",
    "that was a very good movie", "how far is it to the station", "the meeting starts after lunch",
    "turn the music down a little", "remind me to call my mother", "snippets of the news at nine",
    "jars of jam on the top shelf", "service was slow at the restaurant", "hey there how are you",
]

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: accent plus variant, e.g. en-us+f3."""

    accent: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


def espeak_variants() -> list[str]:
    """The voice variants espeak-ng has here (m1, f3, Alex, ...)."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3] for line in out.splitlines()[1:] if len(line.split()) >= 4})


def espeak_voices() -> list[Voice]:
    """Every accent crossed with every variant."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: `sudo apt-get install espeak-ng` (make test does it as root)")
    return [Voice(a, v) for a in ACCENTS for v in espeak_variants()]


def split_voices(voices: list[Voice], test_fraction: float = 0.2) -> tuple[list[Voice], list[Voice]]:
    """(train, test) by a hash of each voice's variant: whole variants are held out, in every
    accent, so a test voice's timbre is never heard in training. Stable across runs and machines."""
    def held_out(v: Voice) -> bool:
        h = int.from_bytes(hashlib.sha256(b"voice-split\x00" + v.variant.encode()).digest()[:4], "big")
        return h / 2**32 < test_fraction

    return [v for v in voices if not held_out(v)], [v for v in voices if held_out(v)]


def synthesize(text: str, voice: Voice, pitch: int = 50, speed: int = 160) -> np.ndarray:
    """espeak-ng speech, resampled to 16 kHz int16. (n,)"""
    out = subprocess.run(["espeak-ng", "-v", voice.name, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    return resample(x, rate, SAMPLE_RATE).astype(np.int16)


def resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Linear-interpolation resampling (float64). Enough for 16 kHz wake-word features."""
    n_out = round(len(x) * rate_out / rate_in)
    if n_out <= 1 or len(x) <= 1:
        return np.zeros(max(n_out, 0))
    return np.interp(np.linspace(0, len(x) - 1, n_out), np.arange(len(x)), x)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Faster (factor > 1) or slower speech, pitch shifting with it, as a tape would."""
    return resample(np.asarray(x, np.float64), factor, 1.0)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f) or brown (1/f^2) noise. (n,) float64"""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spec /= np.sqrt(f) if kind == "pink" else f
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def mix_at_snr(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + background scaled so that 10 log10(P_speech / P_background) = snr_db. float64"""
    s = np.asarray(speech, np.float64)
    b = np.resize(np.asarray(background, np.float64), len(s))
    ps, pb = np.mean(s**2), np.mean(b**2)
    if ps == 0 or pb == 0:
        return s.copy()
    return s + b * np.sqrt(ps / (pb * 10 ** (snr_db / 10)))


def room_impulse(rt60_s: float, rng: np.random.Generator, length_s: float = 0.3) -> np.ndarray:
    """A synthetic room: a direct path then exponentially decaying noise reaching -60 dB at rt60."""
    n = int(length_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    h = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s) * 0.3
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x convolved with h, same length as x (FFT convolution)."""
    n = len(x) + len(h) - 1
    y = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)[: len(x)]
    return y


def to_int16(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale down if needed so the loudest sample is at most `peak` of full scale; int16."""
    m = np.max(np.abs(x)) if len(x) else 0.0
    if m > peak * 32767:
        x = x * (peak * 32767 / m)
    return np.round(x).astype(np.int16)


def augment(speech: np.ndarray, rng: np.random.Generator, backgrounds: list[np.ndarray] | None = None,
            snr_db: tuple[float, float] = (-5.0, 20.0)) -> np.ndarray:
    """One random augmentation of a clip: speed 0.9-1.1, a room (half the time), noise at an SNR
    drawn from `snr_db`, gain -12..+6 dB. int16."""
    x = change_speed(speech, rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:
        x = reverberate(x, room_impulse(rng.uniform(0.2, 0.8), rng))
    bg = (backgrounds[rng.integers(len(backgrounds))] if backgrounds
          else noise(str(rng.choice(["white", "pink", "brown"])), len(x), rng))
    x = mix_at_snr(x, bg, rng.uniform(*snr_db))
    return to_int16(x * 10 ** (rng.uniform(-12, 6) / 20))
