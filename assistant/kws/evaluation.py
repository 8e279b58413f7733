"""Wake-word evaluation math: detections from per-frame scores, and a threshold sweep giving the DET
curve, the false rejection rate at false-accept budgets and the detection delay. Pure numpy, no I/O.

Definitions (shared by bench/kws_eval.py and `assistant eval`):

- A detection fires at a frame whose score reaches the threshold on `patience` consecutive frames;
  after it the stream stays quiet for `refractory_s` (2 s), so one utterance gives one detection.
  NaN scores (the engine's windows still filling) never fire.
- Frame i ends at (i + 1) * FRAME_S seconds; a detection's time is the end of its frame.
- A keyword spoken over (start_s, end_s) is hit when a detection falls in [start_s, end_s + 0.5 s];
  its delay is the first such detection's time minus end_s.
- False accepts per hour: detections on the negative scores divided by their hours.
- At a budget of B false accepts per hour the operating point is the threshold with the lowest FRR
  among those with at most B false accepts per hour (the lowest such threshold on ties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FRAME_S = 0.08
REFRACTORY_S = 2.0
HIT_TAIL_S = 0.5
BUDGETS = (0.1, 0.5, 1.0)
#: Thresholds tried besides the negative peaks: a grid over the logits our engine reports.
LOGIT_GRID = np.linspace(-10, 30, 161)
#: This many of the highest negative scores are tried as thresholds: the budgets are decided there.
TOP_PEAKS = 300


def whole_frames(seconds: float, frame_s: float = FRAME_S) -> int:
    """Whole frames in `seconds` (the 2 s refractory period: 25 frames of 80 ms)."""
    return int(seconds / frame_s + 1e-9)


def events(scores: np.ndarray, threshold: float, refractory_frames: int, patience: int = 1) -> np.ndarray:
    """Frame indices where a detection fires. scores: (frames,) float, NaN never fires. -> (k,) int

    Fires at the `patience`-th consecutive frame at or above `threshold`; the next `refractory_frames`
    frames after a detection are quiet, and a run counts only frames after the quiet period (as
    assistant.kws.detector.Detector does on a stream).
    """
    if patience < 1 or refractory_frames < 0:
        raise ValueError(f"need patience >= 1 and refractory_frames >= 0; got {patience}, {refractory_frames}")
    above = np.asarray(scores, np.float64) >= threshold
    if patience > 1:
        runs = np.concatenate([[0], np.cumsum(above)])
        ready = np.zeros_like(above)
        ready[patience - 1 :] = runs[patience:] - runs[:-patience] == patience
        above = ready
    candidates = np.flatnonzero(above)
    fired: list[int] = []
    earliest = patience - 1
    # One search per detection, not one step per frame above threshold: low thresholds on hours of
    # negatives have most frames above.
    while True:
        j = int(np.searchsorted(candidates, earliest))
        if j == len(candidates):
            break
        i = int(candidates[j])
        fired.append(i)
        earliest = i + max(refractory_frames, 1) + patience - 1
    return np.array(fired, np.int64)


def join_streams(streams: Sequence[np.ndarray], gap_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Independent score streams laid end to end with `gap_frames` NaN frames between them, so no
    detection merges across two streams or lands in the next one's hit window.

    streams: k arrays (frames_i,) -> (joined (sum frames_i + (k - 1) * gap_frames,), offsets (k,) int)
    """
    offsets, parts, at = [], [], 0
    gap = np.full(gap_frames, np.nan)
    for n, s in enumerate(streams):
        if n:
            parts.append(gap)
            at += gap_frames
        offsets.append(at)
        parts.append(np.asarray(s, np.float64))
        at += len(s)
    joined = np.concatenate(parts) if parts else np.zeros(0)
    return joined, np.array(offsets, np.int64)


@dataclass(frozen=True)
class OperatingPoint:
    """Rates at one threshold (on the engine's score scale: logits for ours)."""

    threshold: float
    fa_per_hour: float
    frr: float
    latency_p95_s: float | None  # over the hit keywords, from keyword end to detection; None without hits


@dataclass(frozen=True)
class BudgetPoint:
    """The operating point chosen for a false-accept budget; `met` is False when no threshold met
    it (then the highest threshold tried is used)."""

    budget_fa_per_hour: float
    point: OperatingPoint
    met: bool


@dataclass(frozen=True, eq=False)
class ThresholdSweep:
    """A DET curve and the operating points at the budgets. Arrays (T,) by ascending threshold."""

    thresholds: np.ndarray
    fa_per_hour: np.ndarray
    frr: np.ndarray
    budgets: tuple[BudgetPoint, ...]

    def at(self, budget_fa_per_hour: float) -> BudgetPoint:
        """The point chosen for one of the budgets the sweep was run with."""
        for b in self.budgets:
            if b.budget_fa_per_hour == budget_fa_per_hour:
                return b
        raise KeyError(f"no budget {budget_fa_per_hour} FA/h; swept {[b.budget_fa_per_hour for b in self.budgets]}")

    @property
    def latency_p95_s(self) -> float | None:
        """p95 delay at the 0.5 FA/h budget (None when that budget was not swept or nothing was hit)."""
        try:
            return self.at(0.5).point.latency_p95_s
        except KeyError:
            return None


