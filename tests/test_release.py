"""Signed model releases (issue 7): the strict message; every way a release is refused (tampered, wrong key,
replayed, wrong backbone or model, malformed, oversized); the coordinator's release decision from FedAdam and its
validation set; a device that checks a release on the owner's labels, installs it as a new version, hot-swaps
it into the running service without losing a frame, and rolls back; recovery from a crash in between; and a
retained release over a real Mosquitto that a device receives, verifies and hot-swaps."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time

import numpy as np
import pytest
from test_service import QUIET, make_model, sound

from assistant.audio import FRAME_SAMPLES
from assistant.errors import ModelError
from assistant.kws.backbone import sha256_file
from assistant.kws.head import Head
from assistant.kws.model import load_model
from assistant.learning.errors import LearningError
from assistant.learning.fedadam import FedAdamConfig, FedAdamState, apply_round
from assistant.learning.install import (
    LocalCheckPolicy,
    ModelVersions,
    ReleaseInstaller,
    ReleaseListener,
    Status,
    Trust,
    local_check,
)
from assistant.learning.participate import labelled_records
from assistant.learning.privacy import RoundCost, epsilon_of
from assistant.learning.release import (
    MAX_RELEASE_BYTES,
    BadReleaseSignature,
    MalformedRelease,
    Release,
    ReleaseSpec,
    StaleRelease,
    WrongBackbone,
    WrongModel,
    build_release,
    propose_release,
    publish_release,
    seal_release,
    verify_release,
)
from assistant.learning.validation import Metrics, ValidationSet
from assistant.service import DeviceService, ServiceConfig
from assistant.store import Label, Store
from sda import crypto
from sda.errors import MessageError
from sda.mqtt import topics
from sda.mqtt.transport import BrokerConfig, Transport
from sda.protocol.codec import pack, unpack
from sda.protocol.messages import Envelope, seal

MODEL = "hey_snips"
COORD = "coordinator"
METRICS = Metrics(0.12, 0.93, 0.05, 0.01, 2.5, 40, 900)
T0 = 1_750_000_000.0


@pytest.fixture(scope="module")
def coordinator() -> crypto.Identity:
    return crypto.Identity.generate()


def energy_head(b2: float) -> Head:
    """test_service's model head (logit = 2 relu(sum of the window) + b2) with another bias."""
    return Head(W1=np.full((12, 1), 1.0), b1=np.zeros(1), w2=np.array([2.0]), b2=np.array(b2), window=3, embed=4)


def backbone_sha(model_dir) -> str:
    return sha256_file(model_dir / "backbone.onnx")


def release_of(identity: crypto.Identity, version: int, head: Head, sha: str, model: str = MODEL,
               signer: str = COORD, rounds: tuple[str, ...] = ("agg-1",)) -> tuple[Release, bytes]:
    r = build_release(model, signer, version, head, sha, 1.5, METRICS, rounds, 3.2, 1e-6, T0 + version)
    return r, seal_release(r, identity)


@pytest.fixture
def device(tmp_path, coordinator):
    """A device: the shipped model adopted as version 0, a store, and an installer with no service yet."""
    make_model(tmp_path / "shipped", b2=-30.0)
    versions = ModelVersions.adopt(tmp_path / "model", tmp_path / "shipped")
    with Store(tmp_path / "store") as store:
        yield versions, store, Trust(COORD, coordinator.public().sign_key)


# --- the message --------------------------------------------------------------------------------------------


