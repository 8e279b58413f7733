"""The personal verifier inside the running device service (DESIGN §8), with real SQLite and real ONNX Runtime:
before the owner labels anything every detection is announced; once the owner has labelled the TV's false
alarms, a detection the verifier disagrees with is not announced but kept as a near miss the owner can label;
the owner's own wake words still go through; it retrains when the labels change enough and on a reload; and
it can be turned off."""

from __future__ import annotations

import numpy as np
import pytest
from test_service import FRAME_SAMPLES, THRESHOLD, make_model, sound

from assistant import service as service_module
from assistant.learning.verifier import VerifierPolicy, verifier_path
from assistant.service import DeviceService, ServiceConfig
from assistant.store import Kind, Label, Store

OWNER, TV, QUIET = 15000, 4500, 30  # both fire the energy head; the verifier learns which is the owner
POLICY = VerifierPolicy(retrain_after=3)


def household(owner: int, tv: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Audio with `owner` bursts of the owner and `tv` of the TV, interleaved; who made each burst, in order."""
    who = ["owner"] * owner + ["tv"] * tv
    np.random.default_rng(seed).shuffle(who)
    parts = [(2.0, QUIET)] + [p for w in who for p in ((0.6, OWNER if w == "owner" else TV), (2.5, QUIET))]
    return sound(*parts, seed=seed), who


def listen(service: DeviceService, audio: np.ndarray) -> list[float]:
    """Feed `audio`; the scores of the detections announced."""
    heard: list[float] = []
    service._on_detection = lambda h: heard.append(h.score)
    service.run(audio.reshape(-1, FRAME_SAMPLES))
    return heard


def by_time(store: Store, kind: Kind) -> list:
    return sorted((r for r in store.review_queue(False, limit=10_000) if r.kind == kind), key=lambda r: r.time_s)


def clock():
    t = iter(range(1_750_000_000, 1_760_000_000))
    return lambda: float(next(t))  # one second a frame: each saved row has its own time, in order


@pytest.fixture
def model(tmp_path):
    make_model(tmp_path / "model")
    return tmp_path / "model"


def test_the_verifier_keeps_the_tvs_false_alarms_as_near_misses_and_lets_the_owner_through(tmp_path, model):
    with Store(tmp_path / "store") as store:
        store.update_settings(near_miss_daily_quota=1000, near_miss_band=0.9)
        audio, who = household(12, 8, seed=1)
        # 1. no labels: the verifier is inactive and every burst is a detection, announced
        service = DeviceService(store, ServiceConfig(model, verifier_policy=POLICY), clock=clock())
        assert len(listen(service, audio)) == 20
        summary = service.close()
        assert (summary.detections, summary.rejected) == (20, 0)
        assert service.status()["verifier"]["state"] == "inactive"
        detections = by_time(store, Kind.DETECTION)
        assert len(detections) == 20 and all(r.score >= THRESHOLD for r in detections)
        # 2. the owner labels them: its wake words, and the TV's false alarms
        store.label([r.id for r, w in zip(detections, who, strict=True) if w == "owner"], Label.TRUE_ACCEPT)
        store.label([r.id for r, w in zip(detections, who, strict=True) if w == "tv"], Label.FALSE_ACCEPT)

        # 3. a new service trains on them at start-up (the writer's first refresh) and vets each detection
        audio, who = household(10, 10, seed=2)
        service = DeviceService(store, ServiceConfig(model, verifier_policy=POLICY), clock=clock())
        _wait(lambda: service.status()["verifier"]["state"] == "active")
        status = service.status()["verifier"]
        assert (status["true_labels"], status["false_labels"]) == (12, 8)
        assert verifier_path(store).is_file()
        heard = listen(service, audio)
        summary = service.close()
        assert len(heard) == summary.detections == 10  # the owner's ten wake words, announced
        assert summary.rejected == 10  # the TV's ten, not announced...
        near = by_time(store, Kind.NEAR_MISS)
        assert len(near) == 10 and summary.near_misses == 10  # ...but kept for the owner to label
        assert all(r.score >= THRESHOLD and r.embeddings.shape == (3, 4) for r in near)
        assert len(by_time(store, Kind.DETECTION)) == 30

        # 4. turned off: everything the head fires on is announced again
        service = DeviceService(store, ServiceConfig(model, verifier=False), clock=clock())
        assert len(listen(service, audio)) == 20
        assert service.close().rejected == 0 and service.status()["verifier"]["state"] == "off"


def _wait(check, timeout_s: float = 20.0) -> None:
    import time

    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_it_retrains_when_the_labels_change_enough_and_on_a_reload(tmp_path, model, monkeypatch):
    monkeypatch.setattr(service_module, "SETTINGS_REFRESH_S", 0.05)  # the writer's periodic refresh, sped up
    with Store(tmp_path / "store") as store:
        audio, who = household(10, 6, seed=3)
        service = DeviceService(store, ServiceConfig(model, verifier_policy=POLICY), clock=clock())
        listen(service, audio)
        _wait(lambda: len(by_time(store, Kind.DETECTION)) == 16)  # the writer saves them after the audio loop
        detections = by_time(store, Kind.DETECTION)
        owner = [r.id for r, w in zip(detections, who, strict=True) if w == "owner"]
        tv = [r.id for r, w in zip(detections, who, strict=True) if w == "tv"]
        store.label(owner, Label.TRUE_ACCEPT)
        store.label(tv[:4], Label.FALSE_ACCEPT)  # one short of the five false alarms it needs
        _wait(lambda: service.status()["verifier"]["false_labels"] == 4)
        assert service.status()["verifier"]["state"] == "inactive"
        store.label(tv[4], Label.FALSE_ACCEPT)  # one more label: fewer than retrain_after changes, no retrain
        for _ in range(10):
            service._refresh()
        assert service.status()["verifier"]["false_labels"] == 4
        store.label(tv[5], Label.FALSE_ACCEPT)
        store.label(owner[0], Label.UNSURE)  # three changes since the last training: retrained
        _wait(lambda: service.status()["verifier"]["state"] == "active")
        assert (service.status()["verifier"]["true_labels"], service.status()["verifier"]["false_labels"]) == (9, 6)
        # a reload retrains over the new head's windows, from the same labels
        verifier_path(store).unlink()
        service.reload()
        assert verifier_path(store).is_file() and service.status()["verifier"]["state"] == "active"
        service.close()
