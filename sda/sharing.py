"""Packed Shamir secret sharing over Z_p with Reed-Solomon (Berlekamp-Welch) error correction.

Packed sharing (Franklin and Yung, STOC 1992) hides k secrets in one polynomial f of degree
< r = k + t: f takes the secrets at the points beta_1..beta_k and uniform random values at
gamma_1..gamma_t; share i is f(alpha_i). Any t shares are uniform and independent of the
secrets; any r shares determine f. A vector of d secrets is cut into B = ceil(d / k) blocks,
one polynomial per block, so each of the n parties holds B field elements.

Shares of a sum are the sum of shares, so the clerks' summed shares form a Reed-Solomon
codeword of dimension r: with m > r of them, up to floor((m - r) / 2) wrong ones are corrected
and named (Berlekamp and Welch, US patent 4,633,470, 1986; see also Gemmell and Sudan 1992).

Points: alpha_i are the committee's evaluation points (default 1..n); beta_j = p - 1 - j and
gamma_j = p - 1 - k - j, so every alpha must lie in [1, p - r - 1].
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from . import field as F
from .errors import ParameterError, ReconstructionError


def lagrange_matrix(nodes: np.ndarray, targets: np.ndarray, p: int) -> np.ndarray:
    """Matrix mapping values at `nodes` to values at `targets` of the interpolating polynomial.

    nodes: (r,) distinct; targets: (q,) disjoint from nodes. Returns (q, r) int64 with
    L[a, j] = prod_{m != j} (targets[a] - nodes[m]) / (nodes[j] - nodes[m]) (barycentric form).
    """
    nodes = F.reduce(nodes, p)
    targets = F.reduce(targets, p)
    if len(set(nodes.tolist())) != len(nodes):
        raise ParameterError("interpolation nodes must be distinct")
    if set(nodes.tolist()) & set(targets.tolist()):
        raise ParameterError("interpolation targets must differ from the nodes")
    diff = F.sub(nodes[:, None], nodes[None, :], p)
    np.fill_diagonal(diff, 1)
    weights = F.inv(F.prod_mod(diff, p, axis=1), p)  # (r,)
    tdiff = F.sub(targets[:, None], nodes[None, :], p)  # (q, r), no zeros
    full = F.prod_mod(tdiff, p, axis=1)  # (q,) = prod_m (x - node_m)
    return F.mul(F.mul(full[:, None], weights[None, :], p), F.inv(tdiff, p), p)


def vandermonde(points: np.ndarray, degree_bound: int, p: int) -> np.ndarray:
    """(m, degree_bound) matrix of points^j mod p for j < degree_bound."""
    points = F.reduce(points, p)
    out = np.empty((len(points), degree_bound), np.int64)
    col = np.ones(len(points), np.int64)
    for j in range(degree_bound):
        out[:, j] = col
        col = F.mul(col, points, p)
    return out


def solve_mod(A: np.ndarray, b: np.ndarray, p: int) -> np.ndarray | None:
    """One solution x of A x = b over Z_p (free variables set to 0), or None if inconsistent.

    A: (m, u); b: (m,). Gauss-Jordan elimination, one vectorised row operation per pivot.
    """
    m, u = A.shape
    M = np.concatenate([F.reduce(A, p), F.reduce(b, p)[:, None]], axis=1)
    pivots: list[int] = []
    row = 0
    for col in range(u):
        if row == m:
            break
        nz = np.nonzero(M[row:, col])[0]
        if nz.size == 0:
            continue
        piv = row + int(nz[0])
        if piv != row:
            M[[row, piv]] = M[[piv, row]]
        M[row] = F.mul(M[row], pow(int(M[row, col]), p - 2, p), p)
        factors = M[:, col].copy()
        factors[row] = 0
        nzr = np.nonzero(factors)[0]
        if nzr.size:
            M[nzr] = F.sub(M[nzr], F.mul(factors[nzr, None], M[row][None, :], p), p)
        pivots.append(col)
        row += 1
    if np.any(M[row:, u] != 0):
        return None
    x = np.zeros(u, np.int64)
    for i, col in enumerate(pivots):
        x[col] = M[i, u]
    return x


def poly_divmod(num: np.ndarray, den: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """Quotient and remainder of polynomials over Z_p, coefficients lowest degree first."""
    num = F.reduce(num, p).copy()
    den = F.reduce(den, p)
    nz = np.nonzero(den)[0]
    if nz.size == 0:
        raise ZeroDivisionError("division by the zero polynomial")
    den = den[: int(nz[-1]) + 1]
    dd = len(den) - 1
    lead_inv = pow(int(den[-1]), p - 2, p)
    if len(num) - 1 < dd:
        return np.zeros(1, np.int64), num
    quot = np.zeros(len(num) - dd, np.int64)
    for i in range(len(num) - 1 - dd, -1, -1):
        c = int(num[i + dd]) * lead_inv % p
        quot[i] = c
        if c:
            num[i : i + dd + 1] = F.sub(num[i : i + dd + 1], F.mul(den, c, p), p)
    return quot, num[:dd] if dd else np.zeros(1, np.int64)


def poly_eval(coeffs: np.ndarray, points: np.ndarray, p: int) -> np.ndarray:
    """Horner evaluation of one polynomial (lowest degree first) at many points."""
    points = F.reduce(points, p)
    acc = np.zeros(points.shape, np.int64)
    for c in coeffs[::-1]:
        acc = F.add(F.mul(acc, points, p), int(c), p)
    return acc


@dataclass(frozen=True)
class Decoded:
    """Secrets recovered from shares, and the positions (into the given list) found wrong."""

    secrets: np.ndarray
    wrong: tuple[int, ...]


@dataclass(frozen=True)
class PackedShamir:
    """Packed Shamir scheme: k secrets per polynomial, privacy threshold t, n shares.

    points: evaluation point of each share (alpha_i); defaults to 1..n.
    """

    p: int
    k: int
    t: int
    n: int
    points: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        F.check_modulus(self.p)
        for name in ("k", "t", "n"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ParameterError(f"{name} must be an int, got {type(v).__name__}")
        if self.k < 1 or self.t < 0:
            raise ParameterError(f"need k >= 1 and t >= 0, got k={self.k}, t={self.t}")
        if self.n < self.r:
            raise ParameterError(f"need n >= r = k + t, got n={self.n}, r={self.r}")
        if self.r > F.MAX_INNER:
            raise ParameterError(f"r = k + t must be <= {F.MAX_INNER}, got {self.r}")
        if not self.points:
            object.__setattr__(self, "points", tuple(range(1, self.n + 1)))
        pts = self.points
        if len(pts) != self.n:
            raise ParameterError(f"need {self.n} evaluation points, got {len(pts)}")
        if len(set(pts)) != len(pts):
            raise ParameterError("evaluation points must be distinct")
        top = self.p - self.r - 1
        if any((not isinstance(a, int)) or a < 1 or a > top for a in pts):
            raise ParameterError(f"evaluation points must be ints in [1, {top}]")

    @property
    def r(self) -> int:
        """Reconstruction threshold: any r shares determine the secrets."""
        return self.k + self.t

    def blocks(self, d: int) -> int:
        """Number of polynomials (B) needed for a vector of d secrets."""
        return max(1, math.ceil(d / self.k))

    def secret_points(self) -> np.ndarray:
        """(k,) the points beta_j that carry the secrets."""
        return self.p - 1 - np.arange(self.k, dtype=np.int64)

    def random_points(self) -> np.ndarray:
        """(t,) the points gamma_j that carry the randomness."""
        return self.p - 1 - self.k - np.arange(self.t, dtype=np.int64)

    def share_matrix(self) -> np.ndarray:
        """(n, r): values at (beta, gamma) -> shares at alpha. Cached per scheme."""
        return _share_matrix(self)

    def share(self, secrets: np.ndarray, randomness: np.ndarray) -> np.ndarray:
        """Share a vector. secrets: (d,) in [0, p); randomness: (t * B,) uniform in [0, p).

        Returns (n, B) int64: row i is party i's share, one element per block.
        """
        secrets = np.asarray(secrets, np.int64)
        d = secrets.shape[0]
        B = self.blocks(d)
        randomness = np.asarray(randomness, np.int64)
        if randomness.shape != (self.t * B,):
            raise ParameterError(f"need randomness of shape ({self.t * B},), got {randomness.shape}")
        padded = np.zeros(self.k * B, np.int64)
        padded[:d] = secrets
        values = np.concatenate([padded.reshape(B, self.k).T, randomness.reshape(B, self.t).T])
        return F.matmul(self.share_matrix(), values, self.p)

    def reconstruct(self, indices: list[int] | np.ndarray, shares: np.ndarray, d: int) -> np.ndarray:
        """Secrets from exactly the first r of the given shares (no error check).

        indices: (m,) party index of each row, m >= r; shares: (m, B). Returns (d,).
        """
        indices, shares = self._validate(indices, shares, d)
        idx = tuple(int(i) for i in indices[: self.r])
        secrets = F.matmul(_reconstruction_matrix(self, idx), shares[: self.r], self.p)
        return secrets.T.reshape(-1)[:d]

    def decode(
        self,
        indices: list[int] | np.ndarray,
        shares: np.ndarray,
        d: int,
        max_errors: int | None = None,
    ) -> Decoded:
        """Secrets from m >= r shares, correcting up to max_errors wrong ones and naming them.

        indices: (m,) party indices; shares: (m, B). max_errors defaults to floor((m - r) / 2),
        the most Berlekamp-Welch can correct. Raises ReconstructionError when the shares are not
        within max_errors of one codeword, so a wrong sum is never returned silently.
        """
        indices, shares = self._validate(indices, shares, d)
        m, r = len(indices), self.r
        limit = (m - r) // 2
        e = limit if max_errors is None else min(max_errors, limit)
        if e < 0:
            raise ParameterError(f"max_errors must be >= 0, got {max_errors}")
        wrong: tuple[int, ...] = ()
        if m == r or e == 0 or self._consistent(indices, shares):
            pass  # nothing to correct: no redundancy, or already one codeword
        else:
            # One random combination of the blocks is itself a codeword whose errors sit at
            # the union of the blocks' wrong positions (with probability >= 1 - B/p).
            # Coefficients in [1, p): a zero would hide that block's errors.
            raw = np.frombuffer(os.urandom(8 * shares.shape[1]), np.uint64)
            coeffs = (raw % np.uint64(self.p - 1)).astype(np.int64) + 1
            combined = F.matmul(shares, coeffs, self.p)
            wrong = self._locate_errors(indices, combined, e)
        good = [i for i in range(m) if i not in set(wrong)]
        if len(good) < r:
            raise ReconstructionError(f"only {len(good)} consistent shares, need r={r}")
        base = tuple(int(indices[i]) for i in good[:r])
        rest = good[r:]
        if rest:
            # Every remaining good share must lie on the same polynomials, block by block.
            check = _evaluation_matrix(self, base, tuple(int(indices[i]) for i in rest))
            predicted = F.matmul(check, shares[good[:r]], self.p)
            if not np.array_equal(predicted, shares[rest]):
                raise ReconstructionError(
                    f"shares inconsistent beyond the correctable {e} errors (m={m}, r={r})"
                )
        secrets = F.matmul(_reconstruction_matrix(self, base), shares[good[:r]], self.p)
        return Decoded(secrets=secrets.T.reshape(-1)[:d], wrong=wrong)

    def _consistent(self, indices: np.ndarray, shares: np.ndarray) -> bool:
        """True when all m shares lie on one set of polynomials of degree < r."""
        base = tuple(int(i) for i in indices[: self.r])
        rest = tuple(int(i) for i in indices[self.r :])
        predicted = F.matmul(_evaluation_matrix(self, base, rest), shares[: self.r], self.p)
        return bool(np.array_equal(predicted, shares[self.r :]))

    def _locate_errors(self, indices: np.ndarray, y: np.ndarray, e: int) -> tuple[int, ...]:
        """Berlekamp-Welch on one codeword y (m,): positions where y disagrees with P."""
        p, r = self.p, self.r
        alphas = np.asarray([self.points[i] for i in indices], np.int64)
        # Unknowns: E = x^e + sum_{j<e} e_j x^j and Q of degree < e + r; for every i,
        # Q(alpha_i) - y_i * E_low(alpha_i) = y_i * alpha_i^e.
        V = vandermonde(alphas, e + r + 1, p)
        A = np.concatenate([V[:, : e + r], F.neg(F.mul(y[:, None], V[:, :e], p), p)], axis=1)
        b = F.mul(y, V[:, e], p)
        sol = solve_mod(A, b, p)
        if sol is None:
            raise ReconstructionError(
                f"more than {e} wrong shares among {len(y)} (Berlekamp-Welch has no solution)"
            )
        Q = sol[: e + r]
        E = np.concatenate([sol[e + r :], [1]])
        P, rem = poly_divmod(Q, E, p)
        if np.any(rem != 0) or len(P) > r:
            raise ReconstructionError(f"more than {e} wrong shares among {len(y)} (E does not divide Q)")
        wrong = np.nonzero(poly_eval(P, alphas, p) != y)[0]
        if len(wrong) > e:
            raise ReconstructionError(f"{len(wrong)} shares disagree, more than the {e} correctable")
        return tuple(int(i) for i in wrong)

    def _validate(self, indices, shares, d: int) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        shares = F.reduce(np.asarray(shares, np.int64), self.p)
        if shares.ndim != 2 or shares.shape != (len(indices), self.blocks(d)):
            raise ParameterError(
                f"shares must have shape ({len(indices)}, {self.blocks(d)}), got {shares.shape}"
            )
        if len(indices) < self.r:
            raise ReconstructionError(f"need at least r={self.r} shares, got {len(indices)}")
        if len(set(indices.tolist())) != len(indices):
            raise ParameterError("share indices must be distinct")
        if indices.size and (indices.min() < 0 or indices.max() >= self.n):
            raise ParameterError(f"share indices must lie in [0, {self.n})")
        return indices, shares


@lru_cache(maxsize=16)
def _share_matrix(scheme: PackedShamir) -> np.ndarray:
    nodes = np.concatenate([scheme.secret_points(), scheme.random_points()])
    M = lagrange_matrix(nodes, np.asarray(scheme.points, np.int64), scheme.p)
    M.setflags(write=False)
    return M


@lru_cache(maxsize=256)
def _reconstruction_matrix(scheme: PackedShamir, idx: tuple[int, ...]) -> np.ndarray:
    nodes = np.asarray([scheme.points[i] for i in idx], np.int64)
    M = lagrange_matrix(nodes, scheme.secret_points(), scheme.p)
    M.setflags(write=False)
    return M


@lru_cache(maxsize=256)
def _evaluation_matrix(scheme: PackedShamir, base: tuple[int, ...], rest: tuple[int, ...]) -> np.ndarray:
    nodes = np.asarray([scheme.points[i] for i in base], np.int64)
    targets = np.asarray([scheme.points[i] for i in rest], np.int64)
    M = lagrange_matrix(nodes, targets, scheme.p)
    M.setflags(write=False)
    return M
