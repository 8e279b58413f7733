"""Log-mel features in vectorised numpy, identical whether audio arrives frame by frame or at once.

25 ms Hann windows every 10 ms (8 per 80 ms frame), 512-point FFT, N_MELS triangular mel filters
from 60 Hz to 7.6 kHz (Slaney-style HTK mel scale), log(power + 1e-6). A window at sample offset
i*HOP is computed the same way in both paths: the streaming extractor keeps the samples that do
not yet fill a window and prepends them to the next chunk, so window boundaries never move.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
WIN = 400  # 25 ms
HOP = 160  # 10 ms
N_FFT = 512
N_MELS = 40
F_MIN, F_MAX = 60.0, 7600.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=4)
def mel_matrix(n_mels: int = N_MELS) -> np.ndarray:
    """(N_FFT // 2 + 1, n_mels) triangular filters, read-only."""
    bins = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(F_MIN)), _hz_to_mel(np.array(F_MAX)), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None, :] - lo) / (mid - lo)
    down = (hi - bins[None, :]) / (hi - mid)
    m = np.maximum(0.0, np.minimum(up, down)).T
    m.setflags(write=False)
    return m


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    w = np.hanning(WIN).astype(np.float64)
    w.setflags(write=False)
    return w


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Features of every whole window in `samples` (int16 or float): (n_windows, N_MELS) float32."""
    x = np.asarray(samples, np.float64) / 32768.0
    n = 0 if len(x) < WIN else 1 + (len(x) - WIN) // HOP
    if n == 0:
        return np.zeros((0, N_MELS), np.float32)
    idx = np.arange(WIN)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * _window(), N_FFT, axis=1)) ** 2
    # One window's mel vector must not depend on how many windows share the product (BLAS may
    # block a matrix product differently by shape), so project with einsum's plain loops.
    mel = np.einsum("wf,fm->wm", spec, mel_matrix(), optimize=False)
    return np.log(mel + 1e-6).astype(np.float32)


class StreamingLogMel:
    """Feed audio in any chunk sizes; get exactly the windows `log_mel` gives for the whole."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, np.float64)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Features of the windows completed by these samples: (k, N_MELS)."""
        x = np.concatenate([self._pending, np.asarray(samples, np.float64)])
        out = log_mel(x)
        self._pending = x[len(out) * HOP :]
        return out

    def reset(self) -> None:
        """Forget buffered samples (a new stream)."""
        self._pending = np.zeros(0, np.float64)