def test_a_release_round_trips_and_its_fields_are_checked(tmp_path, coordinator):
    make_model(tmp_path / "m")
    head = energy_head(-29.0)
    r, raw = release_of(coordinator, 3, head, backbone_sha(tmp_path / "m"), rounds=("agg-7", "agg-8"))
    env = Envelope.decode(raw)
    back = Release.decode(env.payload)
    assert back == r and back.validation == METRICS and back.rounds == ("agg-7", "agg-8")
    assert np.array_equal(back.head().flat(), head.flat()) and back.hidden == 1
    wire = unpack(env.payload, "t")
    for change, words in (({"params": wire["params"][:-4]}, "needs 60 bytes, got 56"),
                          ({"params": wire["params"][:-4] + np.float32(np.nan).tobytes()}, "NaN"),
                          ({"window": 4}, "needs"),
                          ({"backbone_sha256": b"x" * 31}, "32 bytes"),
                          ({"version": 0}, "version"),
                          ({"delta": 1.0}, "delta"),
                          ({"validation": [0.1, 0.9]}, "validation"),
                          ({"rounds": ["bad/round"]}, "rounds"),
                          ({"extra": 1}, "unexpected keys")):
        with pytest.raises(MessageError, match=words):
            Release.decode(pack({**wire, **change}))
    with pytest.raises(LearningError, match="NaN or beyond"):
        build_release(MODEL, COORD, 1, energy_head(float("inf")), backbone_sha(tmp_path / "m"), 1.0, METRICS, (),
                      0.0, 0.0, T0)


def test_tampered_replayed_and_foreign_releases_are_refused(tmp_path, coordinator, caplog):
    make_model(tmp_path / "m")
    sha = backbone_sha(tmp_path / "m")
    key = coordinator.public().sign_key
    r, raw = release_of(coordinator, 5, energy_head(-29.0), sha)
    assert verify_release(raw, key, 4, sha, COORD, MODEL) == r

    at = raw.find(r.params)  # a flipped bit in the head's parameters
    flipped = raw[: at + 6] + bytes([raw[at + 6] ^ 0x01]) + raw[at + 7 :]
    other = crypto.Identity.generate()
    _, by_other_key = release_of(other, 5, energy_head(-29.0), sha)
    _, by_other_signer = release_of(other, 5, energy_head(-29.0), sha, signer="mallory")
    _, other_backbone = release_of(coordinator, 5, energy_head(-29.0), "ab" * 32)
    _, other_model = release_of(coordinator, 5, energy_head(-29.0), sha, model="hey_jarvis")
    not_a_release = seal(_registration(), COORD, coordinator)
    caplog.set_level(logging.DEBUG, "assistant.learning.release")
    cases = [
        (flipped, 4, BadReleaseSignature, "does not verify"),
        (by_other_key, 4, BadReleaseSignature, "does not verify"),
        (by_other_signer, 4, BadReleaseSignature, "not the coordinator"),
        (raw, 5, StaleRelease, "duplicate of version 5"),
        (raw, 9, StaleRelease, "older than version 9"),
        (other_backbone, 4, WrongBackbone, "backbone"),
        (other_model, 4, WrongModel, "hey_jarvis"),
        (not_a_release, 4, MalformedRelease, "not a well-formed release"),
        (b"\x93garbage", 4, MalformedRelease, "not a signed envelope"),
        (raw[:-3], 4, MalformedRelease, "not a signed envelope"),
        (b"\x00" * (MAX_RELEASE_BYTES + 1), 4, MalformedRelease, "at most"),
    ]
    for data, highest, error, words in cases:
        with pytest.raises(error, match=words):
            verify_release(data, key, highest, sha, COORD, MODEL)
    logged = [rec for rec in caplog.records if rec.message.startswith("release refused")]
    assert len(logged) == len(cases)  # one line each; the retained duplicate is routine, so only at debug
    assert [rec.levelno for rec in logged if "duplicate" in rec.message] == [logging.DEBUG]
    assert all(rec.levelno == logging.WARNING for rec in logged if "duplicate" not in rec.message)


def _registration():
    from sda.protocol.messages import Registration

    return Registration("coordinator", "device", b"k" * 32, b"b" * 32)


# --- the coordinator's decision --------------------------------------------------------------------------------


