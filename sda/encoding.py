"""Fixed-point encoding of real vectors into Z_p, and centred decoding of their sums.

A value x is clipped to [lo, hi], scaled by `scale` and rounded stochastically
(floor(x*scale) + Bernoulli(frac)), so the encoding is unbiased: E[decode(encode(x))] = x.
Negative values wrap to p - |v|; a sum is decoded from the centred representative in
(-p/2, p/2). `check_capacity` refuses any parameter set for which a sum could wrap around.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EncodingError, ParameterError


def check_capacity(p: int, n_max: int, max_abs_value: int, noise_headroom: int = 0) -> None:
    """Refuse parameters where N_max * value_range + noise_headroom >= p/2.

    n_max: most participants a sum may have; max_abs_value: bound on |encoded value| of one
    participant's coordinate; noise_headroom: bound on |total DP noise| in field units.
    Centred decoding is exact only while |sum| < p/2, so wrap-around must be impossible.
    """
    for name, v in (("n_max", n_max), ("max_abs_value", max_abs_value),
                    ("noise_headroom", noise_headroom)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ParameterError(f"{name} must be an int >= 0, got {v!r}")
    bound = n_max * max_abs_value + noise_headroom
    if 2 * bound >= p:
        raise ParameterError(
            f"sum may overflow: N_max*value_range + noise_headroom = {n_max}*{max_abs_value}"
            f" + {noise_headroom} = {bound} must be < p/2 = {p / 2:.0f};"
            " lower N_max, the clip range or the scale, or use a larger p"
        )


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point codec: values clipped to [lo, hi], `scale` field units per 1.0."""

    scale: float
    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not all(math.isfinite(v) for v in (self.scale, self.lo, self.hi)):
            raise ParameterError(f"scale and clip bounds must be finite, got {self}")
        if self.scale <= 0:
            raise ParameterError(f"scale must be > 0, got {self.scale}")
        if not self.lo <= self.hi:
            raise ParameterError(f"clip bounds need lo <= hi, got lo={self.lo}, hi={self.hi}")

    @property
    def max_abs_value(self) -> int:
        """Bound on |encoded value| of one coordinate (stochastic rounding may add one unit)."""
        return math.ceil(max(abs(self.lo), abs(self.hi)) * self.scale) + 1

    def encode(self, x: np.ndarray, p: int, rng: np.random.Generator) -> np.ndarray:
        """Clip, scale and stochastically round. x: (d,) float -> (d,) int64 in [0, p)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise EncodingError("cannot encode NaN or infinite values")
        y = np.clip(x, self.lo, self.hi) * self.scale
        low = np.floor(y)
        up = rng.random(y.shape) < (y - low)
        v = low.astype(np.int64) + up
        return np.mod(v, p)

    def decode_sum(self, s: np.ndarray, p: int) -> np.ndarray:
        """Centred decoding of a sum. s: (d,) int64 in [0, p) -> (d,) float64."""
        return centred(s, p).astype(np.float64) / self.scale


def centred(s: np.ndarray, p: int) -> np.ndarray:
    """Representative in (-p/2, p/2] of each element of s (in [0, p))."""
    s = np.asarray(s, np.int64)
    if s.size and (int(s.min()) < 0 or int(s.max()) >= p):
        raise EncodingError(f"field elements must lie in [0, {p}), got [{s.min()}, {s.max()}]")
    return np.where(s > p // 2, s - p, s)
