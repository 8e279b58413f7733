"""The device's contribution to a learning round: the head's mean binary cross-entropy gradient over
the owner's labelled rows, as one flat vector, clipped to L2 norm C. Pure functions, no I/O.

Labels: true accept and missed wake word are positives (1), false accept is a negative (0), unsure
is skipped, and so is a row without embeddings or with fewer frames than the head's window.

Which window of a row: a detection or near miss carries exactly the head's window (the frames that
scored); a "you missed me" capture carries every frame of its seconds, and the wake word sits
somewhere inside. Such a longer row contributes its **highest-scoring window under the round's head**:
the max-pooling loss of Sun et al., "Max-pooling loss training of LSTM networks for small-footprint
keyword spotting" (SLT 2016). For a positive it is the head's best guess of where the word was said
(the last window is usually after it: people press "missed me" once they have finished speaking);
for a negative it is the hardest false alarm in the clip. The choice is re-made every round with the
round's head, as the max-pooling gradient requires.

Implicit negatives: a near miss the owner left unlabelled for a day (`implicit_before`) counts as a
negative. The owner reviews near misses in the TUI, and the one that was the wake word is the one they
mark; the rest is the device's hardest background audio. Without them the labels constrain only the
windows near the wake word, while the threshold at a fixed false-accept rate is set by the background's
highest peaks: bench/fl_sim.py measured centralised training on labels alone *raising* FRR at 0.5 FA/h
(0.60 -> 0.96 on 100 devices), and the same training with the background's near misses lowering it
(0.62 -> 0.33). Rows that were learned from are not used again (see participate.new_labels).

Layout of the flat vector (the order `sda` sums, and the coordinator unflattens): W1 row-major
(window*embed, hidden), then b1 (hidden,), w2 (hidden,), b2 (1,): `Head.flat()`'s order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ModelError
from ..kws.head import Head
from ..store import Label, Record
from ..store.rows import Kind
from .errors import LearningError

#: The target of each label the gradient uses; UNSURE is absent, so skipped.
TARGETS: dict[Label, float] = {Label.TRUE_ACCEPT: 1.0, Label.MISSED_WAKE_WORD: 1.0, Label.FALSE_ACCEPT: 0.0}


def flatten(head: Head) -> np.ndarray:
    """Every parameter of `head` as one vector (d,) float64, laid out W1 (row-major), b1, w2, b2."""
    return head.flat()


def unflatten(vec: np.ndarray, like: Head) -> Head:
    """The head with `like`'s shapes (window, embed, hidden) and parameters `vec` (d,) laid out as `flatten`."""
    try:
        return like.with_flat(vec)
    except ModelError as exc:
        raise LearningError(f"cannot unflatten into a head of {like.size} parameters: {exc}") from None


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class Examples:
    """Labelled windows for the head: x (N, window, embed) float64, y (N,) in {0, 1}, and the store ids
    they came from (one per example, same order)."""

    x: np.ndarray
    y: np.ndarray
    ids: tuple[int, ...]
    skipped: int  # labelled rows left out: unsure, no embeddings, or a shape the head cannot take

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class DeviceGradient:
    """The clipped mean gradient (d,) float64 with ||gradient|| <= clip_norm, its norm before clipping, and
    the store ids of the examples behind it."""

    gradient: np.ndarray
    norm: float
    clip_norm: float
    ids: tuple[int, ...]

    @property
    def clipped(self) -> bool:
        """True when clipping shrank the gradient."""
        return self.norm > self.clip_norm


def windows(embeddings: np.ndarray, window: int) -> np.ndarray:
    """Every window of `window` consecutive frames: (k, embed) -> (k - window + 1, window, embed), a view."""
    return sliding_window_view(embeddings, window, axis=0).transpose(0, 2, 1)


def fits(r: Record, head: Head) -> bool:
    """True when the row carries at least a window of embeddings of the head's width."""
    e = r.embeddings
    return e is not None and e.ndim == 2 and e.shape[1] == head.embed and len(e) >= head.window


def usable(r: Record, head: Head) -> bool:
    """True when the row gives `head` a labelled example: a label other than unsure, and embeddings that fit."""
    return r.label in TARGETS and fits(r, head)


def implicit_negative(r: Record, implicit_before: float | None) -> bool:
    """True for a near miss left unlabelled since before `implicit_before` (unix s; None: never)."""
    return implicit_before is not None and r.label is None and r.kind is Kind.NEAR_MISS and r.time_s < implicit_before


def examples_from(records: Iterable[Record], head: Head, implicit_before: float | None = None) -> Examples:
    """The labelled windows of `records` for `head` (see the module doc for which window a row gives), and the
    implicit negatives: unlabelled near misses older than `implicit_before` (None: none)."""
    picked: list[tuple[int, float, np.ndarray]] = []
    skipped = 0
    for r in records:
        if r.label is None:
            if implicit_negative(r, implicit_before) and fits(r, head):
                picked.append((r.id, 0.0, r.embeddings))
            continue
        if not usable(r, head):
            skipped += 1
            continue
        picked.append((r.id, TARGETS[r.label], r.embeddings))
    if not picked:
        return Examples(np.zeros((0, head.window, head.embed)), np.zeros(0), (), skipped)
    # Score every window of every row in one batch, then keep each row's best window.
    per_row = [windows(e, head.window) for _, _, e in picked]
    counts = np.array([len(w) for w in per_row])
    all_windows = np.concatenate(per_row).astype(np.float64)
    scores = head.logits(all_windows)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # argmax within each row's segment: mask the other rows out of a (rows, max_count) table
    table = np.full((len(per_row), counts.max()), -np.inf)
    rows, offsets = np.repeat(np.arange(len(per_row)), counts), np.arange(len(scores)) - np.repeat(starts, counts)
    table[rows, offsets] = scores
    best = starts + table.argmax(axis=1)
    return Examples(all_windows[best], np.array([y for _, y, _ in picked]), tuple(i for i, _, _ in picked), skipped)


def mean_gradient(head: Head, examples: Examples) -> np.ndarray:
    """The gradient of the mean binary cross-entropy over `examples`, (d,) float64 laid out as `flatten`."""
    if not len(examples):
        raise LearningError("no usable labelled rows: a gradient needs at least one labelled window")
    return head.loss_and_grad(examples.x, examples.y)[1]


def clip_l2(g: np.ndarray, clip_norm: float) -> np.ndarray:
    """g (d,) scaled down to L2 norm at most `clip_norm`, its direction kept (unchanged when already inside)."""
    if not clip_norm > 0:
        raise LearningError(f"clip norm must be > 0, got {clip_norm!r}")
    g = np.asarray(g, np.float64)
    norm = float(np.linalg.norm(g))
    return g * (clip_norm / norm) if norm > clip_norm else g.copy()


def device_gradient(head: Head, records: Iterable[Record], clip_norm: float,
                    implicit_before: float | None = None) -> DeviceGradient:
    """The device's clipped mean gradient over its labelled `records` (and implicit negatives older than
    `implicit_before`); LearningError when none is usable."""
    ex = examples_from(records, head, implicit_before)
    g = mean_gradient(head, ex)
    return DeviceGradient(clip_l2(g, clip_norm), float(np.linalg.norm(g)), float(clip_norm), ex.ids)