def tiny_validation(seed: int = 0, clips: int = 40) -> ValidationSet:
    """Random embeddings: positive clips have a bump of +1.5 in their last 3 frames' first feature."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 7, clips)
    labels = np.arange(clips) % 2
    e = rng.standard_normal((int(lengths.sum()), 4)).astype(np.float32)
    ends = np.cumsum(lengths)
    for end, y in zip(ends, labels, strict=True):
        if y:
            e[end - 3 : end, 0] += 1.5
    return ValidationSet(e, lengths.astype(np.int64), labels.astype(np.int8), 3, "ab" * 32, "tiny")


def test_the_coordinator_releases_a_better_head_and_discards_a_worse_step(coordinator):
    vset = tiny_validation()
    like = Head(np.zeros((12, 1)), np.zeros(1), np.zeros(1), np.zeros(()), 3, 4)
    start = like.with_flat(np.r_[np.zeros(12), 0.0, 1.0, 0.0])  # hidden unit off: scores 0 everywhere
    good = np.zeros(start.size)
    good[[0, 4, 8]] = -1.0  # W1 on feature 0 of each frame: descending along it turns the detector on
    good[12] = -0.1
    spec = ReleaseSpec(MODEL, COORD, "ab" * 32, clip_norm=1.0)
    s = FedAdamState.start(start.flat(), FedAdamConfig(learning_rate=0.3), released_version=2)
    s = apply_round(s, "agg-1", good, RoundCost(0.05))
    s, release, decision = propose_release(s, like, vset, spec, now=T0)
    assert decision.release and release is not None, decision.reason
    assert decision.candidate.loss < decision.current.loss
    assert release.version == 3 and release.rounds == ("agg-1",) and release.validation == decision.candidate
    assert release.epsilon == pytest.approx(epsilon_of(0.05, 1e-6)) and release.delta == 1e-6
    assert s.released_version == 3 and s.pending == () and np.array_equal(s.released, release.head().flat())
    # a step the wrong way is measured, not released, and discarded: devices stay where they are
    s = apply_round(s, "agg-2", -30 * good, RoundCost(0.05))
    s, none, decision = propose_release(s, like, vset, spec, now=T0 + 60)
    assert none is None and not decision.release and "not released" in decision.reason
    assert np.array_equal(s.params, release.head().flat()) and s.pending == ("agg-2",) and s.rho == 0.1
    # the release verifies on a device and carries the clip norm the next round uses
    raw = seal_release(release, coordinator)
    assert verify_release(raw, coordinator.public().sign_key, 2, "ab" * 32, COORD, MODEL).clip_norm == 1.0


# --- the device: local check, install, hot swap, rollback -------------------------------------------------------


def label_owner_rows(store: Store, n: int = 12, seed: int = 0) -> None:
    """The owner's labels, which the shipped head gets right: loud windows were the wake word, quiet ones not."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        loud = i % 2 == 0
        emb = (rng.normal(2.0 if loud else -1.0, 0.2, (3, 4))).astype(np.float32)
        rid = store.record_detection(np.zeros(1600, np.int16), 0.99, "v0", emb, time_s=T0 + i)
        store.label(rid, Label.TRUE_ACCEPT if loud else Label.FALSE_ACCEPT, time_s=T0 + i)


