"""Before and after: the false rejection rate on held-out wake words and the false accepts per hour on held-out
speech, for a head over the frozen backbone. The backbone's embeddings are computed once per stream (they do
not change between releases), then each head scores every window of them; the detector is the device's
(threshold, patience 1, 2 s refractory period) run over those scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import FRAME_MS, FRAME_SAMPLES
from ..kws.backbone import Backbone
from ..kws.head import Head
from ..learning.validation import clip_embeddings
from .world import Stream

FRAME_S = FRAME_MS / 1000
REFRACTORY_S = 2.0
HIT_AFTER_S = 1.0  # a detection up to this long after the wake word ends is the wake word's
BATCH = 4096


@dataclass(frozen=True, eq=False)
class Embedded:
    """A stream's embeddings (k, embed) float32; `first` is the frame the first belongs to."""

    embeddings: np.ndarray
    first: int
    stream: Stream


def embed(backbone: Backbone, stream: Stream) -> Embedded:
    """The embeddings the device's engine computes for `stream`."""
    e = clip_embeddings(backbone, stream.samples)
    n_frames = len(stream.samples) // FRAME_SAMPLES
    return Embedded(e, n_frames - len(e), stream)


def scores(head: Head, e: Embedded) -> tuple[np.ndarray, np.ndarray]:
    """(times (m,) seconds at the end of each scored frame, scores (m,)) of `head` over `e`."""
    k = len(e.embeddings) - head.window + 1
    if k <= 0:
        return np.zeros(0), np.zeros(0)
    windows = np.lib.stride_tricks.sliding_window_view(e.embeddings, head.window, axis=0)  # (k, embed, window)
    out = np.concatenate([head.forward(windows[i:i + BATCH].transpose(0, 2, 1)) for i in range(0, k, BATCH)])
    frames = e.first + head.window - 1 + np.arange(k)
    return (frames + 1) * FRAME_S, out


def detections(times: np.ndarray, s: np.ndarray, threshold: float) -> np.ndarray:
    """The times the detector fires: a score at or above `threshold`, then quiet for REFRACTORY_S."""
    out: list[float] = []
    for t in times[s >= threshold]:
        if not out or t - out[-1] >= REFRACTORY_S:
            out.append(float(t))
    return np.array(out)


@dataclass(frozen=True)
class Accuracy:
    """FRR over `wake_words` held-out wake words; false accepts per hour over `negative_hours` of speech."""

    frr: float
    fa_per_hour: float
    wake_words: int
    negative_hours: float
    false_accepts: int


def accuracy(head: Head, positives: list[Embedded], negative: Embedded, threshold: float) -> Accuracy:
    """The head's FRR and FA/h at `threshold` (see the module doc)."""
    missed = total = 0
    for e in positives:
        fired = detections(*scores(head, e), threshold)
        for start, end in e.stream.wake:
            total += 1
            missed += not np.any((fired >= start) & (fired <= end + HIT_AFTER_S))
    hours = negative.stream.seconds / 3600
    fa = len(detections(*scores(head, negative), threshold))
    return Accuracy(missed / max(total, 1), fa / hours, total, hours, fa)
