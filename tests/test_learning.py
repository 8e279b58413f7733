"""The device side of learning (issue 7): the head's clipped gradient from labelled rows in a real store,
quantisation, distributed Skellam noise shares, the RDP privacy ledger (against dp-accounting), the
eligibility policy, and a participation prepared from a real store that sda's own participant, server,
clerks and recipient turn into the exact sum."""

from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from protocol_fixtures import COORDINATOR, NOW, clerk_results, make_world

from assistant.audio import RingBuffer
from assistant.errors import StoreError
from assistant.kws.head import Head
from assistant.learning import (
    Accounting,
    Examples,
    LearningError,
    LearningPolicy,
    NoiseMode,
    NotEligible,
    PreparedParticipation,
    PrivacyLedger,
    Refusal,
    RoundCost,
    RoundSpec,
    clerk_noise_share,
    clip_l2,
    decide,
    device_gradient,
    eligibility,
    examples_from,
    flatten,
    load_ledger,
    participant_noise_share,
    prepare,
    quantise,
    record_refusal,
    record_round,
    unflatten,
)
from assistant.learning.gradient import mean_gradient, windows
from assistant.learning.noise import TAIL, share_bound, skellam, skellam_tail
from assistant.learning.participate import IMPLICIT_AFTER_S, labelled_records, new_labels
from assistant.learning.privacy import ORDERS, epsilon_of, rho_of
from assistant.learning.quantise import dequantise, l2_sensitivity
from assistant.store import Label, RoundStatus, Settings, Store

WINDOW, EMBED, HIDDEN = 4, 3, 5
T0 = 1_750_000_000.0
P = 2**31 - 1
DELTA = 1e-6


def tiny_head(seed: int = 0) -> Head:
    return Head.init(WINDOW, EMBED, HIDDEN, np.random.default_rng(seed))