def test_a_valid_release_is_installed_hot_swapped_and_rolled_back(device, coordinator):
    versions, store, trust = device
    service = DeviceService(store, ServiceConfig(versions.current))
    installer = ReleaseInstaller(versions, store, trust, MODEL, service.reload)
    shipped_version, shipped_card = service.model_version, load_model(versions.current).card
    sha = shipped_card["files"]["backbone.onnx"]["sha256"]
    r1, raw1 = release_of(coordinator, 1, energy_head(-29.0), sha)

    out = installer.offer(raw1)
    assert out.status is Status.INSTALLED and out.version == 1 and out.model_version == service.model_version
    assert service.model_version != shipped_version
    files = load_model(versions.current)  # the card matches the new head file
    assert os.readlink(versions.current) == "versions/1" and versions.installed() == [0, 1]
    assert np.array_equal(Head.load(files.head).flat(), r1.head().flat())
    assert files.card["release"]["version"] == 1 and files.card["release"]["rounds"] == ["agg-1"]
    assert files.card["threshold"] == shipped_card["threshold"] and files.card["wakeword"] == "hey snips"
    assert (versions.root / "versions" / "0" / "head.npz").is_file()  # the previous head is kept
    assert installer.offer(raw1).status is Status.DUPLICATE  # the retained message, seen again

    back = installer.rollback()
    assert back.status is Status.ROLLED_BACK and back.version == 0 and service.model_version == shipped_version
    assert os.readlink(versions.current) == "versions/0" and versions.refused() == {1: "rolled back by the owner"}
    again = installer.offer(raw1)  # a rolled-back release never comes back, even though it is newer than 0
    assert again.status is Status.REFUSED and "refused here before: rolled back by the owner" in again.reason
    with pytest.raises(ModelError, match="no previous version"):
        installer.rollback()

    for v in (2, 3, 4):
        assert installer.offer(release_of(coordinator, v, energy_head(-29.0 - v / 10), sha)[1]).status is (
            Status.INSTALLED)
    kept = sorted(p.name for p in (versions.root / "versions").iterdir())
    assert kept == ["2", "3", "4"] and versions.installed() == [0, 2, 3, 4]
    assert installer.rollback().version == 3 and service.model_version == load_model(versions.current).version
    assert service.close().frames == 0


def test_the_owners_labels_refuse_a_worse_release_and_too_few_labels_accept(device, coordinator):
    versions, store, trust = device
    installer = ReleaseInstaller(versions, store, trust, MODEL, policy=LocalCheckPolicy(min_labels=10))
    sha = load_model(versions.current).card["files"]["backbone.onnx"]["sha256"]
    label_owner_rows(store, n=8)
    fires_always = energy_head(+30.0)  # every quiet window a false alarm
    few = installer.offer(release_of(coordinator, 1, fires_always, sha)[1])
    assert few.status is Status.INSTALLED and "fewer than the 10" in few.reason  # 8 labels: too few to judge
    installer.rollback()
    label_owner_rows(store, n=8, seed=1)
    worse = installer.offer(release_of(coordinator, 2, fires_always, sha)[1])
    assert worse.status is Status.REJECTED_LOCALLY and "refused on 16 local labels" in worse.reason
    assert worse.check.candidate_loss > worse.check.current_loss and versions.current_version() == 0
    assert 2 in versions.refused()
    better = installer.offer(release_of(coordinator, 3, energy_head(-29.0), sha)[1])
    assert better.status is Status.INSTALLED and better.check.labels == 16
    # the pure check on its own
    rows = labelled_records(store)
    check = local_check(rows, energy_head(-30.0), fires_always, 0.99, LocalCheckPolicy(min_labels=16))
    assert not check.accept and check.candidate_accuracy < check.current_accuracy


def test_a_hot_swap_under_streaming_audio_loses_no_frame(device, coordinator):
    versions, store, trust = device
    service = DeviceService(store, ServiceConfig(versions.current, source="test"))
    installer = ReleaseInstaller(versions, store, trust, MODEL, service.reload)
    sha = load_model(versions.current).card["files"]["backbone.onnx"]["sha256"]
    raw = release_of(coordinator, 1, energy_head(-29.0), sha)[1]
    frames = sound((4, QUIET)).reshape(-1, FRAME_SAMPLES)
    fed, streaming, swapped, at_swap = 0, threading.Event(), threading.Event(), []

    def source():
        nonlocal fed
        after = 0
        while after < 150:
            fed += 1
            yield frames[fed % len(frames)]
            if fed == 150:
                streaming.set()
            after += swapped.is_set()
            time.sleep(0.0005)

    runner = threading.Thread(target=service.run, args=(source(),))
    runner.start()
    assert streaming.wait(30)
    at_swap.append(fed)
    out = installer.offer(raw)
    at_swap.append(fed)
    swapped.set()
    runner.join(60)
    summary = service.close()
    assert out.status is Status.INSTALLED and service.model_version == out.model_version
    assert at_swap[0] < at_swap[1] < fed  # frames kept coming while the new model was loaded and warmed
    assert summary.frames == fed


