"""The developer's own validation set (DESIGN §8: the coordinator "checks the result on its own
validation set" before it releases), how a head is measured on it, and the release policy.

The set: labelled clips run through the shipped backbone exactly as the device runs it (80 ms frames,
one embedding per frame once the backbone's context is full: `clip_embeddings` equals the Engine's
embeddings), kept per clip. A head is measured the way it is used: a positive clip counts as detected
when its best window fires (the detector fires on any window; the max-pooling of Sun et al. SLT 2016
that the device's gradient also uses), and every window of a negative clip is a chance of a false alarm.

Voices: the synthetic clips come from the TRAINING voices of `models.data.split_voices`, new texts,
pitches, rooms and noises from a seed of their own. The held-out voices stay the test set
(bench/kws_eval, tests/data/kws): deciding releases on them would tune the model to its own test.
The price: this set measures generalisation across augmentation and text, not across speakers; it is
a release gate ("not worse than what devices run"), not a figure to publish.

Metrics (all over this set): the class-balanced mean binary cross-entropy (positives by best window,
negatives by window), the balanced accuracy at a probability threshold, and the false-reject rate at a
fixed false-alarm budget: the logit threshold that lets at most `fa_budget` of the negative windows
fire, and the fraction of positive clips whose best window does not clear it (a window proxy for the
FRR at so many false accepts per hour; logits, since probabilities saturate at 1.0 and tie).

`synthetic_clips` is the developer's tool and needs a source checkout (`models/` is not installed on
devices) with espeak-ng, flite and festival; everything else here is numpy and ONNX Runtime.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..kws.backbone import Backbone, sha256_file
from ..kws.features import HOP, WIN, log_mel
from ..kws.head import NPZ_ERRORS, Head
from .atomic import save_npz_atomic
from .errors import LearningError

SET_FORMAT = 1
#: Windows scored per batch in `evaluate` (bounds memory: batch * window * embed float64).
BATCH_WINDOWS = 2048


@dataclass(frozen=True, eq=False)
class LabelledClip:
    """samples (n,) int16 at 16 kHz; label 1 when the wake word is said in it, 0 when not; `source` says what
    made it (a voice name, a file)."""

    samples: np.ndarray
    label: int
    source: str = ""


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class ValidationSet:
    """Per-clip embeddings, concatenated: embeddings (F, embed) float32, lengths (C,) frames of each clip (each
    >= window), labels (C,) in {0, 1}; the backbone they came from and a recipe string naming how the clips
    were made (what a cache is keyed by, with the backbone's hash and the window)."""

    embeddings: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    window: int
    backbone_sha256: str
    recipe: str = ""

    def __post_init__(self) -> None:
        e, n, y = self.embeddings, self.lengths, self.labels
        if e.ndim != 2 or n.ndim != 1 or y.shape != n.shape or int(n.sum()) != len(e):
            raise LearningError(f"validation set: embeddings {e.shape}, lengths {n.shape} summing to {int(n.sum())},"
                                f" labels {y.shape} do not fit together")
        if len(n) and int(n.min()) < self.window:
            raise LearningError(f"validation set: a clip of {int(n.min())} frames, fewer than the window {self.window}")
        if not np.isin(y, (0, 1)).all():
            raise LearningError("validation set: labels must be 0 or 1")

    @property
    def embed(self) -> int:
        return self.embeddings.shape[1]

    @property
    def positives(self) -> int:
        """Positive clips."""
        return int(self.labels.sum())

    @property
    def negative_windows(self) -> int:
        """Windows of negative clips (the false-alarm chances)."""
        return int((self.lengths - self.window + 1)[self.labels == 0].sum())

    def window_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts (W,) row of each window's first frame in `embeddings`, clip (W,) the clip it belongs to)."""
        per_clip = self.lengths - self.window + 1
        clip = np.repeat(np.arange(len(self.lengths)), per_clip)
        first = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        offset = np.arange(len(clip)) - np.repeat(np.concatenate([[0], np.cumsum(per_clip)[:-1]]), per_clip)
        return first[clip] + offset, clip

    def save(self, path: Path) -> None:
        """As .npz (no pickle), atomically."""
        save_npz_atomic(Path(path), format=np.array(SET_FORMAT), embeddings=self.embeddings, lengths=self.lengths,
                        labels=self.labels, window=np.array(self.window),
                        backbone_sha256=np.array(self.backbone_sha256), recipe=np.array(self.recipe))

    @classmethod
    def load(cls, path: Path) -> ValidationSet:
        """Read what `save` wrote; LearningError naming the file otherwise."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != SET_FORMAT:
                    raise LearningError(f"{path}: validation set format {int(z['format'])}, not {SET_FORMAT}")
                return cls(z["embeddings"].astype(np.float32), z["lengths"].astype(np.int64),
                           z["labels"].astype(np.int8), int(z["window"]), str(z["backbone_sha256"]), str(z["recipe"]))
        except NPZ_ERRORS as exc:
            raise LearningError(f"{path}: not a validation set ({exc})") from exc


def clip_embeddings(backbone: Backbone, samples: np.ndarray) -> np.ndarray:
    """The embeddings the device's Engine computes for `samples` (n,) int16 fed as whole 80 ms frames (a partial
    last frame is dropped): (k, embed) float32, one per frame from the first whose mel context is full."""
    n = len(samples) // FRAME_SAMPLES
    x = np.asarray(samples[: n * FRAME_SAMPLES], np.int16)
    mel = log_mel(x)  # equal to the streaming features window for window
    ends = (np.arange(1, n + 1) * FRAME_SAMPLES - WIN) // HOP + 1  # mel windows complete after each frame
    ends = ends[ends >= backbone.context]
    if not len(ends):
        return np.zeros((0, backbone.embed), np.float32)
    return np.stack([backbone(mel[a - backbone.context : a]) for a in ends]).astype(np.float32)


def build(make_clips: Callable[[], Iterable[LabelledClip]], backbone_path: Path, window: int,
          cache: Path | None = None, recipe: str = "") -> ValidationSet:
    """The set of `make_clips()` through the backbone at `backbone_path`, read from `cache` instead when the
    cache was built from the same backbone (SHA-256), window and recipe (`make_clips` is then not called),
    and written there otherwise. Clips with fewer than `window` embeddings are skipped."""
    sha = sha256_file(Path(backbone_path))
    if cache is not None and Path(cache).is_file():
        try:
            cached = ValidationSet.load(cache)
        except LearningError:
            cached = None  # unreadable: rebuilt and overwritten below
        if cached is not None and (cached.backbone_sha256, cached.window, cached.recipe) == (sha, window, recipe):
            return cached
    backbone = Backbone(Path(backbone_path))
    embs, lengths, labels = [], [], []
    for clip in make_clips():
        if clip.label not in (0, 1):
            raise LearningError(f"clip {clip.source!r}: label {clip.label!r}, need 0 or 1")
        e = clip_embeddings(backbone, clip.samples)
        if len(e) < window:
            continue
        embs.append(e)
        lengths.append(len(e))
        labels.append(clip.label)
    if not embs:
        raise LearningError(f"no clip gave {window} embeddings: a validation set needs clips of at least"
                            f" {window} frames after the backbone's context")
    vset = ValidationSet(np.concatenate(embs), np.array(lengths, np.int64), np.array(labels, np.int8), window, sha,
                         recipe)
    if cache is not None:
        vset.save(Path(cache))
    return vset


# --- measuring a head ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """A head on a validation set (see the module doc). `fa_threshold` is a logit; `positives` counts clips,
    `negatives` windows."""

    loss: float
    accuracy: float
    frr: float
    fa_budget: float
    fa_threshold: float
    positives: int
    negatives: int


def clip_scores(head: Head, vset: ValidationSet) -> tuple[np.ndarray, np.ndarray]:
    """(best logit of each positive clip (P,), logit of each window of the negative clips (N,))."""
    if (head.window, head.embed) != (vset.window, vset.embed):
        raise LearningError(f"head over ({head.window}, {head.embed}) windows, the validation set has"
                            f" ({vset.window}, {vset.embed})")
    starts, clip = vset.window_index()
    logits = np.empty(len(starts))
    offsets = np.arange(vset.window)
    for i in range(0, len(starts), BATCH_WINDOWS):
        rows = starts[i : i + BATCH_WINDOWS, None] + offsets
        logits[i : i + BATCH_WINDOWS] = head.logits(vset.embeddings[rows].astype(np.float64))
    best = np.full(len(vset.labels), -np.inf)
    np.maximum.at(best, clip, logits)
    negative = vset.labels[clip] == 0
    return best[vset.labels == 1], logits[negative]


def evaluate(head: Head, vset: ValidationSet, threshold: float = 0.5, fa_budget: float = 0.01) -> Metrics:
    """`head` on `vset`: balanced BCE, balanced accuracy at probability `threshold`, FRR at `fa_budget` (the
    fraction of negative windows allowed to fire)."""
    if not 0 < threshold < 1 or not 0 <= fa_budget < 1:
        raise LearningError(f"threshold must be in (0, 1) and fa_budget in [0, 1); got {threshold}, {fa_budget}")
    pos, neg = clip_scores(head, vset)
    if not len(pos) or not len(neg):
        raise LearningError(f"a validation set needs positive and negative clips; has {len(pos)} and {len(neg)}"
                            " windows")
    loss = 0.5 * (float(np.mean(np.logaddexp(0.0, -pos))) + float(np.mean(np.logaddexp(0.0, neg))))
    t = math.log(threshold / (1 - threshold))
    accuracy = 0.5 * (float(np.mean(pos >= t)) + float(np.mean(neg < t)))
    allowed = math.floor(fa_budget * len(neg))  # negative windows that may score above the threshold
    fa_threshold = float(np.sort(neg)[::-1][allowed]) if allowed < len(neg) else -math.inf
    frr = float(np.mean(pos <= fa_threshold))
    return Metrics(loss, accuracy, frr, float(fa_budget), fa_threshold, len(pos), len(neg))


@dataclass(frozen=True)
class ReleasePolicy:
    """How much worse than the released head a candidate may measure and still go out: the noise of a DP round
    moves the validation loss a little either way, and a gate with no tolerance would stall learning."""

    loss_tolerance: float = 0.005  # nats of balanced BCE
    frr_tolerance: float = 0.01  # absolute false-reject rate at the budget


@dataclass(frozen=True)
class ReleaseDecision:
    """Whether to release the candidate, why, and the two measurements behind it."""

    release: bool
    reason: str
    candidate: Metrics
    current: Metrics


def decide_release(candidate: Metrics, current: Metrics, policy: ReleasePolicy | None = None) -> ReleaseDecision:
    """Release only when the candidate is not worse than the current head beyond the policy's tolerances, in
    loss and in FRR at the false-alarm budget, both measured on the same set."""
    policy = policy or ReleasePolicy()
    if (candidate.positives, candidate.negatives, candidate.fa_budget) != (
            current.positives, current.negatives, current.fa_budget):
        raise LearningError("the candidate and the current head were measured on different sets or budgets")
    worse = []
    if candidate.loss > current.loss + policy.loss_tolerance:
        worse.append(f"loss {candidate.loss:.4f} > {current.loss:.4f} + {policy.loss_tolerance:g}")
    if candidate.frr > current.frr + policy.frr_tolerance:
        worse.append(f"FRR at {candidate.fa_budget:g} FA {candidate.frr:.3f} > {current.frr:.3f}"
                     f" + {policy.frr_tolerance:g}")
    if worse:
        return ReleaseDecision(False, "not released: " + "; ".join(worse), candidate, current)
    return ReleaseDecision(True, f"released: loss {current.loss:.4f} -> {candidate.loss:.4f}, FRR {current.frr:.3f}"
                                 f" -> {candidate.frr:.3f}", candidate, current)


# --- the developer's synthetic clips (needs a source checkout: models/) -----------------------------


def synthetic_clips(wakeword: str, positives: int, negatives: int, seed: int, seconds: float = 2.5
                    ) -> list[LabelledClip]:
    """Clips of `seconds` spoken by TRAINING voices (see the module doc), augmented as models.train does:
    positives end 0.05-0.25 s before the clip's end; negatives cycle through confusable phrases, random words,
    training sentences and noise alone. Needs espeak-ng, flite and festival."""
    try:
        from models import data as D
    except ImportError as exc:
        raise LearningError("synthetic validation clips need the models/ package of a source checkout") from exc
    if wakeword not in D.CONFUSABLE:
        raise LearningError(f"no confusable phrases for {wakeword!r}; known: {sorted(D.CONFUSABLE)}")
    rng = np.random.default_rng([seed, 0x7A11D])  # never the stream of a training seed
    train_voices, _ = D.split_voices(D.all_voices())
    n = round(seconds * SAMPLE_RATE)

    def text(kind: int) -> str:
        if kind < 2:
            return str(rng.choice(D.CONFUSABLE[wakeword]))
        return D.word_sequence(rng) if kind < 4 else str(rng.choice(D.SENTENCES))

    specs = [(wakeword, D.pick_voice(train_voices, rng), 1) for _ in range(positives)]
    kinds = np.arange(negatives) % 6
    specs += [(text(int(k)), D.pick_voice(train_voices, rng), 0) for k in kinds if k != 5]
    speech = D.synthesize_many([(t, v, int(rng.integers(20, 80)), int(rng.integers(120, 200))) for t, v, _ in specs])
    out = []
    for (_, voice, label), s in zip(specs, speech, strict=True):
        s = D.change_speed(s, rng.uniform(0.9, 1.1))
        if rng.random() < 0.5:
            s = D.reverberate(s, D.room_impulse(rng.uniform(0.2, 0.8), rng))
        clip = np.zeros(n)
        if label:  # the word ends just before the clip's end, as in training
            s = s[-n:]
            end = n - int(rng.uniform(0.05, 0.25) * SAMPLE_RATE)
            start = max(0, end - len(s))
            clip[start:end] = s[len(s) - (end - start):]
        else:  # any part of the phrase, anywhere, as a streaming window sees it
            offset = int(rng.integers(-n // 2, max(len(s) - n // 2, 1)))
            lo, hi = max(offset, 0), min(offset + n, len(s))
            if hi > lo:
                clip[lo - offset : hi - offset] = s[lo:hi]
        bg = D.noise(str(rng.choice(["white", "pink", "brown"])), n, rng)
        mixed = D.mix_at_snr(clip, bg, rng.uniform(-5.0, 20.0)) if np.any(clip) else bg * 300
        out.append(LabelledClip(D.to_int16(mixed * 10 ** (rng.uniform(-12, 6) / 20)), label, voice.name))
    for _ in range(int((kinds == 5).sum())):  # noise or near silence
        colour = str(rng.choice(["white", "pink", "brown"]))
        level = 10 ** rng.uniform(0.5, 3.5)
        out.append(LabelledClip(D.to_int16(D.noise(colour, n, rng) * level), 0, f"noise:{colour}"))
    return out
