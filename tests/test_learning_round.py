"""One federated learning round end to end over a real Mosquitto (DESIGN §8): the coordinator announces a
round of the head's dimension with participant Skellam noise; devices with real SQLite stores of labelled
embeddings answer through sda's participant client (assistant.learning.client), three clerks sum, the
coordinator reveals, takes a FedAdam step, gates it on its validation set and publishes a signed release,
retained, which every device's ReleaseListener verifies and installs.

The task: embeddings from two Gaussian clusters along a direction u, labelled by the side of u they fall on;
the shipped head fires along -u, wrong in a consistent direction, so every device's gradient agrees."""

from __future__ import annotations

import contextlib
import json
import queue
import time

import numpy as np
import pytest
from cluster import Cluster, start_inprocess_clerk
from test_kws import energy_backbone

from assistant.kws.backbone import sha256_file
from assistant.kws.head import Head
from assistant.learning.client import LearningClient, is_learning_round, model_clip_norm, model_head
from assistant.learning.fedadam import FedAdamConfig
from assistant.learning.gradient import examples_from
from assistant.learning.install import ModelVersions, ReleaseInstaller, ReleaseListener, Status, Trust
from assistant.learning.noise import NoiseMode
from assistant.learning.participate import labelled_records
from assistant.learning.policy import LearningPolicy
from assistant.learning.release import ReleaseSpec, verify_release
from assistant.learning.rounds import LearningRoundConfig, LearningRounds
from assistant.learning.validation import ValidationSet
from assistant.store import Label, RoundStatus, Store
from sda import crypto
from sda.mqtt import topics
from sda.mqtt.transport import Transport
from sda.protocol.participant import ParticipantPolicy
from sda.services.coordinator import Coordinator, CoordinatorConfig
from sda.services.participant import ParticipantConfig

WINDOW, EMBED, HIDDEN = 3, 4, 4  # the energy backbone's 4-dim embeddings
MODEL = "kws_fl"
DEVICES = 8  # take part; one more is registered but has not opted in
LABELS = 30


def direction() -> np.ndarray:
    u = np.random.default_rng(123).standard_normal(WINDOW * EMBED)
    return u / np.linalg.norm(u)


def shipped_head(u: np.ndarray) -> Head:
    """Every hidden unit fires along -u: confident on the negatives, silent on the positives."""
    return Head(np.stack([-u, -0.7 * u, -0.5 * u, -0.3 * u], axis=1), np.zeros(HIDDEN), np.full(HIDDEN, 2.0),
                np.array(0.0), WINDOW, EMBED)


def samples(u: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, window, embed) float32 embeddings and labels (n,): clusters at +-1.5 u, the label the side of u."""
    y = np.arange(n) % 2
    x = np.where(y[:, None] > 0, 1.0, -1.0) * 1.5 * u + 0.7 * rng.standard_normal((n, WINDOW * EMBED))
    return x.reshape(n, WINDOW, EMBED).astype(np.float32), y


def make_model(d, head: Head) -> str:
    d.mkdir(parents=True)
    energy_backbone(d / "backbone.onnx")
    head.save(d / "head.npz")
    files = {n: {"sha256": sha256_file(d / n), "bytes": (d / n).stat().st_size} for n in ("backbone.onnx", "head.npz")}
    (d / "card.json").write_text(json.dumps({"wakeword": "hey snips", "files": files, "threshold": 0.5}))
    return files["backbone.onnx"]["sha256"]


def seed_store(store: Store, u: np.ndarray, rng: np.random.Generator) -> None:
    x, y = samples(u, rng, LABELS)
    t = 1_750_000_000.0
    ids = [store.record_detection(np.zeros(1600, np.int16), 0.9, "shipped", e, time_s=t + i) for i, e in enumerate(x)]
    store.label([i for i, label in zip(ids, y, strict=True) if label], Label.TRUE_ACCEPT, time_s=t + LABELS)
    store.label([i for i, label in zip(ids, y, strict=True) if not label], Label.FALSE_ACCEPT, time_s=t + LABELS)


def validation_set(u: np.ndarray, sha: str) -> ValidationSet:
    x, y = samples(u, np.random.default_rng(999), 200)
    return ValidationSet(x.reshape(-1, EMBED), np.full(len(y), WINDOW, np.int64), y.astype(np.int8), WINDOW, sha,
                         "two clusters along u")


def wipe_retained(c: Cluster, topic: str) -> None:
    """Delete a retained message as a broker that lost it would (an empty retained publish, unframed)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wiper", protocol=mqtt.MQTTv5)
    client.username_pw_set("coordinator", c.broker.passwords["coordinator"])
    client.connect(c.broker.host, c.broker.port)
    client.loop_start()
    try:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def retained_release(c: Cluster, wait_s: float = 3.0) -> bytes | None:
    """The retained release of MODEL a device connecting now gets (None when the broker holds none)."""
    got: queue.Queue = queue.Queue()
    # A fresh client id each time: a persistent session would queue later publishes as non-retained.
    probe = Transport(f"probe-{time.monotonic_ns()}", c.broker_config(c.device_names[-1]),
                      lambda t, p, r, a: got.put((p, r)))
    probe.start()
    try:
        probe.subscribe(topics.release(MODEL))
        raw, retained = got.get(timeout=wait_s)
    except queue.Empty:
        return None
    finally:
        probe.stop()
    assert retained
    return raw


