"""The personal verifier (DESIGN §8: "a per-device verifier trained only on local labels gives immediate
personal improvement without any upload"). A detection passes only when the head fires and the
verifier agrees.

The model: L2-regularised logistic regression over the standardised, flattened window of embeddings
the head fired on (window * embed features), fitted by Newton's method, on the owner's labels only:
true accept and missed wake word are 1, false accept 0 (gradient.TARGETS, the windows
gradient.examples_from picks: a "you missed me" row gives its best window under the running head).
Classes are weighted to count equally. When there are fewer examples than features, each Newton step
is solved in the n-dimensional dual (Woodbury), so a 1024-feature window costs an n x n solve.

Conservative, because a rejection is a wake word the owner said and the device ignored, which the owner
may never notice:
- inactive (it passes everything) until the owner has labelled at least `min_false_accepts` false
  accepts and `min_true_accepts` real wake words;
- it rejects only below a logit threshold calibrated by stratified k-fold cross-validation: each of the
  owner's wake words is scored by a verifier that never saw it, and the threshold is a one-sided normal
  tolerance bound on those scores (at most `max_reject_rate` of the owner's wake words below it, with
  95% confidence), below the lowest of them, and never at or above probability 1/2. (A plain 5%
  quantile of the held-out scores rejected up to 20% of new wake words with 30 labels in testing.)

Private by construction: trained and saved on the device (`verifier_path`: verifier.npz beside the
store), never uploaded. This module has no network code, and its parameters are not the head's:
participate.prepare flattens the head (gradient.flatten) and nothing else, so they never enter a
participation vector.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from ..kws.head import NPZ_ERRORS, Head
from ..store import Record, Store
from .atomic import save_npz_atomic
from .errors import LearningError
from .gradient import examples_from
from .participate import labelled_records

log = logging.getLogger(__name__)

VERIFIER_FORMAT = 1
#: The bias enters as a constant feature of this value, so the shared L2 penalty barely touches it.
_BIAS_FEATURE = 10.0


@dataclass(frozen=True)
class VerifierPolicy:
    """When the verifier is trained and how hard it may reject (see the module doc)."""

    min_true_accepts: int = 8
    min_false_accepts: int = 5
    l2: float = 10.0  # penalty on the weights of standardised features
    max_reject_rate: float = 0.05  # of the owner's wake words (a held-out bound, see reject_threshold)
    confidence: float = 0.95
    folds: int = 5
    retrain_after: int = 5  # labels added, removed or changed since the last training (PersonalVerifier)


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields
class Verifier:
    """mean, scale, weights: (window * embed,); reject a window whose logit is below `threshold` (-inf: inactive,
    everything passes). The counts it was trained on and its cross-validated rejection rates of each class."""

    window: int
    embed: int
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    true_labels: int = 0
    false_labels: int = 0
    cv_true_rejected: float = 0.0
    cv_false_rejected: float = 0.0

    @classmethod
    def inactive(cls, window: int, embed: int, true_labels: int = 0, false_labels: int = 0) -> Verifier:
        """A verifier that agrees with every detection."""
        d = window * embed
        return cls(window, embed, np.zeros(d), np.ones(d), np.zeros(d), 0.0, -math.inf, true_labels, false_labels)

    @property
    def active(self) -> bool:
        return self.threshold > -math.inf

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """windows (N, window, embed) -> (N,) log-odds that each is the owner saying the wake word."""
        x = np.asarray(windows, np.float64)
        if x.ndim != 3 or x.shape[1:] != (self.window, self.embed):
            raise LearningError(f"verifier over ({self.window}, {self.embed}) windows, got {x.shape}")
        return ((x.reshape(len(x), -1) - self.mean) / self.scale) @ self.weights + self.bias

    def agrees(self, windows: np.ndarray) -> np.ndarray:
        """windows (N, window, embed) -> (N,) bool: the detections that pass."""
        if not self.active:
            return np.ones(len(windows), bool)
        return self.logits(windows) >= self.threshold

    def accepts(self, window: np.ndarray) -> bool:
        """One detection's window (window, embed): True when it passes."""
        return bool(self.agrees(np.asarray(window)[None])[0])

    def save(self, path: Path) -> None:
        """As .npz (no pickle), atomically."""
        save_npz_atomic(Path(path), format=np.array(VERIFIER_FORMAT), shape=np.array([self.window, self.embed]),
                        mean=self.mean, scale=self.scale, weights=self.weights,
                        scalars=np.array([self.bias, self.threshold, self.cv_true_rejected, self.cv_false_rejected]),
                        counts=np.array([self.true_labels, self.false_labels]))

    @classmethod
    def load(cls, path: Path) -> Verifier:
        """Read what `save` wrote; LearningError naming the file otherwise."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if int(z["format"]) != VERIFIER_FORMAT:
                    raise LearningError(f"{path}: verifier format {int(z['format'])}, not {VERIFIER_FORMAT}")
                (window, embed), (bias, threshold, cv_t, cv_f), (n_t, n_f) = z["shape"], z["scalars"], z["counts"]
                v = cls(int(window), int(embed), z["mean"].astype(np.float64), z["scale"].astype(np.float64),
                        z["weights"].astype(np.float64), float(bias), float(threshold), int(n_t), int(n_f),
                        float(cv_t), float(cv_f))
        except NPZ_ERRORS as exc:
            raise LearningError(f"{path}: not a verifier ({exc})") from exc
        if not all(a.shape == (v.window * v.embed,) for a in (v.mean, v.scale, v.weights)):
            raise LearningError(f"{path}: verifier arrays do not match its ({v.window}, {v.embed}) window")
        return v


def _sigmoid(s: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -s))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, iterations: int = 50) -> tuple[np.ndarray, float]:
    """Class-balanced L2-regularised logistic regression by Newton's method: x (n, D) standardised, y (n,) in
    {0, 1} -> (weights (D,), bias). The bias is a constant feature, barely penalised (see _BIAS_FEATURE)."""
    n = len(y)
    a = np.hstack([x, np.full((n, 1), _BIAS_FEATURE)])
    counts = np.array([np.sum(y == 0), np.sum(y == 1)], np.float64)
    if counts.min() == 0:
        raise LearningError("a verifier needs examples of both classes")
    c = n / (2.0 * counts[y.astype(int)])  # each class weighs n/2 in all

    def objective(w: np.ndarray) -> float:
        s = a @ w
        return float(c @ (np.logaddexp(0.0, s) - y * s) + 0.5 * l2 * w @ w)

    w = np.zeros(a.shape[1])
    f = objective(w)
    for _ in range(iterations):
        p = _sigmoid(a @ w)
        g = a.T @ (c * (p - y)) + l2 * w
        s = c * p * (1.0 - p)  # Hessian = A^T diag(s) A + l2 I
        if n < a.shape[1]:  # Woodbury: (l2 I + A^T S A)^-1 g = (g - A^T R (l2 I + R A A^T R)^-1 R A g) / l2, R = S^1/2
            r = np.sqrt(s)
            ra = a * r[:, None]
            step = (g - ra.T @ np.linalg.solve(l2 * np.eye(n) + ra @ ra.T, ra @ g)) / l2
        else:
            step = np.linalg.solve(a.T @ (a * s[:, None]) + l2 * np.eye(a.shape[1]), g)
        t = 1.0
        while (f_new := objective(w - t * step)) > f and t > 1e-6:  # backtracking: Newton may overshoot early
            t /= 2
        w, f_old, f = w - t * step, f, f_new
        if f_old - f < 1e-10 * max(1.0, abs(f)):
            break
    return w[:-1], float(w[-1] * _BIAS_FEATURE)


def tolerance_factor(n: int, coverage: float, confidence: float) -> float:
    """k with P(at least `coverage` of a normal population lies above mean - k sd) >= `confidence`, from n samples:
    the one-sided normal tolerance factor (Natrella's approximation, NIST/SEMATECH e-Handbook 7.2.6.3)."""
    z_p, z_a = NormalDist().inv_cdf(coverage), NormalDist().inv_cdf(confidence)
    a = 1.0 - z_a * z_a / (2.0 * (n - 1))
    b = z_p * z_p - z_a * z_a / n
    return (z_p + math.sqrt(z_p * z_p - a * b)) / a


def reject_threshold(held_out: np.ndarray, max_reject_rate: float, confidence: float) -> float:
    """The logit below which a detection is rejected, from the held-out logits (n,) of the owner's wake words: the
    lowest of 0 (never reject what is more likely the owner), the lowest held-out wake word, and the one-sided
    tolerance bound under which at most `max_reject_rate` of them fall with `confidence`. With a few dozen labels
    a plain quantile of the held-out logits over-rejects on new data; the bound keeps recall."""
    n = len(held_out)
    if n < 3:
        return -math.inf
    k = tolerance_factor(n, 1.0 - max_reject_rate, confidence)
    return min(0.0, float(held_out.min()), float(held_out.mean() - k * held_out.std(ddof=1)))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.maximum(scale, 1e-3 * (float(scale.mean()) or 1.0))


def fit(x: np.ndarray, y: np.ndarray, policy: VerifierPolicy | None = None) -> Verifier:
    """A verifier from labelled windows x (N, window, embed), y (N,) in {0, 1} (1: the owner's wake word)."""
    policy = policy or VerifierPolicy()
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    window, embed = x.shape[1:]
    n_true, n_false = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_true < policy.min_true_accepts or n_false < policy.min_false_accepts:
        return Verifier.inactive(window, embed, n_true, n_false)
    flat = x.reshape(len(x), -1)

    def train(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        mean, scale = _standardise(flat[rows])
        w, b = fit_logistic((flat[rows] - mean) / scale, y[rows], policy.l2)
        return mean, scale, w, b

    # Stratified folds in a fixed order: every held-out wake word is scored by a verifier that never saw it.
    folds = max(2, min(policy.folds, n_true, n_false))
    fold = np.empty(len(y), int)
    order = np.random.default_rng(0).permutation(len(y))
    for cls in (0, 1):
        members = order[y[order] == cls]
        fold[members] = np.arange(len(members)) % folds
    held_out = np.empty(len(y))
    for k in range(folds):
        mean, scale, w, b = train(np.flatnonzero(fold != k))
        test = np.flatnonzero(fold == k)
        held_out[test] = ((flat[test] - mean) / scale) @ w + b
    threshold = reject_threshold(held_out[y == 1], policy.max_reject_rate, policy.confidence)
    mean, scale, w, b = train(np.arange(len(y)))
    return Verifier(window, embed, mean, scale, w, b, threshold, n_true, n_false,
                    float(np.mean(held_out[y == 1] < threshold)), float(np.mean(held_out[y == 0] < threshold)))


def train_verifier(records: Iterable[Record], head: Head, policy: VerifierPolicy | None = None) -> Verifier:
    """A verifier from the owner's labelled rows, over the windows `head` sees (gradient.examples_from)."""
    ex = examples_from(records, head)
    if not len(ex):
        return Verifier.inactive(head.window, head.embed)
    return fit(ex.x, ex.y, policy)


def verifier_path(store: Store) -> Path:
    """Where the device keeps its verifier: beside its store, never anywhere that is sent."""
    return Path(store.root) / "verifier.npz"


def retrain(store: Store, head: Head, policy: VerifierPolicy | None = None) -> Verifier:
    """Train on every labelled row of `store` and save it at verifier_path(store); the verifier."""
    v = train_verifier(labelled_records(store), head, policy)
    v.save(verifier_path(store))
    return v


def load_verifier(store: Store, head: Head) -> Verifier:
    """The saved verifier, or an inactive one when none was saved or it is for another window shape."""
    path = verifier_path(store)
    if path.is_file():
        v = Verifier.load(path)
        if (v.window, v.embed) == (head.window, head.embed):
            return v
    return Verifier.inactive(head.window, head.embed)


def label_counts(store: Store) -> tuple[int, int, int]:
    """(true accepts, false accepts, missed wake words) the owner has labelled: what a retrain learns from."""
    s = store.stats()
    return s.true_accept, s.false_accept, s.missed_wake_word


class PersonalVerifier:
    """The verifier a running service consults (DeviceService): `current` is read by the audio loop without a
    lock (one attribute, replaced whole); `refresh` (the store writer's thread) retrains when the owner's label
    counts moved by `policy.retrain_after` since the last training, or on the first call; `retrain(head)` when
    the head changes (a reload: a captured miss's window is the one the head scores best)."""

    def __init__(self, store: Store, head: Head, policy: VerifierPolicy | None = None):
        self.store, self.policy = store, policy or VerifierPolicy()
        self._head = head
        self._lock = threading.Lock()  # one training at a time
        self._trained_on: tuple[int, int, int] | None = None  # label counts of the last training here
        try:  # a saved one is active at once; the first refresh retrains it on today's labels
            self.current = load_verifier(store, head)
        except LearningError as exc:  # a corrupt file: start inactive, the first refresh overwrites it
            log.warning("personal verifier not loaded: %s", exc)
            self.current = Verifier.inactive(head.window, head.embed)

    def accepts(self, window: np.ndarray | None) -> bool:
        """True when the detection whose window (window, embed) is given passes. A window of another shape (the
        engine's history not yet full, or a head reloaded since) passes: the verifier never judges blind."""
        v = self.current
        if window is None or not v.active or np.shape(window) != (v.window, v.embed):
            return True
        return v.accepts(window)

    def refresh(self) -> bool:
        """Retrain when the labels changed enough (see the class doc); True when it retrained."""
        counts = label_counts(self.store)
        last = self._trained_on
        if last is not None and sum(abs(a - b) for a, b in zip(counts, last, strict=True)) < self.policy.retrain_after:
            return False
        self.retrain()
        return True

    def retrain(self, head: Head | None = None) -> Verifier:
        """Train on every labelled row (over `head`'s windows, default the last head) and make it current."""
        with self._lock:
            if head is not None:
                self._head = head
            counts = label_counts(self.store)
            v = retrain(self.store, self._head, self.policy)
            self.current, self._trained_on = v, counts
        log.info("personal verifier trained on %d wake words and %d false alarms: %s", v.true_labels, v.false_labels,
                 f"rejects below logit {v.threshold:.2f} (cross-validated: {v.cv_true_rejected:.1%} of wake words,"
                 f" {v.cv_false_rejected:.1%} of false alarms)" if v.active else "inactive (too few labels)")
        return v
