"""Tests of sda/crypto.py: known answers from the RFCs, stream properties, sealing, signatures."""

from __future__ import annotations

import hashlib
import hmac
import os
from unittest import mock

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from sda import crypto
from sda.errors import BadSignature, CryptoError, DecryptionFailed, ParameterError

P31 = 2**31 - 1  # Mersenne prime: rejection almost never happens
P_HALF = 2**30 + 3  # prime, bitlen 31: about half of the 31-bit words are rejected

# --- RFC vectors --------------------------------------------------------------------------

# RFC 7748 section 6.1
ALICE_X_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_X_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_X_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_X_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# RFC 8032 section 7.1, TEST 1
ED_SK = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ED_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
ED_SIG_EMPTY = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
    "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

# RFC 8439: key 00..1f
CHACHA_KEY = bytes(range(32))
# section 2.4.2: nonce, counter 1, plaintext and ciphertext
CHACHA_NONCE_242 = bytes.fromhex("000000000000004a00000000")
CHACHA_PT_242 = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
    b"the future, sunscreen would be it."
)
CHACHA_CT_242 = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)
# section 2.3.2: nonce, counter 1, serialized block
CHACHA_NONCE_232 = bytes.fromhex("000000090000004a00000000")
CHACHA_BLOCK_232 = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)

# RFC 5869 test case 1 (to check the hand-written HKDF below)
HKDF_TC1 = dict(
    ikm=bytes([0x0B] * 22),
    salt=bytes(range(13)),
    info=bytes(range(0xF0, 0xFA)),
    length=42,
    okm=bytes.fromhex(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    ),
)


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 straight from RFC 5869 section 2, with hmac only."""
    if salt is None:
        salt = bytes(32)  # HashLen zeros
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        okm += t
        i += 1
    return okm[:length]


def chacha_nonce16(counter: int, nonce12: bytes) -> bytes:
    """cryptography's 16-byte ChaCha20 nonce: 4-byte little-endian counter || RFC nonce."""
    return counter.to_bytes(4, "little") + nonce12


def raw_words(key: bytes, nonce16: bytes, n: int) -> np.ndarray:
    """The first n little-endian 32-bit words of the keystream, independently of sda."""
    ks = Cipher(algorithms.ChaCha20(key, nonce16), None).encryptor().update(bytes(4 * n))
    return np.array([int.from_bytes(ks[4 * i : 4 * i + 4], "little") for i in range(n)], np.int64)


def expected_stream(key: bytes, nonce16: bytes, count: int, p: int) -> np.ndarray:
    """Reference rejection sampler written independently: mask to bitlen(p), drop >= p."""
    mask_bits = (1 << p.bit_length()) - 1
    n = 4 * count + 64
    while True:
        words = raw_words(key, nonce16, n) & mask_bits
        acc = words[words < p]
        if acc.size >= count:
            return acc[:count]
        n *= 2


