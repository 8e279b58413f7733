"""Vectorised arithmetic in the prime field Z_p on int64 numpy arrays.

All arrays hold canonical representatives in [0, p). p < 2^31, so one product of two elements
fits in int64 (< 2^62) but a sum of many products does not; `matmul` therefore splits one
operand into 16-bit halves so that every partial sum stays below 2^63 (DESIGN §3).
"""

from __future__ import annotations

import numpy as np

from .errors import ParameterError

#: The default modulus: the Mersenne prime 2^31 - 1. Elements travel as 4-byte words, and
#: rejection sampling from 31-bit words almost never rejects (probability 2^-31).
P_DEFAULT = 2**31 - 1

#: matmul splits its right operand into 16-bit halves; with factors < 2^31 each product is
#: < 2^47 and a sum of up to 2^16 of them is < 2^63.
MAX_INNER = 2**16


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24 (bases from Jaeschke / Sorenson-Webster)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for q in small:
        if n % q == 0:
            return n == q
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def check_modulus(p: int) -> None:
    """Refuse a modulus that is not a prime below 2^31."""
    if not isinstance(p, int) or isinstance(p, bool):
        raise ParameterError(f"field modulus must be an int, got {type(p).__name__}")
    if not 2 < p < 2**31:
        raise ParameterError(f"field modulus must satisfy 2 < p < 2^31, got {p}")
    if not is_prime(p):
        raise ParameterError(f"field modulus must be prime, got {p}")


def reduce(a: np.ndarray | int, p: int) -> np.ndarray:
    """Canonical representative in [0, p) of any int64 array (negatives included)."""
    return np.mod(np.asarray(a, dtype=np.int64), p)


def add(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """(a + b) mod p, elementwise; inputs in [0, p)."""
    return np.mod(np.asarray(a, np.int64) + np.asarray(b, np.int64), p)


def sub(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """(a - b) mod p, elementwise; inputs in [0, p)."""
    return np.mod(np.asarray(a, np.int64) - np.asarray(b, np.int64), p)


def neg(a: np.ndarray, p: int) -> np.ndarray:
    """-a mod p, elementwise."""
    return np.mod(-np.asarray(a, np.int64), p)


def mul(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """(a * b) mod p, elementwise; inputs in [0, p) so the product fits in int64."""
    return np.mod(np.asarray(a, np.int64) * np.asarray(b, np.int64), p)


def power(a: np.ndarray, e: int, p: int) -> np.ndarray:
    """a^e mod p elementwise by square-and-multiply over the whole array; e >= 0."""
    if e < 0:
        raise ParameterError(f"exponent must be >= 0, got {e}")
    base = reduce(a, p)
    result = np.ones_like(base)
    while e:
        if e & 1:
            result = mul(result, base, p)
        base = mul(base, base, p)
        e >>= 1
    return result


def inv(a: np.ndarray, p: int) -> np.ndarray:
    """Multiplicative inverse elementwise (Fermat: a^(p-2)); raises on a zero element."""
    a = reduce(a, p)
    if np.any(a == 0):
        raise ZeroDivisionError("0 has no inverse in Z_p")
    return power(a, p - 2, p)


def sum_mod(a: np.ndarray, p: int, axis: int = 0) -> np.ndarray:
    """Sum along an axis mod p, in chunks so the int64 accumulator never overflows.

    a: elements in [0, p); any number of rows (chunks of 2^32 rows keep sums < 2^63).
    """
    a = np.asarray(a, np.int64)
    a = np.moveaxis(a, axis, 0)
    chunk = 2**32
    total = np.zeros(a.shape[1:], np.int64)
    for start in range(0, max(a.shape[0], 1), chunk):
        total = np.mod(total + np.mod(a[start : start + chunk].sum(axis=0), p), p)
    return total


def prod_mod(a: np.ndarray, p: int, axis: int = -1) -> np.ndarray:
    """Product along an axis mod p (one vectorised multiply per slice of that axis)."""
    a = np.moveaxis(np.asarray(a, np.int64), axis, -1)
    result = np.ones(a.shape[:-1], np.int64)
    for j in range(a.shape[-1]):
        result = mul(result, a[..., j], p)
    return result


def matmul(A: np.ndarray, X: np.ndarray, p: int) -> np.ndarray:
    """A @ X mod p without int64 overflow.

    A: (a, r) in [0, p); X: (r, b) or (r,) in [0, p). Returns (a, b) or (a,).
    X is split as X = X_hi * 2^16 + X_lo so each partial product is < 2^47; an inner dimension
    above 2^16 is cut into chunks of 2^16 whose results are summed mod p.
    """
    A = np.asarray(A, np.int64)
    X = np.asarray(X, np.int64)
    inner = A.shape[-1]
    if inner > MAX_INNER:  # longer inner products: sum chunks of 2^16 mod p
        out = matmul(A[:, :MAX_INNER], X[:MAX_INNER], p)
        for s in range(MAX_INNER, inner, MAX_INNER):
            out = np.mod(out + matmul(A[:, s : s + MAX_INNER], X[s : s + MAX_INNER], p), p)
        return out
    lo = X & 0xFFFF
    hi = X >> 16
    return np.mod(np.mod(A @ hi, p) * 65536 + np.mod(A @ lo, p), p)


def from_uint32_bytes(raw: bytes, p: int) -> np.ndarray:
    """Decode little-endian 4-byte elements; raises ValueError on a length or range problem."""
    if len(raw) % 4:
        raise ValueError(f"element bytes must be a multiple of 4, got {len(raw)}")
    out = np.frombuffer(raw, dtype="<u4").astype(np.int64)
    if out.size and int(out.max()) >= p:
        raise ValueError(f"element out of range: {int(out.max())} >= p={p}")
    return out


def to_uint32_bytes(a: np.ndarray) -> bytes:
    """Encode elements in [0, p) as little-endian 4-byte words."""
    return np.ascontiguousarray(np.asarray(a, np.int64).astype("<u4")).tobytes()
