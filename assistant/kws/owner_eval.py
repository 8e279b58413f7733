"""How a model does on its owner's own labelled recordings (`assistant eval DIR`).

DIR/positive/*.wav|flac: each file holds the wake word once; it is hit when a detection falls
between the file's start and 0.5 s after its end (the engine hears nothing after a file: clips the
device saves end at or after the moment it should fire). DIR/negative/*.wav|flac: anything else;
their total duration gives the hours. Every file is its own stream through the same Engine (reset
per file); the figures come from assistant.kws.evaluation, with the detector's patience and
refractory period, so a threshold read here means the same in `assistant detect`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import SAMPLE_RATE, frames, read_audio
from ..errors import RecordingsError
from . import evaluation as E
from .engine import Engine

AUDIO_SUFFIXES = (".wav", ".flac")
LAYOUT = "positive/*.wav|flac (each file holds the wake word once) and negative/*.wav|flac (anything else)"


@dataclass(frozen=True)
class Recordings:
    """The audio files of an owner's folder, sorted by name."""

    positive: tuple[Path, ...]
    negative: tuple[Path, ...]


def find_recordings(root: Path) -> Recordings:
    """The .wav/.flac files in root/positive and root/negative; RecordingsError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise RecordingsError(f"{root}: no such directory; expected one holding {LAYOUT}")
    lacking = [f"{label}/" for label in ("positive", "negative") if not (root / label).is_dir()]
    if lacking:
        raise RecordingsError(f"{root}: no {' or '.join(lacking)} folder; expected {LAYOUT}")
    found = {}
    for label in ("positive", "negative"):
        sub = root / label
        files = tuple(sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
        if not files:
            raise RecordingsError(f"{sub}: no .wav or .flac files; expected {LAYOUT}")
        found[label] = files
    return Recordings(found["positive"], found["negative"])


def score_stream(engine: Engine, samples: np.ndarray) -> np.ndarray:
    """The engine's logit for every 80 ms frame of one recording, from a reset (NaN while its
    windows fill; the last frame is zero-padded). samples: (n,) int16 -> (ceil(n / 1280),)"""
    engine.reset()
    out = [engine.process(f).logit for f in frames(samples)]
    return np.array([np.nan if s is None else s for s in out], np.float64)


@dataclass(frozen=True)
class OwnerEvaluation:
    """Figures on an owner's recordings. Thresholds of `sweep` and `at_threshold` are logits."""

    positives: int
    negative_files: int
    negative_hours: float
    patience: int
    refractory_s: float
    threshold: float  # the probability asked about
    at_threshold: E.OperatingPoint
    sweep: E.ThresholdSweep

    def as_json(self) -> dict:
        """Flat figures, like bench/kws_eval.py's: frr_at_B, threshold_at_B (probability) and
        logit_threshold_at_B per budget B, and the rates at `threshold`."""
        out: dict = {"positives": self.positives, "negative_files": self.negative_files,
                     "negative_hours": self.negative_hours, "patience": self.patience,
                     "refractory_s": self.refractory_s}
        for b in self.sweep.budgets:
            out[f"frr_at_{b.budget_fa_per_hour}"] = round(b.point.frr, 4)
            out[f"threshold_at_{b.budget_fa_per_hour}"] = E.probability(b.point.threshold)
            out[f"logit_threshold_at_{b.budget_fa_per_hour}"] = b.point.threshold
        out["threshold"] = self.threshold
        out["fa_per_hour_at_threshold"] = round(self.at_threshold.fa_per_hour, 4)
        out["frr_at_threshold"] = round(self.at_threshold.frr, 4)
        return out


def evaluate_recordings(root: Path, engine: Engine, threshold: float = 0.5, patience: int = 2,
                        refractory_s: float = 2.0, progress: Callable[[int, int], None] | None = None
                        ) -> OwnerEvaluation:
    """Stream every recording under root through `engine` and measure it. `threshold` is a
    probability, as `assistant detect` takes it; progress(files_done, files_total) after each file.
    Raises RecordingsError for the layout and AudioError for a file that cannot be read."""
    rec = find_recordings(root)
    total, done = len(rec.positive) + len(rec.negative), 0

    def scored(paths: tuple[Path, ...]) -> tuple[list[np.ndarray], list[int]]:
        nonlocal done
        scores, lengths = [], []
        for path in paths:
            samples = read_audio(path)
            scores.append(score_stream(engine, samples))
            lengths.append(len(samples))
            done += 1
            if progress is not None:
                progress(done, total)
        return scores, lengths

    pos_streams, pos_samples = scored(rec.positive)
    neg_streams, neg_samples = scored(rec.negative)
    negative_hours = sum(neg_samples) / SAMPLE_RATE / 3600
    if negative_hours <= 0:
        raise RecordingsError(f"{Path(root) / 'negative'}: the recordings hold no audio; expected {LAYOUT}")
    # NaN gaps keep the streams apart: no refractory merge across files, no hit window spilling over.
    gap = max(E.whole_frames(refractory_s) + patience, E.whole_frames(E.HIT_TAIL_S) + 2)
    positive, offsets = E.join_streams(pos_streams, gap)
    starts_s = offsets * E.FRAME_S
    spans_s = np.stack([starts_s, starts_s + np.array(pos_samples) / SAMPLE_RATE], axis=1)
    negative, _ = E.join_streams(neg_streams, gap)
    sweep = E.sweep_thresholds(positive, spans_s, negative, negative_hours, patience=patience,
                               refractory_s=refractory_s)
    here = E.operating_point(positive, spans_s, negative, negative_hours, E.logit(threshold), patience=patience,
                             refractory_s=refractory_s)
    return OwnerEvaluation(len(rec.positive), len(rec.negative), negative_hours, patience, refractory_s, threshold,
                           here, sweep)


def render_table(result: OwnerEvaluation) -> str:
    """The human-readable report."""
    lines = [
        f"positives        {result.positives} recordings",
        f"negatives        {result.negative_files} recordings, {result.negative_hours:.3f} h",
        f"detector         patience {result.patience}, refractory {result.refractory_s:g} s",
        "",
        "FA/h budget   FRR      threshold   (logit)",
    ]
    for b in result.sweep.budgets:
        lines.append(f"{b.budget_fa_per_hour!s:>11}   {b.point.frr:6.3f}   {_probability_text(b.point.threshold)}"
                     f"   ({b.point.threshold:.3f})")
    a = result.at_threshold
    lines += ["", f"at --threshold {result.threshold:g}: {a.fa_per_hour:.3f} false accepts per hour, FRR {a.frr:.3f}"]
    return "\n".join(lines)


def _probability_text(logit_value: float) -> str:
    """A threshold as a probability with enough decimals to tell it from 1 (detect takes it so)."""
    p = E.probability(logit_value)
    if p >= 1.0:
        return "1.0 (above what detect's --threshold can express)"
    return f"{p:.{min(15, max(3, int(-math.log10(1.0 - p)) + 3))}f}"
