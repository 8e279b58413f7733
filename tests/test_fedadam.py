"""FedAdam, the coordinator's server optimiser (issue 7): the update rule of Reddi et al. against a direct
transcription, convergence with exact gradients on a convex problem, descent in expectation from sums that
went through the device's real clipping, conditional rounding and Skellam noise, a state that survives a
restart bit for bit, and one round from real stores through sda's participants, clerks and recipient."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from protocol_fixtures import COORDINATOR, NOW, clerk_results, make_world
from test_learning import fill_store, spec_for, tiny_head

from assistant.learning import LearningPolicy, RoundSpec, clip_l2, flatten, prepare, quantise, unflatten
from assistant.learning.errors import LearningError
from assistant.learning.fedadam import (
    FedAdamConfig,
    FedAdamState,
    apply_round,
    discard_step,
    load_state,
    mark_released,
    mean_gradient,
    save_state,
)
from assistant.learning.gradient import examples_from
from assistant.learning.noise import participant_noise_share
from assistant.learning.participate import labelled_records
from assistant.learning.privacy import RoundCost, epsilon_of
from assistant.store import Store

FREE = RoundCost(0.0)  # exact gradients of a test problem: no privacy spent


def quadratic(d: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """f(x) = 1/2 (x - x*)^T A (x - x*), A with curvatures 0.5..5 in a random basis: (A, x*)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q @ np.diag(np.linspace(0.5, 5.0, d)) @ q.T, 2.0 * rng.standard_normal(d)


def test_the_update_is_reddi_et_al_algorithm_2():
    cfg = FedAdamConfig(learning_rate=0.1, beta1=0.8, beta2=0.95, tau=0.01)
    x0 = np.array([1.0, -2.0, 0.5])
    gs = [np.array([0.3, -0.1, 0.0]), np.array([-0.2, 0.4, 1e-5])]
    s = FedAdamState.start(x0, cfg)
    x, m, v = x0.copy(), np.zeros(3), np.full(3, 0.01**2)  # m_-1 = 0, v_-1 = tau^2
    for i, g in enumerate(gs):
        s = apply_round(s, f"r{i}", g, FREE)
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g**2
        x = x - 0.1 * m / (np.sqrt(v) + 0.01)
        assert np.allclose(s.params, x, rtol=0, atol=1e-15) and np.allclose(s.m, m) and np.allclose(s.v, v)
    assert s.step == 2 and s.rounds == ("r0", "r1") == s.pending and np.array_equal(s.released, x0)


def test_exact_gradients_converge_on_a_convex_problem():
    a, x_star = quadratic()
    s = FedAdamState.start(np.zeros(len(x_star)), FedAdamConfig(learning_rate=0.1, tau=1e-2))
    dist = [np.linalg.norm(s.params - x_star)]
    for t in range(400):
        s = apply_round(s, f"r{t}", a @ (s.params - x_star), FREE)
        dist.append(np.linalg.norm(s.params - x_star))
    assert dist[0] > 5 and dist[100] < dist[0] / 10 and dist[-1] < 1e-6


def test_noisy_quantised_sums_still_reduce_the_loss_in_expectation():
    """Each device: its own optimum, the gradient clipped to C, conditionally rounded at scale 2^10, plus its
    Skellam share; the coordinator sees only the sum. Over seeds the loss falls far below where it started."""
    d, devices, clip, scale, p = 20, 25, 1.0, 2.0**10, 2**31 - 1
    a, x_star = quadratic(d)
    sigma = 0.5 * clip * scale  # total noise std in quantised units: half a clipped gradient per coordinate
    optima = x_star + 0.3 * np.random.default_rng(9).standard_normal((devices, d))

    def loss(x: np.ndarray) -> float:
        return float(np.mean([0.5 * (x - o) @ a @ (x - o) for o in optima]))

    start = np.zeros(d)
    finals = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        s = FedAdamState.start(start, FedAdamConfig(learning_rate=0.05, tau=1e-2))
        for t in range(150):
            total = np.zeros(d, np.int64)
            for o in optima:
                q = quantise(clip_l2(a @ (s.params - o), clip), clip, scale, p, rng)
                total += q + participant_noise_share(d, sigma, devices, rng)
            s = apply_round(s, f"r{t}", mean_gradient(total, scale, devices), FREE)
        finals.append(loss(s.params))
    best = loss(optima.mean(axis=0))  # A is shared: the optimum of the mean loss is the mean optimum
    assert np.mean(finals) - best < 0.002 * (loss(start) - best)
    assert max(finals) < loss(start)


