"""The parameter checks of DESIGN §3, applied by the coordinator before it announces and by
every participant and clerk before they act on an announce."""

from __future__ import annotations

from ..encoding import FixedPoint, check_capacity
from ..errors import ParameterError
from ..field import check_modulus
from ..noise import clerk_noise_headroom
from ..sharing import PackedShamir
from .codec import MAX_MESSAGE_BYTES
from .messages import MAX_BLOCKS, Announce


def check_thresholds(k: int, t: int, n: int) -> None:
    """r = k + t <= n < 2r - t, and t >= 1.

    n < 2r - t makes any two sets of r clerks share more than t clerks, so honest clerks, who
    process an aggregation once, stop a server that shows different participant sets to
    different clerk groups (the split-set attack).
    """
    r = k + t
    if t < 1 or k < 1:
        raise ParameterError(f"need k >= 1 and t >= 1, got k={k}, t={t}")
    if n < r:
        raise ParameterError(f"committee too small: need n >= r = k + t = {r}, got n={n}")
    if not n < 2 * r - t:
        raise ParameterError(
            f"committee too large for split-set safety: need n < 2r - t = {2 * r - t}, got n={n}"
            f" (k={k}, t={t})"
        )


def scheme_of(a: Announce) -> PackedShamir:
    """The packed Shamir scheme an announce describes (its committee's points)."""
    return PackedShamir(a.p, a.k, a.t, a.n, tuple(m.point for m in a.committee))


def fixed_point_of(a: Announce) -> FixedPoint:
    """The fixed-point codec an announce describes."""
    return FixedPoint(a.scale, a.clip_lo, a.clip_hi)


def check_clerk_noise(a: Announce) -> None:
    """Clerk noise (DESIGN §3): sda's clerks add bounded Skellam shares, n of them, so the announce must be
    Skellam and its headroom must hold all n truncated shares, or the noisy sum could wrap around."""
    if a.noise_mechanism != "skellam":
        raise ParameterError(f"clerks add only skellam noise, not {a.noise_mechanism!r}")
    if a.noise_sigma <= 0:
        raise ParameterError("clerk noise needs noise_sigma > 0")
    need = clerk_noise_headroom(a.noise_sigma, a.n, a.t)
    if a.noise_headroom < need:
        raise ParameterError(
            f"noise_headroom={a.noise_headroom} is too small for clerk noise: n={a.n} shares of variance"
            f" sigma^2/(n - t) = {a.noise_sigma:g}^2/{a.n - a.t} need {need}"
        )


def check_announce(a: Announce) -> PackedShamir:
    """All parameter checks of an announce; returns its sharing scheme. ParameterError if unsafe."""
    check_modulus(a.p)
    check_thresholds(a.k, a.t, a.n)
    ids = [m.clerk_id for m in a.committee]
    if len(set(ids)) != len(ids):
        raise ParameterError("committee names a clerk twice")
    if len({m.box_key for m in a.committee}) != len(ids):
        raise ParameterError("committee repeats a clerk key")
    if a.min_participants > a.max_participants:
        raise ParameterError(
            f"min_participants={a.min_participants} exceeds max_participants={a.max_participants}"
        )
    if a.max_participants > a.registry_size:
        raise ParameterError(
            f"max_participants={a.max_participants} exceeds the registry size {a.registry_size}"
        )
    if a.result_deadline <= a.participation_deadline:
        raise ParameterError("result deadline must come after the participation deadline")
    if (a.noise_mechanism == "none") != (a.noise_added_by == "none"):
        raise ParameterError("noise mechanism and who adds it must both be set or both be 'none'")
    if a.noise_mechanism == "none" and (a.noise_sigma != 0 or a.noise_headroom != 0):
        raise ParameterError("noise_sigma and noise_headroom must be 0 when noise_mechanism is 'none'")
    if a.noise_mechanism != "none" and (a.noise_sigma <= 0 or a.noise_headroom <= 0):
        raise ParameterError(
            f"noise mechanism {a.noise_mechanism!r} needs noise_sigma > 0 and noise_headroom > 0"
        )
    if a.noise_added_by == "clerks":
        check_clerk_noise(a)
    # Every message of the round must fit the codec's limits, or the round could never finish.
    B = a.blocks
    if B > MAX_BLOCKS:
        raise ParameterError(f"B = ceil(d/k) = {B} blocks exceeds {MAX_BLOCKS}; raise k or lower d")
    upload = a.n * B * 4 + 1024
    if upload > MAX_MESSAGE_BYTES:
        raise ParameterError(
            f"a participation would be {upload} bytes (n={a.n}, B={B}), over the"
            f" {MAX_MESSAGE_BYTES}-byte message limit; raise k or lower d or n"
        )
    fp = fixed_point_of(a)
    check_capacity(a.p, a.max_participants, fp.max_abs_value, a.noise_headroom)
    return scheme_of(a)


def open_announce(raw: bytes, coordinator_id: str, coordinator_key: bytes) -> Announce:
    """Verify an announce envelope from the known coordinator and run every parameter check.

    Raises MessageError, UnknownSender, BadSignature or ParameterError.
    """
    from ..errors import UnknownSender
    from .messages import open_signed

    a, env = open_signed(raw, Announce, lambda s: coordinator_key if s == coordinator_id else None)
    if a.coordinator_id != env.signer:
        raise UnknownSender(
            f"announce names coordinator {a.coordinator_id!r} but is signed by {env.signer!r}"
        )
    check_announce(a)
    return a
