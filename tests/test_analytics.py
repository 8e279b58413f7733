"""Private product analytics (issue 8), in process: the event registry and its clipping, the counters in the
store (and the migration that adds them), the device's answer to a day's announce, the stated privacy, and
the variance of the clerks' noise over many real protocol rounds (sda's sans-I/O objects, real SQLite stores).
The round over Mosquitto is tests/test_analytics_mqtt.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3

import numpy as np
import pytest
from protocol_fixtures import COORDINATOR, NOW, make_world

from assistant.analytics import REGISTRY, UnknownEvent, count, count_many, day_counts, day_vector
from assistant.analytics.coordinate import AnalyticsConfig, analytics_spec
from assistant.analytics.participate import AnalyticsClient
from assistant.analytics.privacy import day_privacy, sensitivities, sigma_for_epsilon
from assistant.analytics.registry import INDEX, layout_id, max_counts, names
from assistant.errors import StoreError
from assistant.learning.privacy import RoundCost, epsilon_of
from assistant.store import SCHEMA_VERSION, Label, Store
from assistant.store.schema import MIGRATIONS
from sda.protocol.noise_participant import NoiseParticipant
from sda.protocol.recipient import Recipient
from sda.services.report import analytics_day, analytics_id, noise_std

DAY = "2026-11-25"
NOON = dt.datetime(2026, 11, 25, 12, 30).timestamp()  # local time, inside DAY


# --- the registry and its layout (pure) ---------------------------------------------------------------


def test_registry_has_over_100_distinct_events_with_positive_ranges():
    assert len(REGISTRY) >= 100 and len(set(names())) == len(REGISTRY)
    assert (max_counts() >= 1).all()
    for must in ("detection.accepted", "label.false_accept", "label.missed_wake_word", "near_miss.saved",
                 "tui.key.y", "error.audio_overrun", "uptime.hours_8_12", "model.install.release",
                 "learning.taken", "learning.refused_budget"):
        assert must in INDEX
    assert len(layout_id()) == 16 and layout_id() != layout_id(REGISTRY[:-1])


def test_day_vector_clips_each_counter_to_its_declared_range():
    big = REGISTRY[INDEX["detection.accepted"]].max_count
    x = day_vector({"detection.accepted": big + 1000, "uptime.hours_0_1": 7, "tui.key.y": 3, "label.unsure": -4})
    assert x.dtype == np.int64 and x.shape == (len(REGISTRY),)
    assert x[INDEX["detection.accepted"]] == big
    assert x[INDEX["uptime.hours_0_1"]] == 1  # an indicator: one bucket per day
    assert x[INDEX["tui.key.y"]] == 3 and x[INDEX["label.unsure"]] == 0
    assert x.sum() == big + 1 + 3
    with pytest.raises(UnknownEvent, match=r"detection\.acepted"):
        day_vector({"detection.acepted": 1})


# --- the counters in the store ---------------------------------------------------------------------------


def test_counters_add_up_per_local_day_and_are_clipped_when_sent(tmp_path):
    with Store(tmp_path / "s") as store:
        count(store, "detection.accepted", time_s=NOON)
        count(store, "detection.accepted", 2, time_s=NOON + 60)
        count_many(store, {"label.false_accept": 3, "tui.key.n": 300}, time_s=NOON)
        count(store, "detection.accepted", time_s=NOON + 86_400)  # the next day
        assert store.event_counts(DAY) == {"detection.accepted": 3, "label.false_accept": 3, "tui.key.n": 300}
        x = day_counts(store, DAY)
        assert x[INDEX["tui.key.n"]] == REGISTRY[INDEX["tui.key.n"]].max_count  # stored as counted, sent clipped
        assert x[INDEX["detection.accepted"]] == 3 and x[INDEX["label.false_accept"]] == 3
        # A typo or a negative count writes nothing at all.
        with pytest.raises(UnknownEvent):
            count_many(store, {"detection.accepted": 1, "nope": 1}, time_s=NOON)
        with pytest.raises(StoreError, match="whole number"):
            store.count_events({"detection.accepted": -1}, time_s=NOON)
        assert store.event_counts(DAY)["detection.accepted"] == 3


def test_migration_4_upgrades_a_v3_store_without_losing_rows(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    db = sqlite3.connect(root / "store.db")
    for step in MIGRATIONS[:3]:  # shipped steps are never edited: this is what a v3 device has on disk
        for statement in step:
            db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    db.execute("INSERT INTO detections (id, time, kind, score, model_version) VALUES (1, ?, 'detection', 0.9, 'v3')",
               (NOON,))
    db.execute("INSERT INTO labels VALUES (1, 'false_accept', ?)", (NOON + 5,))
    db.execute("INSERT INTO settings VALUES ('analytics_opt_in', 'true')")
    db.execute("INSERT INTO learning_rounds VALUES ('r1', ?, 0.25, 1e-6, 'completed', 4)", (NOON,))
    db.execute("INSERT INTO clerk_jobs VALUES ('j1', ?, 3)", (NOON,))
    db.commit()
    db.close()

    with Store(root) as store:
        assert store.get(1).label == Label.FALSE_ACCEPT and store.count() == 1
        assert store.settings().analytics_opt_in is True
        assert store.privacy_spent() == (0.25, 1e-6) and store.clerk_jobs()[0].tokens == 3
        assert store.event_counts(DAY) == {}
        count(store, "label.false_accept", time_s=NOON)
        assert store.event_counts(DAY) == {"label.false_accept": 1}
    db = sqlite3.connect(root / "store.db")
    assert SCHEMA_VERSION == 4
    assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("4",)
    db.close()
    with Store(root) as store:  # opening again applies nothing twice
        assert store.event_counts(DAY) == {"label.false_accept": 1}


def test_export_and_delete_everything_cover_the_counters(tmp_path):
    import json
    import zipfile

    store = Store(tmp_path / "s")
    count(store, "tui.key.p", time_s=NOON)
    with zipfile.ZipFile(store.export(tmp_path / "out.zip")) as z:
        assert json.loads(z.read("store.json"))["analytics_counts"] == [{"day": DAY, "event": "tui.key.p", "count": 1}]
    store.delete_everything()
    with Store(tmp_path / "s") as again:
        assert again.event_counts(DAY) == {}


# --- the stated privacy -------------------------------------------------------------------------------


def test_sensitivities_come_from_the_declared_ranges():
    m = max_counts().astype(float)
    s = sensitivities()
    assert s.l1 == m.sum() and s.l2 == pytest.approx(np.sqrt((m * m).sum()))


def test_sigma_for_epsilon_meets_the_target_and_is_tight():
    sigma = sigma_for_epsilon(1.0)
    p = day_privacy(sigma)
    assert p.epsilon <= 1.0 and day_privacy(sigma * 0.99).epsilon > 1.0
    s = sensitivities()
    assert p.epsilon == epsilon_of(RoundCost.skellam(s.l2, s.l1, sigma**2).rho, p.delta)  # dp-accounting's
    assert day_privacy(2 * sigma).epsilon < p.epsilon  # more noise, less epsilon


def test_the_spec_states_names_privacy_and_clerk_noise():
    spec = analytics_spec(DAY, AnalyticsConfig(epsilon=0.5, committee_size=12))
    assert spec.aggregation_id == analytics_id(DAY) == f"analytics.{DAY}" and analytics_day(spec.aggregation_id) == DAY
    assert spec.dimension == len(REGISTRY) and spec.labels == names()
    assert (spec.noise_mechanism, spec.noise_added_by, spec.scale, spec.clip_lo) == ("skellam", "clerks", 1.0, 0.0)
    assert spec.clip_hi == max_counts().max()
    assert spec.dp_epsilon == pytest.approx(0.5, rel=1e-4) and spec.dp_epsilon <= 0.5
    assert spec.dp_epsilon == day_privacy(spec.noise_sigma).epsilon
    assert analytics_day("learn.m.3") is None and analytics_day("analytics.2026-13-01") is None


# --- a day's round in process: the device's answer and the noise's variance ------------------------------


def analytics_world(devices: int):
    spec = analytics_spec(DAY, AnalyticsConfig(committee_size=12, min_participants=devices))
    w = make_world(devices=devices, clerks=12, k=spec.k, t=spec.t, dimension=spec.dimension,
                   min_participants=devices, aggregation_id=spec.aggregation_id, scale=spec.scale,
                   clip_lo=spec.clip_lo, clip_hi=spec.clip_hi, noise_mechanism=spec.noise_mechanism,
                   noise_added_by=spec.noise_added_by, noise_sigma=spec.noise_sigma,
                   noise_headroom=spec.noise_headroom)
    return spec, w


def device_store(tmp_path, name: str, opted_in: bool, counts: dict[str, int]) -> Store:
    store = Store(tmp_path / name)
    store.update_settings(analytics_opt_in=opted_in)
    count_many(store, counts, time_s=NOON)
    return store


def test_a_device_answers_only_when_its_owner_opted_in(tmp_path):
    _, w = analytics_world(3)
    today = lambda: dt.date(2026, 11, 26)  # noqa: E731
    yes = AnalyticsClient(device_store(tmp_path, "yes", True, {"detection.accepted": 500}), today=today)
    no = AnalyticsClient(device_store(tmp_path, "no", False, {"detection.accepted": 5}), today=today)
    x = yes.provide(w.announce)
    assert x is not None and x[INDEX["detection.accepted"]] == REGISTRY[INDEX["detection.accepted"]].max_count
    assert no.provide(w.announce) is None and "not opted in" in no.refused[w.announce.aggregation_id]
    assert no.sent == {}
    # Announces it cannot do safely: too little noise for its ceiling, another layout, a day not over.
    weak = dataclasses.replace(w.announce, noise_sigma=w.announce.noise_sigma / 10)
    assert yes.provide(weak) is None and "epsilon" in yes.refused[weak.aggregation_id]
    assert yes.provide(dataclasses.replace(w.announce, dimension=7)) is None
    early = AnalyticsClient(yes.store, today=lambda: dt.date(2026, 11, 25))
    assert early.provide(w.announce) is None and "not ended" in early.refused[w.announce.aggregation_id]
    # Other announces go to the fallback (the learning client, on a device that runs both).
    other = dataclasses.replace(w.announce, aggregation_id="learn.m.1")
    assert AnalyticsClient(yes.store, fallback=lambda a: np.ones(1)).provide(other).tolist() == [1.0]


def run_day(w, xs: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One whole round in process (devices, every clerk's noise, every clerk's job, the reveal): the values."""
    server = w.server()
    for i, x in enumerate(xs):
        server.accept(w.participant(i).participate(w.announce, x, NOW).envelope, NOW)
    for j in range(w.announce.n):
        server.accept(NoiseParticipant(w.clerk_ids[j], w.clerks[j]).contribute(w.announce, NOW, rng=rng).envelope,
                      NOW)
    snap = server.snapshot()
    rec = Recipient(w.recipient, w.announce, snap.hash, snap.sealed_seeds, snap.noise_seeds)
    for j, (_, job) in enumerate(server.jobs(COORDINATOR, w.coordinator)):
        rec.add_result(w.clerk(j).handle_job(w.announce, job, w.registry, NOW).envelope, NOW)
    rev = rec.reveal()
    assert (rev.participants, rev.noise_participants) == (len(xs), w.announce.n)
    return np.asarray(rev.values, np.float64)