def key_of(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


# --- known answers: X25519 + HKDF ---------------------------------------------------------


def test_hand_hkdf_matches_rfc5869_test_case_1():
    tc = HKDF_TC1
    assert hkdf_sha256(tc["ikm"], tc["salt"], tc["info"], tc["length"]) == tc["okm"]


def test_x25519_rfc7748_vector_through_identity():
    ed_seed = bytes(32)
    alice = crypto.Identity.from_bytes(ed_seed + ALICE_X_PRIV)
    bob = crypto.Identity.from_bytes(ed_seed + BOB_X_PRIV)
    assert alice.public().box_key == ALICE_X_PUB
    assert bob.public().box_key == BOB_X_PUB
    assert alice.exchange.exchange(bob.exchange.public_key()) == X_SHARED
    assert bob.exchange.exchange(alice.exchange.public_key()) == X_SHARED


def test_pairwise_key_is_hkdf_of_rfc7748_shared_secret_and_symmetric():
    alice = crypto.Identity.from_bytes(bytes(32) + ALICE_X_PRIV)
    bob = crypto.Identity.from_bytes(bytes(32) + BOB_X_PRIV)
    lo, hi = sorted((ALICE_X_PUB, BOB_X_PUB))
    expected = hkdf_sha256(X_SHARED, None, b"sda/v1/pairwise\x00" + lo + hi, 32)
    k_ab = crypto.pairwise_key(alice.exchange, ALICE_X_PUB, BOB_X_PUB)
    k_ba = crypto.pairwise_key(bob.exchange, BOB_X_PUB, ALICE_X_PUB)
    assert k_ab == expected
    assert k_ba == expected
    assert len(k_ab) == crypto.KEY_BYTES
    # the raw shared secret must not be used directly
    assert k_ab != X_SHARED


def test_pairwise_key_symmetric_for_random_parties():
    a, b, c = (X25519PrivateKey.generate() for _ in range(3))
    pa, pb, pc = (k.public_key().public_bytes_raw() for k in (a, b, c))
    k_ab = crypto.pairwise_key(a, pa, pb)
    assert k_ab == crypto.pairwise_key(b, pb, pa)
    # a different pair gives a different key
    assert crypto.pairwise_key(a, pa, pc) != k_ab
    assert crypto.pairwise_key(c, pc, pb) != k_ab


@pytest.mark.parametrize(
    "peer",
    [
        bytes(32),  # the all-zero point: small order
        bytes([1]) + bytes(31),  # u = 1: small order
    ],
)
def test_pairwise_key_small_order_peer_raises(peer):
    own = X25519PrivateKey.generate()
    with pytest.raises(CryptoError):
        crypto.pairwise_key(own, own.public_key().public_bytes_raw(), peer)


# --- known answers: Ed25519 ---------------------------------------------------------------


def test_ed25519_rfc8032_test1_via_cryptography():
    sk = Ed25519PrivateKey.from_private_bytes(ED_SK)
    assert sk.public_key().public_bytes_raw() == ED_PK
    assert sk.sign(b"") == ED_SIG_EMPTY
    Ed25519PublicKey.from_public_bytes(ED_PK).verify(ED_SIG_EMPTY, b"")


@pytest.mark.parametrize(
    "signer_id, payload",
    [("alice", b"payload"), ("", b""), ("clerk-\u00e9\u4e2d", bytes(range(256))), ("x" * 300, b"p")],
)
def test_sign_signs_exactly_the_domain_separated_message(signer_id, payload):
    sk = Ed25519PrivateKey.from_private_bytes(ED_SK)
    sid = signer_id.encode()
    message = b"sda/v1/sign\x00" + len(sid).to_bytes(2, "big") + sid + payload
    sig = crypto.sign(sk, signer_id, payload)
    assert len(sig) == crypto.SIGNATURE_BYTES
    # Ed25519 is deterministic: the signature is exactly the one over that message
    assert sig == sk.sign(message)
    Ed25519PublicKey.from_public_bytes(ED_PK).verify(sig, message)  # raises if not
    crypto.verify(ED_PK, signer_id, payload, sig)
    # not a signature of the bare payload
    assert sig != sk.sign(payload)


# --- known answers: ChaCha20 field streams ------------------------------------------------


def test_field_stream_matches_rfc8439_2_4_2_keystream():
    keystream = bytes(a ^ b for a, b in zip(CHACHA_PT_242, CHACHA_CT_242, strict=True))
    assert len(keystream) == 114
    n = len(keystream) // 4  # 28 full words
    words = [int.from_bytes(keystream[4 * i : 4 * i + 4], "little") & (2**31 - 1) for i in range(n)]
    assert all(w < P31 for w in words)  # no rejection in this prefix
    got = crypto.field_stream(CHACHA_KEY, chacha_nonce16(1, CHACHA_NONCE_242), n, P31)
    assert got.dtype == np.int64
    assert got.tolist() == words


def test_field_stream_matches_rfc8439_2_3_2_block():
    words = [
        int.from_bytes(CHACHA_BLOCK_232[4 * i : 4 * i + 4], "little") & (2**31 - 1) for i in range(16)
    ]
    got = crypto.field_stream(CHACHA_KEY, chacha_nonce16(1, CHACHA_NONCE_232), 16, P31)
    assert got.tolist() == words


def test_field_stream_rejection_matches_reference_on_rfc_key():
    """With p = 2^30+3 the RFC keystream words >= p (after masking) must be skipped."""
    nonce16 = chacha_nonce16(1, CHACHA_NONCE_232)
    masked = [int.from_bytes(CHACHA_BLOCK_232[4 * i : 4 * i + 4], "little") & (2**31 - 1) for i in range(16)]
    accepted = [w for w in masked if w < P_HALF]
    assert 0 < len(accepted) < 16  # the vector really exercises rejection
    got = crypto.field_stream(CHACHA_KEY, nonce16, len(accepted), P_HALF)
    assert got.tolist() == accepted


@pytest.mark.parametrize("p", [3, 5, 257, 65537, P_HALF, 1_000_000_007, P31])
def test_field_stream_matches_independent_reference(p):
    key = key_of(f"ref{p}")
    nonce16 = bytes(4) + key_of("nonce")[:12]
    for count in (0, 1, 7, 500):
        got = crypto.field_stream(key, nonce16, count, p)
        assert got.shape == (count,)
        assert got.tolist() == expected_stream(key, nonce16, count, p).tolist()


def test_field_stream_independent_of_chunking():
    """Drawing one word at a time (many loop iterations) gives the same stream."""
    key, nonce16 = key_of("chunk"), bytes(16)
    ref = crypto.field_stream(key, nonce16, 300, P_HALF)
    with mock.patch.object(crypto, "_words_needed", lambda count, p: 1):
        assert crypto.field_stream(key, nonce16, 300, P_HALF).tolist() == ref.tolist()


# --- uniformity ---------------------------------------------------------------------------


def _chi2_pvalue(values: np.ndarray, p: int, bins: int = 20) -> float:
    edges = np.array([p * i // bins for i in range(bins + 1)], dtype=np.int64)
    observed = np.histogram(values, bins=edges)[0]
    expected = len(values) * np.diff(edges) / p
    return stats.chisquare(observed, expected).pvalue


def test_field_stream_uniform_chi_square():
    n = 50_000
    vals = crypto.field_stream(key_of("uniform"), bytes(16), n, P_HALF)
    assert vals.shape == (n,)
    assert vals.min() >= 0 and vals.max() < P_HALF
    assert _chi2_pvalue(vals, P_HALF) > 0.001


def test_field_stream_uniform_chi_square_other_prime_and_test_power():
    p = 1_500_000_001  # prime; 2^31 mod p is large, so reducing mod p would be badly biased
    n = 50_000
    vals = crypto.field_stream(key_of("uniform2"), bytes(16), n, p)
    assert vals.min() >= 0 and vals.max() < p
    assert _chi2_pvalue(vals, p) > 0.001
    # the chi-square test has power: reducing mod p instead of rejecting is caught
    biased = (raw_words(key_of("uniform2"), bytes(16), n) & (2**31 - 1)) % p
    assert _chi2_pvalue(biased, p) < 1e-6


# --- batch streams ------------------------------------------------------------------------

PRIMES = st.sampled_from([3, 5, 17, 257, 65537, P_HALF, P31])


@settings(deadline=None, max_examples=60)
@given(
    keys=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=5),
    count=st.integers(1, 200),
    p=PRIMES,
    nonce=st.binary(min_size=12, max_size=12),
)
def test_field_streams_equal_stacked_field_stream(keys, count, p, nonce):
    nonce16 = bytes(4) + nonce
    got = crypto.field_streams(keys, nonce16, count, p)
    expected = np.stack([crypto.field_stream(k, nonce16, count, p) for k in keys])
    assert got.shape == (len(keys), count)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
    assert (got >= 0).all() and (got < p).all()


@pytest.mark.parametrize("p", [3, P_HALF])
@pytest.mark.parametrize("count", [1, 5, 64, 200])
def test_field_streams_fallback_rows_equal_field_stream(p, count):
    """Give field_streams too few words so rows must be finished by field_stream."""
    keys = [key_of(f"fb{i}") for i in range(8)]
    nonce16 = bytes(16)
    expected = np.stack([expected_stream(k, nonce16, count, p) for k in keys])
    real_field_stream = crypto.field_stream
    calls = []

    def spy(*args):
        calls.append(args)
        return real_field_stream(*args)

    with mock.patch.object(crypto, "_words_needed", lambda count, p: count), \
            mock.patch.object(crypto, "field_stream", spy):
        got = crypto.field_streams(keys, nonce16, count, p)
    assert calls, "fallback to field_stream was not exercised"
    np.testing.assert_array_equal(got, expected)


def test_field_streams_empty_keys():
    out = crypto.field_streams([], bytes(16), 10, P31)
    assert out.shape == (0, 10)


# --- pads and masks -----------------------------------------------------------------------


def test_pad_uses_labelled_nonce():
    key = key_of("k")
    nonce16 = bytes(4) + hashlib.sha256(b"sda/v1/pad\x00" + b"agg-1").digest()[:12]
    assert crypto.pad(key, "agg-1", 50, P31).tolist() == expected_stream(key, nonce16, 50, P31).tolist()
    nonce16 = bytes(4) + hashlib.sha256(b"sda/v1/mask\x00" + b"agg-1").digest()[:12]
    assert crypto.mask(key, "agg-1", 50, P31).tolist() == expected_stream(key, nonce16, 50, P31).tolist()


@pytest.mark.parametrize("p", [P31, P_HALF])
def test_pads_rows_equal_pad(p):
    keys = [key_of(f"pk{i}") for i in range(7)]
    got = crypto.pads(keys, "agg", 120, p)
    assert got.shape == (7, 120)
    for i, k in enumerate(keys):
        assert got[i].tolist() == crypto.pad(k, "agg", 120, p).tolist()


@pytest.mark.parametrize("p", [P31, P_HALF, 65537])
@pytest.mark.parametrize("batch", [1, 3, 10, 65536])
def test_pad_sum_equals_sum_of_pads(p, batch):
    keys = [key_of(f"ps{i}") for i in range(10)]
    count = 40
    rows = [crypto.pad(k, "a", count, p) for k in keys]
    expected = [sum(int(v) for v in col) % p for col in zip(*rows, strict=True)]
    got = crypto.pad_sum(keys, "a", count, p, batch=batch)
    assert got.shape == (count,)
    assert got.tolist() == expected
    assert (got >= 0).all() and (got < p).all()


@pytest.mark.parametrize("p", [P31, P_HALF])
@pytest.mark.parametrize("batch", [1, 4, 8192])
def test_mask_sum_equals_sum_of_masks(p, batch):
    seeds = [key_of(f"seed{i}") for i in range(9)]
    count = 33
    rows = [crypto.mask(s, "a", count, p) for s in seeds]
    expected = [sum(int(v) for v in col) % p for col in zip(*rows, strict=True)]
    got = crypto.mask_sum(seeds, "a", count, p, batch=batch)
    assert got.tolist() == expected


def test_pad_sum_and_mask_sum_of_no_keys_is_zero():
    assert crypto.pad_sum([], "a", 5, P31).tolist() == [0] * 5
    assert crypto.mask_sum([], "a", 5, P31).tolist() == [0] * 5


def test_pads_differ_across_aggregations_and_keys():
    k1, k2 = key_of("one"), key_of("two")
    a = crypto.pad(k1, "agg-1", 64, P31)
    assert not np.array_equal(a, crypto.pad(k1, "agg-2", 64, P31))
    assert not np.array_equal(a, crypto.pad(k2, "agg-1", 64, P31))
    # the same inputs give the same pad (a PRF, not randomness)
    assert np.array_equal(a, crypto.pad(k1, "agg-1", 64, P31))
    # the ids are not confused by prefixes
    assert not np.array_equal(crypto.pad(k1, "agg", 64, P31), crypto.pad(k1, "agg-", 64, P31))


def test_mask_differs_from_pad_for_same_key():
    k = key_of("same")
    assert not np.array_equal(crypto.mask(k, "agg", 64, P31), crypto.pad(k, "agg", 64, P31))
    assert not np.array_equal(crypto.mask(k, "agg", 64, P31), crypto.mask(k, "agg2", 64, P31))


def test_pad_prefix_consistent():
    """A longer pad starts with the shorter pad: count only decides how far to read."""
    k = key_of("prefix")
    long = crypto.pad(k, "agg", 500, P_HALF)
    short = crypto.pad(k, "agg", 37, P_HALF)
    assert long[:37].tolist() == short.tolist()


# --- PairwiseKeys -------------------------------------------------------------------------


def _peers(n):
    privs = [X25519PrivateKey.generate() for _ in range(n)]
    return privs, [k.public_key().public_bytes_raw() for k in privs]


def test_pairwise_keys_cache_hit_returns_same_key():
    own = X25519PrivateKey.generate()
    _, (peer,) = _peers(1)
    pk = crypto.PairwiseKeys(own)
    k1 = pk.key_for(peer)
    assert k1 == crypto.pairwise_key(own, own.public_key().public_bytes_raw(), peer)
    assert pk.cached == {peer: k1}
    with mock.patch.object(crypto, "pairwise_key", side_effect=AssertionError("recomputed")):
        assert pk.key_for(peer) is k1


def test_pairwise_keys_uses_given_cache():
    own = X25519PrivateKey.generate()
    _, (peer,) = _peers(1)
    cache = {peer: b"\x42" * 32}
    pk = crypto.PairwiseKeys(own, cache)
    assert pk.key_for(peer) == b"\x42" * 32
    assert pk.keys_for([peer]) == [b"\x42" * 32]
    assert pk.cached is cache


def test_pairwise_keys_keys_for_order_and_fills_cache():
    own = X25519PrivateKey.generate()
    own_pub = own.public_key().public_bytes_raw()
    privs, pubs = _peers(5)
    cache: dict[bytes, bytes] = {}
    pk = crypto.PairwiseKeys(own, cache)
    warm = pk.key_for(pubs[2])  # one already cached
    order = [pubs[4], pubs[2], pubs[0], pubs[3], pubs[1], pubs[4]]
    got = pk.keys_for(order)
    assert got == [crypto.pairwise_key(own, own_pub, p) for p in order]
    assert got[1] == warm
    assert len(set(got)) == 5
    assert set(cache) == set(pubs)
    # peers derive the same keys on their side
    for priv, pub in zip(privs, pubs, strict=True):
        assert cache[pub] == crypto.pairwise_key(priv, pub, own_pub)


def test_pairwise_keys_small_order_peer_raises_and_is_not_cached():
    pk = crypto.PairwiseKeys(X25519PrivateKey.generate())
    with pytest.raises(CryptoError):
        pk.key_for(bytes(32))
    with pytest.raises(CryptoError):
        pk.keys_for([_peers(1)[1][0], bytes(32)])
    assert bytes(32) not in pk.cached


# --- HPKE ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipient():
    k = X25519PrivateKey.generate()
    return k, k.public_key().public_bytes_raw()


@pytest.mark.parametrize("plaintext", [b"", b"x", b"hello world" * 100])
def test_seal_open_round_trip(recipient, plaintext):
    priv, pub = recipient
    sealed = crypto.seal_to(pub, plaintext, b"info")
    assert len(sealed) == len(plaintext) + crypto.SEAL_OVERHEAD
    assert crypto.open_from(priv, sealed, b"info") == plaintext
    # randomised: a second seal differs (fresh ephemeral key)
    assert crypto.seal_to(pub, plaintext, b"info") != sealed
    if len(plaintext) >= 8:  # a shorter one can turn up in random bytes by chance
        assert plaintext not in sealed


def test_seal_uses_x25519_hkdf_sha256_chacha20poly1305(recipient):
    priv, pub = recipient
    sealed = crypto.seal_to(pub, b"suite check", b"ctx")
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
    assert suite.decrypt(sealed, priv, b"ctx") == b"suite check"
    other = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    with pytest.raises(InvalidTag):
        other.decrypt(sealed, priv, b"ctx")
    # and we open what an independent sender seals with that suite
    outside = suite.encrypt(b"from outside", priv.public_key(), b"ctx")
    assert crypto.open_from(priv, outside, b"ctx") == b"from outside"


def test_open_wrong_info_fails(recipient):
    priv, pub = recipient
    sealed = crypto.seal_to(pub, b"secret", b"aggregation-1")
    for info in (b"aggregation-2", b"", b"aggregation-1\x00"):
        with pytest.raises(DecryptionFailed):
            crypto.open_from(priv, sealed, info)


@pytest.mark.parametrize("pos", [0, 15, 31, 32, 40, 47, -17, -1])
def test_open_tampered_fails(recipient, pos):
    priv, pub = recipient
    sealed = bytearray(crypto.seal_to(pub, b"0123456789abcdef", b"i"))
    sealed[pos] ^= 0x01
    with pytest.raises(DecryptionFailed):
        crypto.open_from(priv, bytes(sealed), b"i")


@pytest.mark.parametrize("cut", [0, 1, 31, 32, 47, 48, 63])
def test_open_truncated_fails(recipient, cut):
    priv, pub = recipient
    sealed = crypto.seal_to(pub, b"0123456789abcdef", b"i")
    assert len(sealed) == 64
    with pytest.raises(DecryptionFailed):
        crypto.open_from(priv, sealed[:cut], b"i")


def test_open_extended_fails(recipient):
    priv, pub = recipient
    sealed = crypto.seal_to(pub, b"data", b"i")
    with pytest.raises(DecryptionFailed):
        crypto.open_from(priv, sealed + b"\x00", b"i")


def test_open_wrong_recipient_fails(recipient):
    _, pub = recipient
    sealed = crypto.seal_to(pub, b"for you only", b"i")
    with pytest.raises(DecryptionFailed):
        crypto.open_from(X25519PrivateKey.generate(), sealed, b"i")


@pytest.mark.parametrize("bad", [bytes(31), bytes(33), b"", bytes(32)])
def test_seal_to_bad_recipient_key_raises_parameter_error(bad):
    with pytest.raises(ParameterError):
        crypto.seal_to(bad, b"x", b"i")


# --- sign / verify ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signer():
    sk = Ed25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes_raw()


def test_verify_accepts_good_signature(signer):
    sk, pk = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    assert crypto.verify(pk, "device-1", b"payload", sig) is None


def test_verify_tampered_payload(signer):
    sk, pk = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    for payload in (b"payloaD", b"payload\x00", b"", b"payloa"):
        with pytest.raises(BadSignature):
            crypto.verify(pk, "device-1", payload, sig)


def test_verify_wrong_signer_id(signer):
    sk, pk = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    for sid in ("device-2", "device-", "device-1p", ""):
        with pytest.raises(BadSignature):
            crypto.verify(pk, sid, b"payload", sig)


def test_signer_id_and_payload_boundary_is_unambiguous(signer):
    """("ab", "c...") and ("a", "bc...") must not share a signed message."""
    sk, pk = signer
    sig = crypto.sign(sk, "ab", b"cd")
    with pytest.raises(BadSignature):
        crypto.verify(pk, "a", b"bcd", sig)
    with pytest.raises(BadSignature):
        crypto.verify(pk, "abc", b"d", sig)


def test_verify_wrong_key(signer):
    sk, _ = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(BadSignature):
        crypto.verify(other, "device-1", b"payload", sig)


@pytest.mark.parametrize("n", [0, 1, 32, 63])
def test_verify_truncated_signature(signer, n):
    sk, pk = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    with pytest.raises(BadSignature):
        crypto.verify(pk, "device-1", b"payload", sig[:n])


def test_verify_flipped_signature_bit(signer):
    sk, pk = signer
    sig = bytearray(crypto.sign(sk, "device-1", b"payload"))
    sig[10] ^= 0x80
    with pytest.raises(BadSignature):
        crypto.verify(pk, "device-1", b"payload", bytes(sig))


@pytest.mark.parametrize("bad_pk_len", [0, 31, 33])
def test_verify_bad_public_key_length(signer, bad_pk_len):
    sk, pk = signer
    sig = crypto.sign(sk, "device-1", b"payload")
    bad = (pk * 2)[:bad_pk_len]
    with pytest.raises(BadSignature):
        crypto.verify(bad, "device-1", b"payload", sig)


# --- identities ---------------------------------------------------------------------------


def test_identity_round_trip():
    ident = crypto.Identity.generate()
    raw = ident.to_bytes()
    assert len(raw) == 64
    back = crypto.Identity.from_bytes(raw)
    assert back.to_bytes() == raw
    assert back.public() == ident.public()
    # and the keys work the same: a signature by one verifies under the other's public key
    sig = crypto.sign(back.signing, "me", b"m")
    crypto.verify(ident.public().sign_key, "me", b"m", sig)


def test_identity_from_bytes_layout():
    raw = ED_SK + ALICE_X_PRIV
    ident = crypto.Identity.from_bytes(raw)
    assert ident.to_bytes() == raw
    assert ident.public() == crypto.PublicIdentity(ED_PK, ALICE_X_PUB)


def test_identity_generate_is_fresh():
    assert crypto.Identity.generate().to_bytes() != crypto.Identity.generate().to_bytes()


@pytest.mark.parametrize("n", [0, 32, 63, 65, 128])
def test_identity_wrong_length_raises(n):
    with pytest.raises(CryptoError):
        crypto.Identity.from_bytes(bytes(n))


# --- random_field_elements ----------------------------------------------------------------


def test_random_field_elements_uses_given_random_bytes():
    requested = []

    def fixed(n):
        requested.append(n)
        return b"\x07" * n

    a = crypto.random_field_elements(100, P_HALF, fixed)
    b = crypto.random_field_elements(100, P_HALF, fixed)
    assert requested == [32, 32]
    assert a.tolist() == b.tolist()
    assert a.tolist() == expected_stream(b"\x07" * 32, bytes(16), 100, P_HALF).tolist()
    assert (a >= 0).all() and (a < P_HALF).all()
    c = crypto.random_field_elements(100, P_HALF, lambda n: b"\x08" * n)
    assert a.tolist() != c.tolist()


def test_random_field_elements_default_is_os_randomness():
    a = crypto.random_field_elements(64, P31)
    b = crypto.random_field_elements(64, P31)
    assert a.shape == (64,)
    assert a.tolist() != b.tolist()
    c = crypto.random_field_elements(64, P31, os.urandom)
    assert c.tolist() != a.tolist()


def test_check_box_key_refuses_small_order_and_wrong_length_keys():
    from sda.crypto import Identity, check_box_key

    check_box_key(Identity.generate().public().box_key)
    for bad in (bytes(32), (1).to_bytes(32, "little"), bytes(31)):
        with pytest.raises(CryptoError):
            check_box_key(bad)
