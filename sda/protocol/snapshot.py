"""The frozen participant set S: its compressed bitmap over the registry and its hash.

The bitmap is what makes a clerk's download O(|S|/8 + B) bytes instead of O(|S| * B).
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

from ..errors import MessageError


def bitmap_bytes(indices: np.ndarray, size: int) -> bytes:
    """Uncompressed bitmap: bit i (little-endian within each byte) set for i in indices."""
    bits = np.zeros(size, np.uint8)
    bits[np.asarray(indices, np.int64)] = 1
    return np.packbits(bits, bitorder="little").tobytes()


def encode_bitmap(indices: np.ndarray, size: int) -> bytes:
    """zlib-compressed bitmap of the participant set over a registry of `size` devices."""
    return zlib.compress(bitmap_bytes(indices, size), 9)


def decode_bitmap(data: bytes, size: int) -> tuple[np.ndarray, bytes]:
    """Sorted participant indices and the raw bitmap, from untrusted compressed bytes.

    Decompression is bounded to the exact expected length (no zip bombs); padding bits past
    `size` must be zero.
    """
    expected = (size + 7) // 8
    d = zlib.decompressobj()
    try:
        raw = d.decompress(data, expected + 1)
    except zlib.error as exc:
        raise MessageError(f"participant bitmap: not zlib data ({exc})") from exc
    if len(raw) != expected or not d.eof or d.unconsumed_tail or d.unused_data:
        raise MessageError(
            f"participant bitmap: expected exactly {expected} bytes for {size} devices"
        )
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")
    if bits[size:].any():
        raise MessageError("participant bitmap: bits set beyond the registry size")
    return np.nonzero(bits[:size])[0].astype(np.int64), raw


def snapshot_hash(announce_digest: bytes, raw_bitmap: bytes) -> bytes:
    """SHA-256 binding the exact announce to the exact participant set."""
    return hashlib.sha256(b"sda/v1/snapshot\x00" + announce_digest + raw_bitmap).digest()
