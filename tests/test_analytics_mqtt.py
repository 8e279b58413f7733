"""A day's analytics aggregation over a real Mosquitto (issue 8): the coordinator and five clerks as OS
processes (tests/cluster.py), four devices in this process, each an sda ParticipantClient answering from its
own SQLite store through AnalyticsClient. Three owners opted in, one did not. Then `sda analytics report`
reads the revealed day back, with the counters' names, from the coordinator's store alone."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys

import numpy as np
import pytest
from cluster import Cluster

from assistant.analytics import count_many, day_counts
from assistant.analytics.coordinate import AnalyticsConfig, analytics_spec
from assistant.analytics.participate import AnalyticsClient
from assistant.analytics.registry import INDEX, REGISTRY
from assistant.store import Store
from sda import crypto
from sda.protocol.participant import ParticipantPolicy
from sda.services.participant import ParticipantClient, ParticipantConfig
from sda.services.report import noise_std

CLERKS = 5
COUNTS = [
    {"detection.accepted": 12, "label.false_accept": 2, "tui.key.y": 5, "uptime.hours_18_24": 1},
    {"detection.accepted": 900, "label.missed_wake_word": 1, "error.audio_overrun": 3},  # 900: clipped to 200
    {"detection.accepted": 3, "near_miss.saved": 4, "tui.key.q": 1, "uptime.hours_8_12": 1},
    {"detection.accepted": 40, "label.false_accept": 9},  # the owner who opted out
]
OPTED_IN = [True, True, True, False]
YESTERDAY_NOON = dt.datetime.combine(dt.date.today() - dt.timedelta(days=1), dt.time(12)).timestamp()


@pytest.fixture
def small_cluster(tmp_path):
    c = Cluster(tmp_path, clerks=CLERKS, devices=len(COUNTS))
    try:
        yield c
    finally:
        c.close()


def start_device(c: Cluster, i: int) -> tuple[ParticipantClient, AnalyticsClient]:
    name = c.device_names[i]
    store = Store(c.tmp / f"{name}-store")
    store.update_settings(analytics_opt_in=OPTED_IN[i])
    count_many(store, COUNTS[i], time_s=YESTERDAY_NOON)
    analytics = AnalyticsClient(store)
    config = ParticipantConfig(name, c.broker_config(name), "coordinator", c.coordinator_key,
                               ParticipantPolicy(min_participants=3))
    client = analytics.participant_client(config, crypto.Identity.generate())
    client.start()
    return client, analytics


def test_a_day_over_mosquitto_is_the_clipped_truth_plus_clerk_noise(small_cluster: Cluster, tmp_path):
    c = small_cluster
    day = dt.date.fromtimestamp(YESTERDAY_NOON).isoformat()  # a device sends a day once it is over
    c.start_coordinator()
    for name in c.clerk_names:
        c.start_clerk(name)
    devices = [start_device(c, i) for i in range(len(COUNTS))]
    try:
        c.wait_registered(clerks=CLERKS, devices=len(COUNTS))
        spec = analytics_spec(day, AnalyticsConfig(epsilon=1.0, committee_size=CLERKS, min_participants=3,
                                                   max_participants=100, collect_s=10, results_s=30))
        assert c.store.create_aggregation(spec.aggregation_id, dataclasses.asdict(spec))
        row = c.wait_state(spec.aggregation_id, ("revealed", "failed"), timeout=120)
        assert row.state == "revealed", row.error
        truth = sum(day_counts(a.store, day) for (_, a), yes in zip(devices, OPTED_IN, strict=True) if yes)
        sent = {cl.config.device_id for cl, _ in devices if spec.aggregation_id in cl.sent}
    finally:
        for cl, a in devices:
            cl.stop()
            a.store.close()

    # The opted-out device sent nothing: no participation of it reached the coordinator.
    assert sent == {"dev0", "dev1", "dev2"}
    stored = {d for d, *_ in c.store.participations(spec.aggregation_id)}
    assert "dev3" not in stored and {"dev0", "dev1", "dev2"} <= stored
    assert "not opted in" in devices[3][1].refused[spec.aggregation_id]
    assert row.result["participants"] == 3 and row.result["noise_participants"] == CLERKS
    assert truth[INDEX["detection.accepted"]] == 12 + REGISTRY[INDEX["detection.accepted"]].max_count + 3

    # Within the stated noise: never beyond the headroom, and within 6 std of the clipped truth everywhere.
    noise = np.array(row.result["values"]) - truth
    std = noise_std(row.spec, CLERKS)
    assert np.abs(noise).max() <= spec.noise_headroom
    assert np.abs(noise).max() < 6 * std
    assert np.count_nonzero(noise) > len(REGISTRY) // 2  # the noise is there

    # `sda analytics report` from the coordinator's state alone: names, values, the std, and a chart.
    chart = tmp_path / "day.png"
    out = subprocess.run([sys.executable, "-m", "sda.cli", "analytics", "report", "--day", day, "--state",
                          str(c.state), "--chart", str(chart)], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert f"analytics.{day}: 3 devices" in lines[0] and "-DP per device" in lines[0]
    detections = next(line for line in lines if line.startswith("detection.accepted "))
    value, shown_std = (float(v) for v in detections.split()[1:3])
    assert value == pytest.approx(row.result["values"][INDEX["detection.accepted"]], abs=0.06)
    assert shown_std == pytest.approx(std, abs=0.06)
    assert sum(1 for line in lines if line.split(" ")[0] in INDEX) == len(REGISTRY)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_report_of_a_day_never_revealed_is_a_clear_error(small_cluster: Cluster):
    c = small_cluster
    c.store  # creates the coordinator's database  # noqa: B018
    out = subprocess.run([sys.executable, "-m", "sda.cli", "analytics", "report", "--day", "2026-01-01",
                          "--state", str(c.state)], capture_output=True, text=True)
    assert out.returncode == 1 and "no aggregation 'analytics.2026-01-01'" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "sda.cli", "analytics", "report", "--day", "26/11",
                          "--state", str(c.state)], capture_output=True, text=True)
    assert bad.returncode == 1 and "YYYY-MM-DD" in bad.stderr