def test_the_revealed_noise_has_the_stated_variance(tmp_path):
    """Over many in-process days, revealed minus true counters has the variance the report states
    (noise_std: every clerk's share sigma^2 / (n - t), n of them), within 5 %; and never exceeds the headroom."""
    spec, w = analytics_world(3)
    client = AnalyticsClient(device_store(tmp_path, "d", True, {"detection.accepted": 7, "tui.key.q": 500}),
                             today=lambda: dt.date(2026, 11, 26))
    x = client.provide(w.announce)
    truth = 3 * x
    rng = np.random.default_rng(8)
    noise = np.concatenate([run_day(w, [x, x, x], rng) - truth for _ in range(110)])
    stated = noise_std(dataclasses.asdict(spec), w.announce.n)
    assert stated == pytest.approx(spec.noise_sigma * np.sqrt(12 / (12 - spec.t)))
    assert noise.var() == pytest.approx(stated**2, rel=0.05)
    assert abs(noise.mean()) < 4 * stated / np.sqrt(noise.size)
    assert np.abs(noise).max() <= spec.noise_headroom


# --- the service counts what it saves ----------------------------------------------------------------------


def test_the_service_counts_detections_and_near_misses_by_local_hour(tmp_path):
    import subprocess

    from test_service import BAND, LOUD, MEDIUM, QUIET, cli, make_model, sound

    from assistant.audio import write_wav

    make_model(tmp_path / "model")
    audio = sound((3, QUIET), *[p for _ in range(3) for p in ((1, MEDIUM), (1.5, QUIET))], (1, LOUD), (2, QUIET),
                  seed=3)
    write_wav(tmp_path / "close.wav", audio)
    store_dir = tmp_path / "store"
    with Store(store_dir) as store:
        store.update_settings(near_miss_daily_quota=8, near_miss_band=BAND)
    out = subprocess.run(cli("--input", tmp_path / "close.wav", "--store", store_dir, "--model", tmp_path / "model"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with Store(store_dir) as store:
        days = {d for (d,) in store._q("SELECT DISTINCT day FROM analytics_counts")}
        assert len(days) == 1  # the run's local day
        counts = store.event_counts(days.pop())
    hours = lambda family: sum(n for e, n in counts.items() if e.startswith(f"{family}.hour_"))  # noqa: E731
    assert counts["detection.accepted"] == hours("detection") == 1
    assert counts["near_miss.saved"] == hours("near_miss") == 3


# --- the TUI counts the keys the owner uses ----------------------------------------------------------------


def test_tui_label_and_undo_keys_are_counted_for_the_day(tmp_path):
    from test_tui import drive, make_app, seed

    with Store(tmp_path / "store", clock=lambda: NOON) as store:
        seed(store, 3)
        app = make_app(store)

        async def scenario(pilot):
            await pilot.press("y", "n", "n", "z")

        drive(app, scenario)
        assert store.event_counts(DAY) == {"tui.key.y": 1, "tui.key.n": 2, "tui.key.z": 1, "label.true_accept": 1,
                                           "label.false_accept": 2, "label.undo": 1}
