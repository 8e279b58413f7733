"""The clipped gradient in quantised units, by `sda.encoding.FixedPoint`'s stochastic rounding, and the
sensitivity that rounding leaves for the privacy accounting. numpy, no I/O.

Stochastic rounding is unbiased but can lengthen a vector: each coordinate moves by less than one unit,
so ||q|| can exceed C*scale. The accounting needs a bound on ||q||, so rounding is *conditional*
(Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021, section 4.1): round again until

    ||q||^2 <= min( (C s)^2 + d/4 + sqrt(2 ln(1/beta)) (C s + sqrt(d)/2),  (C s + sqrt(d))^2 )

which a single rounding meets with probability >= 1 - beta. With beta = e^-0.5 (their choice) the
bound is a few per cent above C*s for any d we use, and a retry is rare enough that the bias it
introduces is far below the rounding noise (the round-trip test measures it).
"""

from __future__ import annotations

import math

import numpy as np

from sda.encoding import FixedPoint, centred, check_capacity
from sda.errors import SdaError

from .errors import LearningError

#: The conditional rounding's failure probability per attempt (Kairouz, Liu and Steinke use e^-0.5).
BETA = math.exp(-0.5)
_ATTEMPTS = 100


def codec(clip_norm: float, scale: float) -> FixedPoint:
    """The fixed-point codec of a gradient clipped to L2 norm `clip_norm`: every coordinate lies in [-C, C]."""
    try:
        return FixedPoint(scale, -clip_norm, clip_norm)
    except SdaError as exc:
        raise LearningError(f"fixed point for clip norm {clip_norm} and scale {scale}: {exc}") from None


def l2_sensitivity(clip_norm: float, scale: float, d: int, beta: float = BETA) -> float:
    """The bound on ||q||_2 that conditional rounding keeps, in quantised units (see the module doc)."""
    c = clip_norm * scale
    tight = c * c + d / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(d) / 2.0)
    return math.sqrt(min(tight, (c + math.sqrt(d)) ** 2))


def l1_sensitivity(l2: float, d: int) -> float:
    """A bound on ||q||_1 of an integer vector with ||q||_2 <= l2: min(l2^2, sqrt(d) l2) (|q_i| <= q_i^2)."""
    return min(l2 * l2, math.sqrt(d) * l2)


def quantise(g: np.ndarray, clip_norm: float, scale: float, p: int, rng: np.random.Generator,
             beta: float = BETA) -> np.ndarray:
    """Clipped gradient g (d,) float (||g|| <= clip_norm) -> q (d,) int64, signed quantised units, with
    E[q] = g * scale and ||q|| <= l2_sensitivity(...). `p` is the round's field (for the codec's range)."""
    g = np.asarray(g, np.float64)
    if float(np.linalg.norm(g)) > clip_norm * (1 + 1e-12):
        raise LearningError(f"quantise needs ||g|| <= {clip_norm}; got {np.linalg.norm(g)} (clip first)")
    fp = codec(clip_norm, scale)
    try:
        check_capacity(p, 1, fp.max_abs_value)
    except SdaError as exc:
        raise LearningError(f"one quantised gradient does not fit Z_{p}: {exc}") from None
    bound_sq = l2_sensitivity(clip_norm, scale, g.size, beta) ** 2
    for _ in range(_ATTEMPTS):
        q = centred(fp.encode(g, p, rng), p)
        if float(q @ q) <= bound_sq:
            return q
    raise LearningError(f"stochastic rounding exceeded the norm bound {math.sqrt(bound_sq):.3f} {_ATTEMPTS} times")


def dequantise(q: np.ndarray, scale: float) -> np.ndarray:
    """Signed quantised units (d,) int64 -> (d,) float64."""
    return np.asarray(q, np.int64).astype(np.float64) / scale


def to_field(q: np.ndarray, p: int) -> np.ndarray:
    """Signed integers (d,) -> their residues in [0, p), int64."""
    return np.mod(np.asarray(q, np.int64), p)
