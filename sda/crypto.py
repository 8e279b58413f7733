"""The cryptography of the protocol, all from pyca/cryptography: a small safe surface.

- `sign` / `verify`: Ed25519 (RFC 8032) over a domain-separated message.
- `pairwise_key`: X25519 (RFC 7748) then HKDF-SHA256 (RFC 5869), bound to both public keys,
  so device u and clerk c derive the same long-term K_uc without talking.
- `pad` / `pad_sum`: the pad PRF, PRF(K_uc, aggregation_id), and `mask` / `mask_sum`: the mask
  PRG expanded from a participant's seed. Both are ChaCha20 (RFC 8439) keystreams read as
  little-endian words, masked to bitlen(p) bits, with words >= p rejected, so every element is
  uniform in Z_p.
- `seal_to` / `open_from`: HPKE base mode (RFC 9180) with X25519, HKDF-SHA256 and
  ChaCha20-Poly1305.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import BadSignature, CryptoError, DecryptionFailed, ParameterError

KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEED_BYTES = 32
#: HPKE overhead: the 32-byte encapsulated X25519 key plus the 16-byte Poly1305 tag.
SEAL_OVERHEAD = 48

_HPKE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
_SIGN_CONTEXT = b"sda/v1/sign\x00"
_PAIRWISE_INFO = b"sda/v1/pairwise\x00"


# --- identities ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublicIdentity:
    """What a party publishes: its Ed25519 verification key and X25519 exchange key (raw)."""

    sign_key: bytes
    box_key: bytes


@dataclass(frozen=True)
class Identity:
    """A party's long-term secret keys: Ed25519 to sign, X25519 to agree and to be sealed to."""

    signing: Ed25519PrivateKey
    exchange: X25519PrivateKey

    @classmethod
    def generate(cls) -> Identity:
        """Fresh keys from the OS's randomness."""
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Identity:
        """Load the 64-byte form written by `to_bytes`."""
        if len(raw) != 2 * KEY_BYTES:
            raise CryptoError(f"identity must be {2 * KEY_BYTES} bytes, got {len(raw)}")
        return cls(
            Ed25519PrivateKey.from_private_bytes(raw[:KEY_BYTES]),
            X25519PrivateKey.from_private_bytes(raw[KEY_BYTES:]),
        )

    def to_bytes(self) -> bytes:
        """64 secret bytes: Ed25519 seed then X25519 scalar. Store with mode 0600."""
        return self.signing.private_bytes_raw() + self.exchange.private_bytes_raw()

    def public(self) -> PublicIdentity:
        """The public half."""
        return PublicIdentity(
            self.signing.public_key().public_bytes_raw(),
            self.exchange.public_key().public_bytes_raw(),
        )


# --- signatures ---------------------------------------------------------------------------


def sign(key: Ed25519PrivateKey, signer_id: str, payload: bytes) -> bytes:
    """Ed25519 signature over (context, signer id, payload): 64 bytes.

    Binding the signer id stops a valid signature being re-attributed to another sender.
    """
    return key.sign(_signed_message(signer_id, payload))


def verify(public_key: bytes, signer_id: str, payload: bytes, signature: bytes) -> None:
    """Raise BadSignature unless `signature` is signer_id's signature over payload."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, _signed_message(signer_id, payload)
        )
    except (InvalidSignature, ValueError) as exc:
        raise BadSignature(f"signature of {signer_id!r} does not verify") from exc


def _signed_message(signer_id: str, payload: bytes) -> bytes:
    sid = signer_id.encode()
    return _SIGN_CONTEXT + len(sid).to_bytes(2, "big") + sid + payload


# --- pairwise keys ------------------------------------------------------------------------


def pairwise_key(own: X25519PrivateKey, own_public: bytes, peer_public: bytes) -> bytes:
    """K = HKDF-SHA256(X25519(own, peer), info = context || sorted public keys): 32 bytes.

    Both sides compute the same key. A peer key of small order (all-zero shared secret) is
    refused rather than giving a key the world knows.
    """
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise CryptoError("X25519 with this peer key gives no shared secret") from exc
    lo, hi = sorted((own_public, peer_public))
    return HKDF(hashes.SHA256(), KEY_BYTES, None, _PAIRWISE_INFO + lo + hi).derive(shared)


def check_box_key(public: bytes) -> None:
    """Refuse an X25519 key that gives no shared secret (small order): to be run on every key
    at registration, since one such device key would stop every clerk's job."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise CryptoError("X25519 key of small order or wrong length") from exc


class PairwiseKeys:
    """Long-term pairwise keys of one party, derived on first use and then cached.

    `cached` maps peer public key -> K; a service persists it so a restart stays warm.
    """

    def __init__(self, own: X25519PrivateKey, cached: dict[bytes, bytes] | None = None):
        self._own = own
        self._own_public = own.public_key().public_bytes_raw()
        self.cached: dict[bytes, bytes] = {} if cached is None else cached

    def key_for(self, peer_public: bytes) -> bytes:
        """K with this peer (cached)."""
        k = self.cached.get(peer_public)
        if k is None:
            k = pairwise_key(self._own, self._own_public, peer_public)
            self.cached[peer_public] = k
        return k

    def keys_for(self, peers: Sequence[bytes]) -> list[bytes]:
        """K with each peer, in order (cached)."""
        get = self.cached.get
        out = [get(pk) for pk in peers]
        for i, k in enumerate(out):
            if k is None:
                out[i] = self.key_for(peers[i])
        return out  # type: ignore[return-value]