def test_a_crash_between_the_switch_and_the_state_write_is_recovered(device, coordinator):
    versions, store, trust = device
    installer = ReleaseInstaller(versions, store, trust, MODEL)
    sha = load_model(versions.current).card["files"]["backbone.onnx"]["sha256"]
    state_file = versions.root / "releases.json"
    before = state_file.read_text()
    r1 = release_of(coordinator, 1, energy_head(-29.0), sha)[1]
    installer.offer(r1)
    after_install = state_file.read_text()
    state_file.write_text(before)  # as if power went between the symlink's rename and the state's write
    assert versions.installed() == [0, 1] and versions.highest_seen() == 1
    assert installer.offer(r1).status is Status.DUPLICATE
    # an interrupted rollback: the link went back to 0, the state still says 1 is installed
    state_file.write_text(after_install)
    os.replace(_symlink_to(versions.root, 0), versions.current)
    assert versions.installed() == [0] and versions.refused() == {1: "rolled back"} and versions.highest_seen() == 1
    assert installer.offer(r1).status is Status.REFUSED
    assert load_model(versions.current).card.get("release") is None


def _symlink_to(root, version: int):
    tmp = root / f".test-link-{secrets.token_hex(2)}"
    os.symlink(f"versions/{version}", tmp)
    return tmp


# --- over a real broker ---------------------------------------------------------------------------------------


def test_a_retained_release_reaches_a_device_over_mosquitto(mosquitto, device, coordinator):
    versions, store, trust = device
    model = f"m{secrets.token_hex(4)}"  # the session broker keeps retained messages between tests
    service = DeviceService(store, ServiceConfig(versions.current))
    shipped = service.model_version
    sha = load_model(versions.current).card["files"]["backbone.onnx"]["sha256"]

    def broker(user: str) -> BrokerConfig:
        return BrokerConfig(mosquitto.host, mosquitto.port, user, mosquitto.passwords[user])

    coord = Transport(f"coordinator-{model}", broker("coordinator"), lambda *a: None)
    coord.start()
    outcomes: list = []
    got = threading.Condition()

    def seen(outcome) -> None:
        with got:
            outcomes.append(outcome)
            got.notify_all()

    listener = ReleaseListener(ReleaseInstaller(versions, store, trust, model, service.reload), seen).start()
    dev = Transport(f"dev1-{model}", broker("dev1"), listener.on_message, manual_ack=True)
    try:
        r, raw = release_of(coordinator, 1, energy_head(-29.0), sha, model=model)
        publish_release(coord, model, raw)  # retained, before the device is even connected
        dev.start()
        dev.subscribe(listener.topic)
        with got:
            assert got.wait_for(lambda: len(outcomes) == 1, 30)
        assert outcomes[0].status is Status.INSTALLED and outcomes[0].version == 1
        assert service.model_version == outcomes[0].model_version != shipped
        assert np.array_equal(Head.load(load_model(versions.current).head).flat(), r.head().flat())
        # a release the coordinator's account published but another key signed: refused, the model stays
        forged = release_of(crypto.Identity.generate(), 2, energy_head(+30.0), sha, model=model)[1]
        publish_release(coord, model, forged)
        with got:
            assert got.wait_for(lambda: len(outcomes) == 2, 30)
        assert outcomes[1].status is Status.REFUSED and "does not verify" in outcomes[1].reason
        assert versions.current_version() == 1 and service.model_version == outcomes[0].model_version
        # devices may only read the topic (tests/test_acl.py shows the broker refusing dev1's publish there)
        model_lines = [line for line in topics.acl_lines() if "/model/" in line]
        assert model_lines == [f"pattern read {topics.PREFIX}/model/+/release"]
    finally:
        coord.clear_retained(topics.release(model))
        listener.stop()
        dev.stop()
        coord.stop()
        service.close()