def test_state_round_trips_and_a_restart_resumes_exactly(tmp_path):
    a, x_star = quadratic(8, seed=3)
    s = FedAdamState.start(np.ones(8), FedAdamConfig(0.03, 0.85, 0.98, 1e-3), released_version=4)
    for t in range(5):
        s = apply_round(s, f"agg-{t}", a @ (s.params - x_star), RoundCost(0.01))
    s = mark_released(s, 5)
    s = apply_round(s, "agg-5", a @ (s.params - x_star), RoundCost(0.01))
    save_state(tmp_path / "fedadam.npz", s)
    back = load_state(tmp_path / "fedadam.npz")
    for name in ("params", "m", "v", "released"):
        assert np.array_equal(getattr(back, name), getattr(s, name))
    assert (back.config, back.step, back.rounds, back.pending, back.rho, back.released_version) == (
        s.config, 6, tuple(f"agg-{t}" for t in range(6)), ("agg-5",), pytest.approx(0.06), 5)
    uninterrupted, resumed = s, back
    for t in range(6, 10):
        uninterrupted = apply_round(uninterrupted, f"agg-{t}", a @ (uninterrupted.params - x_star), FREE)
        resumed = apply_round(resumed, f"agg-{t}", a @ (resumed.params - x_star), FREE)
    assert np.array_equal(uninterrupted.params, resumed.params)
    # the file is never half written: the partial one is gone, a bad one is refused by name
    assert [p.name for p in tmp_path.iterdir()] == ["fedadam.npz"]
    (tmp_path / "bad.npz").write_bytes(b"not a state")
    with pytest.raises(LearningError, match=r"bad\.npz"):
        load_state(tmp_path / "bad.npz")


def test_a_round_applies_once_and_bad_gradients_change_nothing():
    s = apply_round(FedAdamState.start(np.zeros(3)), "r1", np.ones(3), FREE)
    for bad_round, g, cost, words in (("r1", np.ones(3), FREE, "already applied"),
                                      ("r2", np.ones(4), FREE, "shape"),
                                      ("r2", np.array([1.0, np.nan, 0.0]), FREE, "non-finite"),
                                      ("r2", np.ones(3), RoundCost(float("inf")), "no DP noise")):
        with pytest.raises(LearningError, match=words):
            apply_round(s, bad_round, g, cost)
    with pytest.raises(LearningError, match="only grow"):
        mark_released(s, 0)
    with pytest.raises(LearningError):
        FedAdamConfig(beta2=1.0)
    with pytest.raises(LearningError):
        mean_gradient(np.zeros(3, np.int64), 1024.0, 0)
    back = discard_step(s)
    assert np.array_equal(back.params, np.zeros(3)) and np.array_equal(back.m, s.m) and back.rounds == ("r1",)


def test_one_round_from_real_stores_through_sda_moves_the_head_downhill(tmp_path):
    """Devices prepare from their stores, sda reveals the sum, FedAdam steps: the loss over all devices'
    examples falls, and the state's rho is the round's cost."""
    head = tiny_head()
    devices = 6
    probe = spec_for(head, min_participants=5, max_participants=30, sigma=2.0 * 2.0**10)
    world = make_world(dimension=head.size, min_participants=5, scale=probe.scale, clip_lo=-probe.clip_range,
                       clip_hi=probe.clip_range, noise_mechanism="skellam", noise_added_by="participants",
                       noise_sigma=probe.sigma, noise_headroom=probe.noise_headroom)
    spec = RoundSpec.from_announce(world.announce, clip_norm=probe.clip_norm)
    server = world.server()
    with contextlib.ExitStack() as stack:
        examples = []
        for i in range(devices):
            store = stack.enter_context(Store(tmp_path / f"device-{i}"))
            fill_store(store, seed=40 + i)
            store.update_settings(learning_opt_in=True)
            prepared = prepare(store, head, spec, np.random.default_rng(i), LearningPolicy(min_new_labels=10))
            env = world.participant(i).participate(world.announce, prepared.participant_input(world.announce),
                                                   NOW).envelope
            assert server.accept(env, NOW) == world.device_ids[i]
            examples.append(examples_from(labelled_records(store), head))
    recipient = world.recipient_for(server.snapshot())
    for env in clerk_results(world, server.jobs(COORDINATOR, world.coordinator)).values():
        recipient.add_result(env, NOW)
    revealed = recipient.reveal()
    g = mean_gradient(revealed.field_sum, world.announce.scale, revealed.participants)
    assert np.allclose(g, revealed.values / revealed.participants)

    def loss(h) -> float:
        return float(np.mean([h.loss_and_grad(e.x, e.y)[0] for e in examples]))

    s = FedAdamState.start(flatten(head), FedAdamConfig(learning_rate=0.05))
    s = apply_round(s, world.announce.aggregation_id, g, spec.cost())
    assert loss(unflatten(s.params, head)) < loss(head)
    assert s.rho == spec.cost().rho and epsilon_of(s.rho, 1e-6) > 0