def bce(head: Head, x: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy from the forward pass alone (independent of loss_and_grad)."""
    p = head.forward(x)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def audio(n: int = 1600) -> np.ndarray:
    return np.zeros(n, np.int16)


def fill_store(store: Store, seed: int, positives: int = 12, negatives: int = 12, misses: int = 3) -> dict[str, list]:
    """Detections labelled right and false alarm, captured misses with long embeddings, plus rows the gradient
    must skip (unsure, no embeddings, wrong width). Returns the ids by kind."""
    rng = np.random.default_rng(seed)
    ids: dict[str, list] = {"ta": [], "fa": [], "miss": [], "unsure": [], "bare": [], "wide": [], "unlabelled": []}
    t = T0
    for kind, count, centre in (("ta", positives, 1.0), ("fa", negatives, -1.0)):
        for _ in range(count):
            emb = (centre + rng.standard_normal((WINDOW, EMBED))).astype(np.float32)
            ids[kind].append(store.record_detection(audio(), 0.9, "m1", emb, time_s=(t := t + 1)))
    for _ in range(misses):
        ring = RingBuffer(1.0)
        ring.append(audio(16_000))
        emb = rng.standard_normal((WINDOW + 7, EMBED)).astype(np.float32)
        ids["miss"].append(store.record_captured_miss(ring, 1.0, "m1", emb, 0.4, time_s=(t := t + 1)))
    emb = rng.standard_normal((WINDOW, EMBED)).astype(np.float32)
    ids["unsure"].append(store.record_detection(audio(), 0.8, "m1", emb, time_s=(t := t + 1)))
    ids["unlabelled"].append(store.record_detection(audio(), 0.8, "m1", emb, time_s=(t := t + 1)))
    ids["bare"].append(store.record_detection(audio(), 0.8, "m1", None, time_s=(t := t + 1)))
    wide = rng.standard_normal((WINDOW, EMBED + 1)).astype(np.float32)
    ids["wide"].append(store.record_detection(audio(), 0.8, "m1", wide, time_s=(t := t + 1)))
    store.label(ids["ta"] + ids["bare"] + ids["wide"], Label.TRUE_ACCEPT, time_s=t + 1)
    store.label(ids["fa"], Label.FALSE_ACCEPT, time_s=t + 1)
    store.label(ids["miss"], Label.MISSED_WAKE_WORD, time_s=t + 1)
    store.label(ids["unsure"], Label.UNSURE, time_s=t + 1)
    return ids


def spec_for(head: Head, **over) -> RoundSpec:
    kw = dict(round_id="round-1", dimension=head.size, clip_norm=1.0, scale=2.0**10, p=P, min_participants=5,
              max_participants=30, noise_mechanism="skellam", noise_added_by=NoiseMode.PARTICIPANTS,
              sigma=20 * 2.0**10)
    kw.update(over)
    return RoundSpec(**kw)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


# --- gradient ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_gradient_matches_finite_differences_of_the_mean_loss(seed):
    rng = np.random.default_rng(seed)
    head = tiny_head(seed)
    x = rng.standard_normal((9, WINDOW, EMBED))
    y = (rng.random(9) < 0.5).astype(np.float64)
    examples = Examples(x, y, tuple(range(9)), 0)
    g = mean_gradient(head, examples)
    theta, eps = flatten(head), 1e-6
    numeric = np.empty_like(theta)
    for i in range(theta.size):
        up, down = theta.copy(), theta.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (bce(unflatten(up, head), x, y) - bce(unflatten(down, head), x, y)) / (2 * eps)
    assert g.shape == (head.size,)
    np.testing.assert_allclose(g, numeric, rtol=1e-5, atol=1e-8)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_flatten_and_unflatten_are_inverse_in_head_flat_order(window, embed, hidden, seed):
    head = Head.init(window, embed, hidden, np.random.default_rng(seed))
    v = flatten(head)
    assert v.shape == (window * embed * hidden + 2 * hidden + 1,)
    # the documented layout: W1 row-major, b1, w2, b2
    assert np.array_equal(v, np.concatenate([head.W1.ravel(), head.b1, head.w2, [float(head.b2)]]))
    back = unflatten(v + 1.0, head)
    assert np.array_equal(flatten(back), v + 1.0) and back.W1.shape == head.W1.shape
    with pytest.raises(LearningError, match="parameters"):
        unflatten(v[:-1], head)


def test_labelled_rows_become_examples_and_a_capture_gives_its_best_window(store):
    head = tiny_head()
    ids = fill_store(store, seed=1)
    records = labelled_records(store)
    ex = examples_from(records, head)
    by_id = dict(zip(ex.ids, range(len(ex)), strict=True))
    assert set(ex.ids) == set(ids["ta"] + ids["fa"] + ids["miss"])  # unsure, no embeddings, wrong width: skipped
    assert ex.skipped == 3 and ex.x.shape == (len(ex), WINDOW, EMBED)
    for i in ids["ta"] + ids["miss"]:
        assert ex.y[by_id[i]] == 1.0
    for i in ids["fa"]:
        assert ex.y[by_id[i]] == 0.0
        assert np.array_equal(ex.x[by_id[i]], store.get(i).embeddings)
    for i in ids["miss"]:  # the highest-scoring window under the round's head (max-pooling loss)
        all_windows = windows(store.get(i).embeddings.astype(np.float64), WINDOW)
        best = int(np.argmax(head.logits(all_windows)))
        assert np.array_equal(ex.x[by_id[i]], all_windows[best])
    # the device gradient is the head's own mean BCE gradient over exactly these windows
    dg = device_gradient(head, records, clip_norm=1e9)
    np.testing.assert_array_equal(dg.gradient, head.loss_and_grad(ex.x, ex.y)[1])
    assert not dg.clipped


def test_a_near_miss_left_unlabelled_for_a_day_is_an_implicit_negative(store):
    head = tiny_head()
    ids = fill_store(store, seed=2)
    emb = np.random.default_rng(5).standard_normal((WINDOW, EMBED)).astype(np.float32)
    store.update_settings(near_miss_band=0.5)
    old = store.record_near_miss(audio(), 0.6, 0.8, "m1", emb, time_s=T0 + 100)
    fresh = store.record_near_miss(audio(), 0.6, 0.8, "m1", emb, time_s=T0 + 90_000)
    labelled_nm = store.record_near_miss(audio(), 0.6, 0.8, "m1", emb, time_s=T0 + 101)
    store.label([labelled_nm], Label.MISSED_WAKE_WORD, time_s=T0 + 200)
    before = T0 + 90_000 - IMPLICIT_AFTER_S + 1  # a day before the fresh one: the old one qualifies, it does not
    records = labelled_records(store, implicit_before=before)
    ex = examples_from(records, head, implicit_before=before)
    by_id = dict(zip(ex.ids, range(len(ex)), strict=True))
    assert old in by_id and ex.y[by_id[old]] == 0.0 and np.array_equal(ex.x[by_id[old]], emb)
    assert fresh not in by_id and ids["unlabelled"][0] not in by_id  # too recent; an unlabelled detection never
    assert ex.y[by_id[labelled_nm]] == 1.0  # the owner's word wins over the default
    # without the cut-off (the default) only the owner's labels count
    assert old not in examples_from(labelled_records(store), head).ids
    # and the device's participation uses them: its gradient is the one over labels plus implicit negatives
    dg = device_gradient(head, records, 1e9, before)
    np.testing.assert_array_equal(dg.gradient, head.loss_and_grad(ex.x, ex.y)[1])
    assert old in dg.ids


def test_no_usable_rows_is_an_error_not_a_zero_gradient(store):
    with pytest.raises(LearningError, match="no usable labelled rows"):
        device_gradient(tiny_head(), labelled_records(store), 1.0)


@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6)), st.floats(1e-3, 1e3))
def test_clipping_bounds_the_norm_and_keeps_the_direction(g, clip_norm):
    c = clip_l2(g, clip_norm)
    norm = np.linalg.norm(g)
    assert np.linalg.norm(c) <= clip_norm * (1 + 1e-12)
    if norm <= clip_norm:
        assert np.array_equal(c, g)
    else:
        np.testing.assert_allclose(c * (norm / clip_norm), g, rtol=1e-9, atol=1e-9 * norm)
        assert np.linalg.norm(c) == pytest.approx(clip_norm)


# --- quantisation -----------------------------------------------------------------------------------------


def test_quantisation_round_trip_is_unbiased_and_keeps_the_norm_bound():
    rng = np.random.default_rng(7)
    d, C, scale, trials = 64, 1.0, 2.0**4, 4000
    g = rng.standard_normal(d)
    g *= C / np.linalg.norm(g)  # on the boundary: where conditional rounding rejects most
    bound = l2_sensitivity(C, scale, d)
    qs = np.stack([quantise(g, C, scale, P, rng) for _ in range(trials)])
    assert np.all(np.einsum("ij,ij->i", qs, qs) <= bound**2)
    mean = dequantise(qs, scale).mean(axis=0)
    se = 0.5 / scale / math.sqrt(trials)  # rounding's sd per coordinate is at most half a unit
    assert np.max(np.abs(mean - g)) < 5 * se


@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(-1, 1)), st.integers(0, 20), st.integers(0, 2**32 - 1))
def test_quantised_values_stay_within_the_codec_range_and_the_sensitivity(g, log_scale, seed):
    scale = 2.0**log_scale
    g = clip_l2(g, 1.0)
    q = quantise(g, 1.0, scale, P, np.random.default_rng(seed))
    assert q.dtype == np.int64 and q.shape == g.shape
    assert np.all(np.abs(q - g * scale) < 1.0)
    assert math.sqrt(float(q @ q)) <= l2_sensitivity(1.0, scale, g.size)


def test_capacity_check_covers_every_participant_and_the_noise():
    head = tiny_head()
    spec = spec_for(head, max_participants=10_000, min_participants=100)
    spec.check_capacity()
    assert 2 * (spec.max_participants * spec.value_bound + spec.noise_headroom) < P
    # the headroom really bounds the noise: N_max truncated shares can never exceed it
    assert spec.noise_headroom == spec.max_participants * share_bound(spec.device_share_variance)
    with pytest.raises(LearningError, match="overflow"):
        spec_for(head, max_participants=10_000, min_participants=100, scale=2.0**16,
                 sigma=20 * 2.0**16).check_capacity()


# --- noise ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("participants", "min_participants", "sigma"), [(10, 10, 300.0), (25, 10, 40.0), (3, 3, 7.0)])
def test_participant_shares_sum_to_at_least_the_target_variance(participants, min_participants, sigma):
    rng = np.random.default_rng(participants)
    d = 100_000  # independent coordinates: many trials at once
    total = sum(participant_noise_share(d, sigma, min_participants, rng) for _ in range(participants))
    want = sigma**2 * participants / min_participants  # >= sigma^2, exactly sigma^2 at N = N_min
    assert total.dtype == np.int64
    assert abs(total.var() / want - 1) < 0.05
    assert abs(total.mean()) < 5 * math.sqrt(want / d)


def test_clerk_shares_from_the_honest_clerks_alone_give_the_target_variance():
    rng = np.random.default_rng(3)
    n, t, sigma, d = 10, 3, 500.0, 100_000
    honest = sum(clerk_noise_share(d, sigma, n, t, rng) for _ in range(n - t))
    assert abs(honest.var() / sigma**2 - 1) < 0.05


@given(st.floats(0.5, 1e8), st.floats(1e-30, 1e-3))
def test_share_bound_is_the_smallest_bound_meeting_the_tail(variance, tail):
    h = share_bound(variance, tail)
    assert skellam_tail(variance, h) <= tail
    assert h == 0 or skellam_tail(variance, h - 1) > tail


def test_the_tail_bound_holds_empirically_and_shares_are_truncated():
    rng = np.random.default_rng(5)
    x = skellam(1_000_000, 4.0, rng)
    for h in (4, 6, 8):
        assert np.mean(np.abs(x) > h) <= skellam_tail(4.0, h)
    share = participant_noise_share(1000, 1e4, 100, rng)
    assert np.max(np.abs(share)) <= share_bound(1e4**2 / 100, TAIL)


# --- the privacy ledger -----------------------------------------------------------------------------------


def test_one_gaussian_round_costs_what_dp_accounting_says():
    z = 3.0
    ours = epsilon_of(RoundCost.gaussian(l2=1.0, sigma=z).rho, DELTA)
    theirs = RdpAccountant(orders=list(ORDERS)).compose(dp_event.GaussianDpEvent(z)).get_epsilon(DELTA)
    assert ours == pytest.approx(theirs, rel=1e-9)
    default_orders = RdpAccountant().compose(dp_event.GaussianDpEvent(z)).get_epsilon(DELTA)
    assert ours == pytest.approx(default_orders, rel=0.02)  # integer orders only lose a little


def test_the_skellam_bound_is_above_the_gaussian_and_meets_it_for_large_noise():
    head = tiny_head()
    for multiplier, close in ((0.5, 0.05), (20.0, 1e-4)):
        sk = spec_for(head, sigma=multiplier * 2.0**10)
        ga = spec_for(head, sigma=multiplier * 2.0**10, accounting=Accounting.GAUSSIAN)
        e_sk, e_ga = epsilon_of(sk.cost().rho, DELTA), epsilon_of(ga.cost().rho, DELTA)
        assert e_sk >= e_ga and e_sk == pytest.approx(e_ga, rel=close)


def test_the_ledger_composes_rounds_like_dp_accounting_and_persists_in_the_store(tmp_path):
    root = tmp_path / "store"
    z, rounds = 8.0, 12
    cost = RoundCost.gaussian(1.0, z)
    seen = []
    with Store(root) as store:
        for k in range(rounds):
            record_round(store, f"round-{k}", cost, 20, time_s=T0 + k)
            seen.append(load_ledger(store).epsilon_spent())
    assert all(b > a for a, b in itertools.pairwise(seen))  # monotone
    with Store(root) as store:  # after a restart, from the rows alone
        ledger = load_ledger(store)
        eps_sum, delta_sum = store.privacy_spent()
    composed = RdpAccountant(orders=list(ORDERS)).compose(
        dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(z), rounds)).get_epsilon(DELTA)
    assert ledger.epsilon_spent() == pytest.approx(composed, rel=1e-7)
    assert eps_sum == pytest.approx(composed, rel=1e-9) and delta_sum == pytest.approx(DELTA)
    # RDP composition beats adding up each round's epsilon
    assert composed < rounds * epsilon_of(cost.rho, DELTA)


def test_the_ledger_refuses_a_round_over_budget(store):
    cost = RoundCost.gaussian(1.0, 4.0)
    one = epsilon_of(cost.rho, DELTA)
    two = epsilon_of(2 * cost.rho, DELTA)
    store.update_settings(epsilon_budget=(one + two) / 2)  # one round fits, two do not
    ledger = load_ledger(store)
    assert ledger.can_afford(cost)
    record_round(store, "r1", cost, 30, time_s=T0)
    ledger = load_ledger(store)
    assert not ledger.can_afford(cost)
    assert ledger.epsilon_spent() == pytest.approx(one, rel=1e-7)
    assert ledger.epsilon_after(cost) == pytest.approx(two, rel=1e-7)
    assert ledger.can_afford(RoundCost(0.0))
    with pytest.raises(StoreError, match="r1"):  # a round spends once
        record_round(store, "r1", cost, 30, time_s=T0)


def test_a_ledger_kept_at_another_delta_is_refused(store):
    record_round(store, "r1", RoundCost.gaussian(1.0, 4.0), 30, time_s=T0)
    with pytest.raises(LearningError, match="delta"):
        load_ledger(store, delta=1e-5)


def test_rho_and_epsilon_invert_each_other():
    for eps in (1e-3, 0.5, 3.0, 40.0):
        rho = rho_of(eps, DELTA)
        assert epsilon_of(rho, DELTA) >= eps and epsilon_of(rho * (1 - 1e-9), DELTA) <= eps * (1 + 1e-9)


# --- policy -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings_", "labels", "cost", "refusal", "words"), [
    (Settings(learning_opt_in=False), 50, RoundCost(0.01), Refusal.NOT_OPTED_IN, "not opted in"),
    (Settings(learning_opt_in=True), 4, RoundCost(0.01), Refusal.TOO_FEW_LABELS, "4 new label(s)"),
    (Settings(learning_opt_in=True), 50, RoundCost(math.inf), Refusal.NO_NOISE, "no differential-privacy noise"),
    (Settings(learning_opt_in=True, epsilon_budget=1.0), 50, RoundCost(0.5), Refusal.OVER_BUDGET, "over the owner's"),
    (Settings(learning_opt_in=True), 50, RoundCost(0.01), None, "eligible"),
])
def test_policy_gives_its_reason(settings_, labels, cost, refusal, words):
    ledger = PrivacyLedger(budget=settings_.epsilon_budget)
    d = decide(settings_, labels, ledger, cost, LearningPolicy(min_new_labels=10))
    assert d.eligible is (refusal is None) and d.refusal is refusal
    assert words in d.reason and d.new_labels == labels


# --- participation ----------------------------------------------------------------------------------------


def test_a_participation_from_a_real_store_has_the_right_length_and_range(store):
    head = tiny_head()
    ids = fill_store(store, seed=2)
    spec = spec_for(head)
    policy = LearningPolicy(min_new_labels=10)
    with pytest.raises(NotEligible) as refused:
        prepare(store, head, spec, np.random.default_rng(0), policy)
    assert refused.value.decision.refusal is Refusal.NOT_OPTED_IN
    store.update_settings(learning_opt_in=True)
    assert eligibility(store, head, spec, policy).eligible
    prepared = prepare(store, head, spec, np.random.default_rng(0), policy)
    bound = spec.value_bound + share_bound(spec.device_share_variance)
    assert prepared.values.shape == (head.size,) and prepared.values.dtype == np.int64
    assert np.max(np.abs(prepared.values)) <= bound
    assert np.all((prepared.encoded >= 0) & (prepared.encoded < P))
    assert prepared.label_count == len(ids["ta"] + ids["fa"] + ids["miss"])
    assert store.learning_rounds() == []  # nothing spent before the commit
    row = prepared.commit(store, time_s=T0 + 1000)
    assert row.status is RoundStatus.COMPLETED and row.epsilon_spent > 0 and row.label_count == prepared.label_count
    assert store.privacy_spent()[0] == pytest.approx(load_ledger(store).epsilon_spent(), rel=1e-7)
    assert all(store.get(i).learned_at == T0 + 1000 for i in prepared.ids)
    with pytest.raises(StoreError):
        prepared.commit(store)
    # everything is learned now: the next round waits for new labels
    assert new_labels(labelled_records(store), head) == 0
    with pytest.raises(NotEligible) as refused:
        prepare(store, head, spec_for(head, round_id="round-2"), np.random.default_rng(1), policy)
    assert refused.value.decision.refusal is Refusal.TOO_FEW_LABELS


def test_a_round_over_budget_is_refused_and_recorded_as_such(store):
    head = tiny_head()
    fill_store(store, seed=3)
    spec = spec_for(head, sigma=0.5 * 2.0**10)  # little noise: one round costs more than a small budget
    store.update_settings(learning_opt_in=True, epsilon_budget=1.0)
    decision = eligibility(store, head, spec, LearningPolicy(min_new_labels=10))
    assert decision.refusal is Refusal.OVER_BUDGET
    row = record_refusal(store, spec, decision, time_s=T0)
    assert row.status is RoundStatus.REFUSED and row.epsilon_spent == 0
    assert store.privacy_spent() == (0.0, 0.0)


def test_rounds_this_device_cannot_do_safely_are_refused_before_any_data_is_read():
    head = tiny_head()
    world = make_world(dimension=head.size, noise_mechanism="discrete_gaussian", noise_added_by="participants",
                       noise_sigma=100.0, noise_headroom=10_000)
    with pytest.raises(LearningError, match="discrete_gaussian"):
        RoundSpec.from_announce(world.announce, clip_norm=1.0)


def test_sda_participants_clerks_and_recipient_reveal_the_exact_sum_of_prepared_inputs(tmp_path):
    with contextlib.ExitStack() as stack:
        _exact_sum_round(tmp_path, stack)


def _exact_sum_round(tmp_path, stack: contextlib.ExitStack) -> None:
    head = tiny_head()
    devices, min_participants = 6, 5
    probe = spec_for(head, min_participants=min_participants, max_participants=30)
    world = make_world(dimension=head.size, min_participants=min_participants, scale=probe.scale,
                       clip_lo=-probe.clip_range, clip_hi=probe.clip_range, noise_mechanism="skellam",
                       noise_added_by="participants", noise_sigma=probe.sigma, noise_headroom=probe.noise_headroom)
    spec = RoundSpec.from_announce(world.announce, clip_norm=probe.clip_norm)
    for field in ("dimension", "clip_norm", "scale", "p", "min_participants", "max_participants", "noise_mechanism",
                  "noise_added_by", "sigma", "accounting"):
        assert getattr(spec, field) == getattr(probe, field)
    assert (spec.n, spec.t) == (world.announce.n, world.announce.t)
    server, prepared, stores = world.server(), [], []
    for i in range(devices):
        store = stack.enter_context(Store(tmp_path / f"device-{i}"))
        stores.append(store)
        fill_store(store, seed=10 + i)
        store.update_settings(learning_opt_in=True)
        p = prepare(store, head, spec, np.random.default_rng(i), LearningPolicy(min_new_labels=10))
        env = world.participant(i).participate(world.announce, p.participant_input(world.announce), NOW).envelope
        assert server.accept(env, NOW) == world.device_ids[i]
        p.commit(store, time_s=NOW)  # acknowledged: now it is spent
        prepared.append(p)
    snap = server.snapshot()
    recipient = world.recipient_for(snap)
    for env in clerk_results(world, server.jobs(COORDINATOR, world.coordinator)).values():
        recipient.add_result(env, NOW)
    revealed = recipient.reveal()
    assert revealed.participants == devices
    assert np.array_equal(revealed.field_sum, sum(p.values for p in prepared))
    for store in stores:
        assert load_ledger(store).epsilon_spent() == pytest.approx(epsilon_of(spec.cost().rho, DELTA), rel=1e-7)
    # a narrower clip range, or a scale sda cannot hit exactly, is refused
    narrow = make_world(dimension=head.size, min_participants=min_participants, scale=probe.scale,
                        clip_lo=-1.0, clip_hi=1.0, noise_mechanism="skellam", noise_added_by="participants",
                        noise_sigma=probe.sigma, noise_headroom=probe.noise_headroom)
    with pytest.raises(LearningError, match="clip range"):
        prepared[0].participant_input(narrow.announce)
    odd = make_world(dimension=head.size, min_participants=min_participants, scale=1000.0,
                     clip_lo=-probe.clip_range * 2, clip_hi=probe.clip_range * 2, noise_mechanism="skellam",
                     noise_added_by="participants", noise_sigma=probe.sigma, noise_headroom=probe.noise_headroom)
    odd_spec = RoundSpec.from_announce(odd.announce, clip_norm=1.0)
    odd_prepared = PreparedParticipation(odd_spec, prepared[0].values, odd_spec.cost(), (), prepared[0].decision, 0.0)
    with pytest.raises(LearningError, match="power of two"):
        odd_prepared.participant_input(odd.announce)


@settings(deadline=None, max_examples=25)
@given(st.floats(0.05, 50.0), st.integers(1, 200))
def test_a_spec_from_any_noise_level_is_accounted_and_fits(multiplier, min_participants):
    head = tiny_head()
    spec = spec_for(head, sigma=multiplier * 2.0**10, min_participants=min_participants, max_participants=1000)
    spec.check_capacity()
    assert spec.cost().rho >= RoundCost.gaussian(spec.l2_sensitivity, spec.sigma).rho
