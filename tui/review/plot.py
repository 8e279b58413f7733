"""A score-over-time plot in text: block characters on a fixed 0..1 scale, so a low curve looks low."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCKS = " ▁▂▃▄▅▆▇█"


def column_peaks(scores: Sequence[float], width: int) -> np.ndarray:
    """(n,) scores -> (min(n, width),): one value per column, the maximum over the frames it covers
    (a peak must never vanish into a bucket)."""
    a = np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    if len(a) <= width:
        return a
    edges = np.linspace(0, len(a), width + 1).astype(int)
    return np.maximum.reduceat(a, edges[:-1])


def score_rows(scores: Sequence[float], width: int, height: int = 2) -> list[str]:
    """`height` lines of block characters, top line first, one column per frame (or bucket of frames);
    a full column is a score of 1.0, an empty one 0.0, with 8 * height steps between."""
    peaks = column_peaks(scores, width)
    levels = np.rint(peaks * 8 * height).astype(int)  # (columns,) in 0 .. 8 * height
    rows = []
    for r in range(height - 1, -1, -1):  # the top row shows what is above 8 * r
        cell = np.clip(levels - 8 * r, 0, 8)
        rows.append("".join(_BLOCKS[c] for c in cell))
    return rows