def mean_loss(head: Head, records) -> float:
    ex = examples_from(records, head)
    return head.loss_and_grad(ex.x, ex.y)[0]


@pytest.mark.parametrize("noise_mode", [NoiseMode.PARTICIPANTS, NoiseMode.CLERKS])
def test_one_learning_round_over_mosquitto(tmp_path, noise_mode):
    """With participant noise the sum is exactly what the devices prepared; with clerk noise (3 clerks as sda
    noise participants) it is that plus the clerks' noise, and the mean is over the devices alone. Then the
    coordinator restarts and publishes its last release again on a broker that lost it."""
    u = direction()
    start = shipped_head(u)
    sha = make_model(tmp_path / "shipped", start)
    c = Cluster(tmp_path, clerks=3, devices=DEVICES + 1)
    outcomes: queue.Queue = queue.Queue()
    with contextlib.ExitStack() as stack:
        stack.callback(c.close)
        coord = Coordinator(CoordinatorConfig(c.state, c.broker_config("coordinator"), grant_stake=100, tick_s=0.1))
        config = LearningRoundConfig(noise_multiplier=1.0, min_participants=6, max_participants=DEVICES,
                                     collect_s=30, results_s=30, noise_mode=noise_mode,
                                     committee_size=3 if noise_mode is NoiseMode.CLERKS else None)
        release_spec = ReleaseSpec(MODEL, "coordinator", sha, 1.0)
        rounds = LearningRounds(coord, start, validation_set(u, sha), release_spec, config,
                                FedAdamConfig(learning_rate=0.05), state_dir=c.state / "learning")
        coord.start()
        live = [coord]  # the coordinator running now: stopped at the end, whichever it is
        stack.callback(lambda: live[0].stop())
        for name in c.clerk_names:
            stack.callback(start_inprocess_clerk(c, name).stop)
        devices = []
        for i, name in enumerate(c.device_names):
            store = stack.enter_context(Store(tmp_path / name / "store"))
            seed_store(store, u, np.random.default_rng(i))
            store.update_settings(learning_opt_in=i < DEVICES)
            versions = ModelVersions.adopt(tmp_path / name / "model", tmp_path / "shipped")
            learning = LearningClient(store, MODEL, head=lambda v=versions: model_head(v.current),
                                      clip_norm=lambda v=versions: model_clip_norm(v.current),
                                      rng=np.random.default_rng(100 + i), policy=LearningPolicy(min_new_labels=20))
            client = learning.participant_client(
                ParticipantConfig(name, c.broker_config(name), "coordinator", c.coordinator_key,
                                  ParticipantPolicy(min_participants=5)), crypto.Identity.generate())
            listener = ReleaseListener(ReleaseInstaller(versions, store, Trust("coordinator", c.coordinator_key),
                                                        MODEL), lambda o, n=name: outcomes.put((n, o))).start()
            stack.callback(listener.stop)
            releases = Transport(f"{name}-releases", c.broker_config(name), listener.on_message, manual_ack=True)
            releases.start()
            stack.callback(releases.stop)
            releases.subscribe(listener.topic)
            client.start()
            stack.callback(client.stop)
            devices.append((name, store, versions, learning, client))
        c.wait_registered(clerks=3, devices=DEVICES + 1)
        union = [r for _, store, _, _, _ in devices[:DEVICES] for r in labelled_records(store)]

        round_id = rounds.start_round()
        assert is_learning_round(round_id, MODEL)
        outcome = rounds.wait(round_id, timeout_s=60)
        assert outcome.error is None, outcome.error

        # the revealed sum is exactly the sum of what the devices prepared (gradient + noise share each), plus
        # the clerks' noise when they add it; the mean is over the devices either way
        prepared = [d[3].committed[round_id] for d in devices[:DEVICES]]
        assert outcome.participants == DEVICES
        device_sum = sum(p.values for p in prepared)
        row = coord.store.aggregation(round_id)
        if noise_mode is NoiseMode.CLERKS:
            assert prepared[0].spec.noise_added_by is NoiseMode.CLERKS and row.result["noise_participants"] == 3
            clerk_noise = outcome.field_sum - device_sum
            assert np.count_nonzero(clerk_noise) > clerk_noise.size // 2
            assert np.abs(clerk_noise).max() <= prepared[0].spec.noise_headroom
        else:
            assert np.array_equal(outcome.field_sum, device_sum) and row.result["noise_participants"] == 0
        scale = prepared[0].spec.scale
        np.testing.assert_array_equal(outcome.gradient, outcome.field_sum / (scale * DEVICES))
        # FedAdam moved the head down the loss of every device's labels, and the gate released it
        assert outcome.release is not None and outcome.release.version == 1, outcome.decision
        assert outcome.release.rounds == (round_id,) and outcome.release.epsilon > 0
        before, after = mean_loss(start, union), mean_loss(outcome.release.head(), union)
        assert after < before - 0.1, (before, after)
        assert outcome.decision.candidate.loss < outcome.decision.current.loss

        # every device verified and installed it from the retained topic
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < len(devices) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                name, o = outcomes.get(timeout=0.5)
                got[name] = o
        if noise_mode is NoiseMode.CLERKS:
            # The clerks' noise is fresh OS randomness (the devices' is seeded) and all n clerks add
            # sigma^2 / (n - t), 1.5 sigma^2 here: whether one round helps every owner's labels hangs on the draw.
            # Every device verified the release and judged it on its labels either way.
            assert set(got) == {d[0] for d in devices}
            assert {o.status for o in got.values()} <= {Status.INSTALLED, Status.REJECTED_LOCALLY}
        else:
            assert {n: o.status for n, o in got.items()} == {d[0]: Status.INSTALLED for d in devices}
        installed = devices if noise_mode is NoiseMode.PARTICIPANTS else []
        for _, _, versions, _, _ in installed:
            assert versions.current_version() == 1
            assert np.array_equal(model_head(versions.current).flat(), outcome.release.head().flat())
            assert model_clip_norm(versions.current) == 1.0

        # the message is retained: a device connecting now gets it, signed by the coordinator
        late: queue.Queue = queue.Queue()
        probe = Transport("probe-releases", c.broker_config(c.device_names[-1]), lambda t, p, r, a: late.put((p, r)))
        probe.start()
        try:
            probe.subscribe(topics.release(MODEL))
            raw, retained = late.get(timeout=10)
        finally:
            probe.stop()
        assert retained and raw == outcome.sealed
        assert verify_release(raw, c.coordinator_key, 0, sha, "coordinator", MODEL).version == 1

        # the privacy ledgers: each participant spent the round once, the one not opted in sent nothing
        for _, store, _, _, client in devices[:DEVICES]:
            (row,) = store.learning_rounds()
            assert row.round_id == round_id and row.status is RoundStatus.COMPLETED
            assert row.epsilon_spent > 0 and row.label_count == LABELS
            assert client.sent == [round_id]
        name, store, _, learning, client = devices[-1]
        assert store.learning_rounds() == [] and client.sent == []
        assert "opted in" in learning.refused[round_id]

        # the broker loses its retained messages while the coordinator is down; the restarted coordinator's
        # LearningRounds publishes the last sealed release again, from its state_dir
        coord.stop()
        wipe_retained(c, topics.release(MODEL))
        assert retained_release(c) is None
        coord = live[0] = Coordinator(CoordinatorConfig(c.state, c.broker_config("coordinator"), grant_stake=100,
                                                        tick_s=0.1))
        again = LearningRounds(coord, start, validation_set(u, sha), release_spec, config,
                               FedAdamConfig(learning_rate=0.05), state_dir=c.state / "learning")
        assert again.state.released_version == 1
        coord.start()
        assert retained_release(c) == outcome.sealed