# --- ChaCha20 streams of field elements ---------------------------------------------------


def _nonce(label: bytes, aggregation_id: str) -> bytes:
    # cryptography's ChaCha20 takes a 16-byte nonce: 4-byte little-endian block counter
    # (starting at 0) then the 12-byte RFC 8439 nonce.
    return bytes(4) + hashlib.sha256(label + aggregation_id.encode()).digest()[:12]


def _words_needed(count: int, p: int) -> int:
    bits = p.bit_length()
    reject = 1 - p / 2**bits
    lam = count * reject / (1 - reject)
    return count + math.ceil(lam + 6 * math.sqrt(lam) + 2)


def _accept(words: np.ndarray, p: int) -> np.ndarray:
    return (words & ((1 << p.bit_length()) - 1)).astype(np.int64)


def field_stream(key: bytes, nonce: bytes, count: int, p: int) -> np.ndarray:
    """The first `count` elements of Z_p drawn from ChaCha20(key, nonce) by rejection.

    Returns (count,) int64, uniform in [0, p).
    """
    enc = Cipher(algorithms.ChaCha20(key, nonce), None).encryptor()
    out = np.empty(0, np.int64)
    want = _words_needed(count, p)
    while out.size < count:
        words = _accept(np.frombuffer(enc.update(bytes(4 * want)), "<u4"), p)
        out = np.concatenate([out, words[words < p]])
        want = _words_needed(max(count - out.size, 1), p)
    return out[:count]


def field_streams(keys: Sequence[bytes], nonce: bytes, count: int, p: int) -> np.ndarray:
    """`field_stream` for many keys at once: (len(keys), count) int64, row i for keys[i].

    One ChaCha20 call per key and one vectorised rejection pass; the rare row that needs more
    words than drawn is finished by `field_stream`, so rows equal the one-key function exactly.
    """
    want = _words_needed(count, p)
    zeros = bytes(4 * want)
    chacha = algorithms.ChaCha20
    raw = b"".join([Cipher(chacha(k, nonce), None).encryptor().update(zeros) for k in keys])
    words = _accept(np.frombuffer(raw, "<u4").reshape(len(keys), want), p)
    ok = words < p
    if ok[:, :count].all():
        return words[:, :count]
    out = np.empty((len(keys), count), np.int64)
    for i in range(len(keys)):
        accepted = words[i][ok[i]]
        out[i] = accepted[:count] if accepted.size >= count else field_stream(keys[i], nonce, count, p)
    return out


def pad(key: bytes, aggregation_id: str, count: int, p: int) -> np.ndarray:
    """PRF(K_uc, aggregation_id): the (count,) pad that hides a share from the server."""
    return field_stream(key, _nonce(b"sda/v1/pad\x00", aggregation_id), count, p)


def pads(keys: Sequence[bytes], aggregation_id: str, count: int, p: int) -> np.ndarray:
    """The pads of many pairwise keys: (len(keys), count)."""
    return field_streams(keys, _nonce(b"sda/v1/pad\x00", aggregation_id), count, p)


def pad_sum(keys: Sequence[bytes], aggregation_id: str, count: int, p: int,
            batch: int = 65536) -> np.ndarray:
    """sum_u PRF(K_uc, aggregation_id) mod p over many keys: (count,). Batched for memory."""
    total = np.zeros(count, np.int64)
    for start in range(0, len(keys), batch):
        block = pads(keys[start : start + batch], aggregation_id, count, p)
        total = np.mod(total + np.mod(block.sum(axis=0), p), p)
    return total


def mask(seed: bytes, aggregation_id: str, count: int, p: int) -> np.ndarray:
    """The mask PRG: (count,) uniform field elements expanded from a 32-byte seed."""
    return field_stream(seed, _nonce(b"sda/v1/mask\x00", aggregation_id), count, p)


def mask_sum(seeds: Sequence[bytes], aggregation_id: str, count: int, p: int,
             batch: int = 8192) -> np.ndarray:
    """sum_u PRG(seed_u) mod p: (count,). Batched so memory stays at batch * count words."""
    nonce = _nonce(b"sda/v1/mask\x00", aggregation_id)
    total = np.zeros(count, np.int64)
    for start in range(0, len(seeds), batch):
        block = field_streams(seeds[start : start + batch], nonce, count, p)
        total = np.mod(total + np.mod(block.sum(axis=0), p), p)
    return total


def random_field_elements(count: int, p: int,
                          random_bytes: Callable[[int], bytes] = os.urandom) -> np.ndarray:
    """(count,) uniform elements from a fresh 32-byte key (Shamir randomness)."""
    return field_stream(random_bytes(KEY_BYTES), bytes(16), count, p)


# --- sealing to a recipient ---------------------------------------------------------------


def seal_to(recipient_public: bytes, plaintext: bytes, info: bytes) -> bytes:
    """HPKE-seal plaintext to the recipient's X25519 key; `info` binds the context."""
    try:
        return _HPKE.encrypt(plaintext, X25519PublicKey.from_public_bytes(recipient_public), info)
    except ValueError as exc:
        raise ParameterError(f"cannot seal to this recipient key: {exc}") from exc


def open_from(recipient: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    """Open an HPKE box sealed to us with the same info; DecryptionFailed otherwise."""
    try:
        return _HPKE.decrypt(sealed, recipient, info)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed("sealed box does not open (tampered, or not sealed to us)") from exc