@dataclass(frozen=True)
class _Task:
    positive: np.ndarray  # (P,)
    starts: np.ndarray  # (K,) keyword starts, s
    ends: np.ndarray  # (K,)
    negative: np.ndarray  # (N,)
    negative_hours: float
    refractory: int
    patience: int
    frame_s: float
    hit_tail_s: float

    def rates(self, threshold: float) -> tuple[float, float, np.ndarray]:
        """(false accepts per hour, FRR, delays (hits,) s) at one threshold."""
        fa = len(events(self.negative, threshold, self.refractory, self.patience)) / self.negative_hours
        t = (events(self.positive, threshold, self.refractory, self.patience) + 1) * self.frame_s
        first = np.searchsorted(t, self.starts, side="left")  # the first detection at or after each start
        first_t = np.full(len(self.starts), np.inf)
        found = first < len(t)
        first_t[found] = t[first[found]]
        hit = first_t <= self.ends + self.hit_tail_s
        return fa, float(1.0 - hit.sum() / len(self.starts)), first_t[hit] - self.ends[hit]

    def point(self, threshold: float) -> OperatingPoint:
        fa, frr, delays = self.rates(threshold)
        p95 = float(np.percentile(delays, 95)) if len(delays) else None
        return OperatingPoint(float(threshold), fa, frr, p95)


def _task(positive, spans_s, negative, negative_hours, refractory_s, patience, frame_s, hit_tail_s) -> _Task:
    if not negative_hours > 0:
        raise ValueError(f"need negative audio to count false accepts per hour; got {negative_hours} h")
    spans = np.asarray(spans_s, np.float64).reshape(-1, 2)
    if not len(spans):
        raise ValueError("need at least one keyword span to count false rejections")
    return _Task(np.asarray(positive, np.float64), spans[:, 0], spans[:, 1], np.asarray(negative, np.float64),
                 float(negative_hours), whole_frames(refractory_s, frame_s), patience, frame_s, hit_tail_s)


def operating_point(positive: np.ndarray, spans_s: Sequence[tuple[float, float]] | np.ndarray, negative: np.ndarray,
                    negative_hours: float, threshold: float, *, patience: int = 1, refractory_s: float = REFRACTORY_S,
                    frame_s: float = FRAME_S, hit_tail_s: float = HIT_TAIL_S) -> OperatingPoint:
    """Rates at one threshold. positive: (P,) scores of the positive stream, spans_s: (K, 2) keyword
    (start_s, end_s) in it; negative: (N,) scores of `negative_hours` hours of audio without it."""
    return _task(positive, spans_s, negative, negative_hours, refractory_s, patience, frame_s,
                 hit_tail_s).point(threshold)


def sweep_thresholds(positive: np.ndarray, spans_s: Sequence[tuple[float, float]] | np.ndarray,
                     negative: np.ndarray, negative_hours: float, *, budgets: Sequence[float] = BUDGETS,
                     grid: np.ndarray = LOGIT_GRID, top_peaks: int = TOP_PEAKS, patience: int = 1,
                     refractory_s: float = REFRACTORY_S, frame_s: float = FRAME_S,
                     hit_tail_s: float = HIT_TAIL_S) -> ThresholdSweep:
    """Sweep thresholds: `grid`, every one of the `top_peaks` highest negative scores (where the
    budgets are decided) and just above the highest (no false accepts at all).

    positive: (P,) per-frame scores of the positive stream; spans_s: (K, 2) its keywords' (start_s,
    end_s); negative: (N,) per-frame scores of `negative_hours` hours without the keyword.
    """
    task = _task(positive, spans_s, negative, negative_hours, refractory_s, patience, frame_s, hit_tail_s)
    finite = task.negative[np.isfinite(task.negative)]
    top = np.sort(finite)[-top_peaks:] if top_peaks > 0 else finite[:0]
    above_max = [finite.max() + 1e-6] if len(finite) else []
    thresholds = np.unique(np.concatenate([np.asarray(grid, np.float64), top, above_max]))
    fah, frr = np.empty(len(thresholds)), np.empty(len(thresholds))
    for k, th in enumerate(thresholds):
        fah[k], frr[k], _ = task.rates(th)
    chosen = []
    for budget in budgets:
        ok = np.flatnonzero(fah <= budget)
        i = int(ok[np.argmin(frr[ok])]) if len(ok) else len(thresholds) - 1
        chosen.append(BudgetPoint(float(budget), task.point(thresholds[i]), bool(len(ok))))
    for a in (thresholds, fah, frr):
        a.setflags(write=False)
    return ThresholdSweep(thresholds, fah, frr, tuple(chosen))


def logit(probability: float) -> float:
    """The logit of a probability in (0, 1) (a detector threshold on the logit scale)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"need a probability in (0, 1); got {probability}")
    return math.log(probability) - math.log1p(-probability)


def probability(logit_value: float) -> float:
    """The sigmoid of a logit."""
    return 0.5 * (1.0 + math.tanh(0.5 * logit_value))
