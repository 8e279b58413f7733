"""The trainable head: a small MLP over a window of backbone embeddings, in numpy.

score = sigmoid(w2 . relu(W1 . flatten(x) + b1) + b2), x: (WINDOW, EMBED) embeddings. Small enough
to train on a device and to aggregate by `sda` (its parameters flatten to one vector), with the
forward pass and the gradient of the binary cross-entropy written out (no autograd at run time).
"""

from __future__ import annotations

import lzma
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

#: What np.load (allow_pickle=False) and reading the arrays of a damaged or foreign .npz raise: not a zip, a bad
#: CRC, an unknown compression method (NotImplementedError) or an encrypted member (RuntimeError), truncated or
#: corrupt compressed data, a plain .npy (no context manager: TypeError), a missing key, a pickled array.
NPZ_ERRORS = (OSError, EOFError, KeyError, ValueError, TypeError, RuntimeError, zipfile.BadZipFile, zlib.error,
              lzma.LZMAError)

_KEYS = ("W1", "b1", "w2", "b2")


@dataclass
class Head:
    """Parameters: W1 (D, H), b1 (H,), w2 (H,), b2 () with D = window * embed."""

    W1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    window: int
    embed: int

    @classmethod
    def init(cls, window: int, embed: int, hidden: int, rng: np.random.Generator) -> Head:
        """He-initialised weights, zero biases."""
        d = window * embed
        return cls(rng.standard_normal((d, hidden)) * np.sqrt(2.0 / d), np.zeros(hidden),
                   rng.standard_normal(hidden) * np.sqrt(1.0 / hidden), np.zeros(()), window, embed)

    @classmethod
    def load(cls, path: Path) -> Head:
        """Read a head from .npz (keys W1, b1, w2, b2, window, embed)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(*(z[k].astype(np.float64) for k in _KEYS), int(z["window"]), int(z["embed"]))
        except NPZ_ERRORS as exc:
            raise ModelError(f"{path}: not a head file ({exc})") from exc

    def save(self, path: Path) -> None:
        """Write as .npz (no pickle)."""
        np.savez(path, W1=self.W1, b1=self.b1, w2=self.w2, b2=self.b2, window=self.window, embed=self.embed)

    @property
    def size(self) -> int:
        """Number of parameters (the dimension of an aggregated update)."""
        return self.W1.size + self.b1.size + self.w2.size + 1

    def flat(self) -> np.ndarray:
        """All parameters as one vector (W1, b1, w2, b2)."""
        return np.concatenate([self.W1.ravel(), self.b1, self.w2, self.b2.reshape(1)])

    def with_flat(self, v: np.ndarray) -> Head:
        """A head with parameters from a vector laid out like `flat()`."""
        d, h = self.W1.shape
        v = np.asarray(v, np.float64)
        if v.shape != (self.size,):
            raise ModelError(f"parameter vector of shape {v.shape}, need ({self.size},)")
        return Head(v[: d * h].reshape(d, h), v[d * h : d * h + h], v[d * h + h : d * h + 2 * h], v[-1].copy(),
                    self.window, self.embed)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """x: (N, window, embed) -> (N,) pre-sigmoid scores."""
        z = np.maximum(0.0, x.reshape(len(x), -1) @ self.W1 + self.b1)
        return z @ self.w2 + self.b2

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (N, window, embed) -> (N,) probabilities in (0, 1)."""
        return 1.0 / (1.0 + np.exp(-self.logits(x)))

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean binary cross-entropy of labels y (N,) in {0, 1} and its gradient, laid out like flat()."""
        n = len(x)
        flat_x = x.reshape(n, -1)
        pre = flat_x @ self.W1 + self.b1
        z = np.maximum(0.0, pre)
        s = z @ self.w2 + self.b2
        # log(1 + e^s) - y s, computed stably
        loss = float(np.mean(np.logaddexp(0.0, s) - y * s))
        ds = (1.0 / (1.0 + np.exp(-s)) - y) / n  # (N,)
        g_w2 = z.T @ ds
        g_b2 = ds.sum()
        dz = np.outer(ds, self.w2) * (pre > 0)
        g_W1 = flat_x.T @ dz
        g_b1 = dz.sum(axis=0)
        return loss, np.concatenate([g_W1.ravel(), g_b1, g_w2, [g_b2]])
