"""assistant/kws/evaluation.py on hand-built scores: detections, refractory merging, the sweep's
FRR and false accepts at budgets, the chosen thresholds and the delay, all worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.kws.detector import Detector
from assistant.kws.evaluation import (
    events,
    join_streams,
    logit,
    operating_point,
    probability,
    sweep_thresholds,
    whole_frames,
)


def test_events_merge_within_the_refractory_period_and_need_patience():
    s = np.full(12, -5.0)
    s[[1, 2, 3, 5, 8, 9]] = 1.0
    s[10] = np.nan
    # above at 1, 2, 3, 5, 8, 9: fire at 1, quiet for 2 and 3, fire at 5, quiet for 6 and 7, fire at 8
    assert events(s, 0.5, refractory_frames=3).tolist() == [1, 5, 8]
    # two in a row: 1-2 fires at 2; quiet 3, 4; the next run after that is 8-9: fires at 9
    assert events(s, 0.5, refractory_frames=3, patience=2).tolist() == [2, 9]
    # no refractory period: every frame above fires, but a patience run is used up by its detection
    assert events(s, 0.5, refractory_frames=0).tolist() == [1, 2, 3, 5, 8, 9]
    assert events(s, 0.5, refractory_frames=0, patience=2).tolist() == [2, 9]
    assert events(s, 2.0, 3).tolist() == [] and events(np.full(4, np.nan), -1e9, 0).tolist() == []
    assert whole_frames(2.0) == 25 and whole_frames(0.5) == 6
    with pytest.raises(ValueError):
        events(s, 0.5, 3, patience=0)


@settings(max_examples=200, deadline=None)
@given(scores=st.lists(st.floats(0.0, 0.99), max_size=60), threshold=st.floats(0.05, 0.95),
       patience=st.integers(1, 3), gap=st.integers(0, 6))
def test_events_fire_where_the_streaming_detector_fires(scores, threshold, patience, gap):
    # 0.125 s frames: every time and refractory period is exact in binary floating point
    d = Detector(threshold, patience, refractory_s=gap * 0.125)
    fired = [i for i, s in enumerate(scores) if d.update(s, (i + 1) * 0.125)]
    assert events(np.array(scores), threshold, gap, patience).tolist() == fired


def test_join_streams_keeps_streams_apart_with_nan_gaps():
    streams = [np.array([-1.0, -1.0, 1.0]), np.array([2.0, -1.0]), np.zeros(0), np.ones(1)]
    joined, offsets = join_streams(streams, gap_frames=3)
    assert offsets.tolist() == [0, 6, 11, 14] and len(joined) == 15
    assert np.isnan(joined[[3, 4, 5, 8, 9, 10, 11, 12, 13]]).all() and joined[[2, 6, 14]].tolist() == [1.0, 2.0, 1.0]
    # a detection at the end of one stream does not silence the start of the next (laid end to end
    # without the gap, frame 0 of the second stream would be frame 3, inside frame 2's quiet period)
    assert events(joined, 0.5, refractory_frames=3).tolist() == [2, 6, 14]
    assert events(np.concatenate(streams), 0.5, refractory_frames=3).tolist() == [2, 5]  # lost frame 3


def _hand_built():
    """Negatives: 100 frames at -20 with peaks 5.0 (frame 10), 4.0 (frame 20: within 2 s of frame 10,
    so merged into its detection) and 3.0 (frame 60), counted as 2 hours.

    Positives: 200 frames at -20 and four keywords (spans in s; a frame i ends at (i + 1) * 0.08 s):
      A (1.0, 1.5): 6.0 at frame 19 (1.60 s, delay 0.10 s): hit for th <= 6
      B (4.0, 4.5): 3.5 at frame 57 (4.64 s, delay 0.14 s), but 3.0 at frame 46 (3.76 s, before B,
                    after A's quiet period) silences frames 47-70 for th <= 3: hit only for 3.0 < th <= 3.5
      C (8.0, 8.5): 2.0 at frame 110 (8.88 s, delay 0.38 s): hit for th <= 2
      D (12.0, 12.5): 10.0 at frame 165 (13.28 s): after end + 0.5 s, never a hit
    """
    neg = np.full(100, -20.0)
    neg[[10, 20, 60]] = [5.0, 4.0, 3.0]
    pos = np.full(200, -20.0)
    pos[[19, 46, 57, 110, 165]] = [6.0, 3.0, 3.5, 2.0, 10.0]
    spans = [(1.0, 1.5), (4.0, 4.5), (8.0, 8.5), (12.0, 12.5)]
    return pos, spans, neg, 2.0


def test_operating_points_by_hand():
    pos, spans, neg, hours = _hand_built()
    p = operating_point(pos, spans, neg, hours, 4.0)  # negatives: frame 10 only (20 merged) -> 1 / 2 h
    assert (p.fa_per_hour, p.frr) == (0.5, 0.75) and p.latency_p95_s == pytest.approx(0.10)
    p = operating_point(pos, spans, neg, hours, 3.25)  # A and B hit
    assert (p.fa_per_hour, p.frr) == (0.5, 0.5)
    assert p.latency_p95_s == pytest.approx(0.10 + 0.95 * (0.14 - 0.10))  # numpy's linear percentile
    p = operating_point(pos, spans, neg, hours, 3.0)  # frames 10 and 60; B silenced by frame 46; A only
    assert (p.fa_per_hour, p.frr) == (1.0, 0.75)
    p = operating_point(pos, spans, neg, hours, 2.0)  # A and C
    assert (p.fa_per_hour, p.frr) == (1.0, 0.5)
    p = operating_point(pos, spans, neg, hours, 7.0)
    assert (p.fa_per_hour, p.frr, p.latency_p95_s) == (0.0, 1.0, None)
    # with patience 2 no single-frame peak fires at all
    assert operating_point(pos, spans, neg, hours, 2.0, patience=2).frr == 1.0


def test_sweep_picks_the_lowest_frr_within_each_budget():
    pos, spans, neg, hours = _hand_built()
    sw = sweep_thresholds(pos, spans, neg, hours)
    # tried: the grid -10..30 by 0.25, every negative score (all 100 are among the top 300), max + 1e-6
    assert sw.thresholds[0] == -20.0 and sw.thresholds[-1] == 30.0 and 5.0 + 1e-6 in sw.thresholds
    assert sw.fa_per_hour[sw.thresholds == -20.0] == [2.0]  # every frame fires: 0, 25, 50, 75
    assert sw.fa_per_hour[sw.thresholds == 4.0] == [0.5]  # merged
    # 0.1 FA/h: nothing may fire (th > 5); then only A can hit; the lowest such threshold is max + 1e-6
    b = sw.at(0.1)
    assert b.met and (b.point.threshold, b.point.frr, b.point.fa_per_hour) == (5.0 + 1e-6, 0.75, 0.0)
    # 0.5 FA/h: th > 3; A and B hit on (3, 3.5]; the grid's 3.25 is the lowest tried there
    b = sw.at(0.5)
    assert (b.point.threshold, b.point.frr, b.point.fa_per_hour) == (3.25, 0.5, 0.5)
    assert sw.latency_p95_s == pytest.approx(0.138)
    # 1.0 FA/h: anything above -20; FRR 0.5 at best (A and C, or A and B); the lowest is the grid's -10
    b = sw.at(1.0)
    assert (b.point.threshold, b.point.frr, b.point.fa_per_hour) == (-10.0, 0.5, 1.0)
    assert sw.frr.shape == sw.fa_per_hour.shape == sw.thresholds.shape
    with pytest.raises(KeyError):
        sw.at(2.0)
    with pytest.raises(ValueError, match="negative audio"):
        sweep_thresholds(pos, spans, neg, 0.0)


def test_logit_and_probability_are_inverse():
    assert probability(logit(0.5)) == 0.5 and probability(logit(0.9)) == pytest.approx(0.9)
    assert logit(0.5) == 0.0 and probability(100.0) == 1.0
    with pytest.raises(ValueError):
        logit(1.0)
