"""The wiring of private analytics (issue 8): `assistant analytics status|opt-in|opt-out|show` over a real
store; the coordinator's "which day is due" schedule; which connection `assistant run` starts for the owner's
opt-ins; the usage counters of the service, releases and rounds; and, over a real Mosquitto, `assistant
coordinator --analytics` requesting yesterday at start-up, answered by two analytics-only `assistant run`
devices while a third, opted out of both, never connects."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time

import numpy as np
from cluster import Cluster, start_inprocess_clerk
from test_learning_cli import shut_down, wait_for
from test_learning_round import direction, make_model, shipped_head, validation_set

from assistant.analytics import count_many
from assistant.analytics.counters import count_quietly
from assistant.analytics.registry import REGISTRY
from assistant.analytics.schedule import due_day
from assistant.cli import main
from assistant.learning.device import connection_for
from assistant.store import Store
from sda.services.keys import Credentials
from sda.services.report import analytics_id

YESTERDAY = dt.date.today() - dt.timedelta(days=1)
YESTERDAY_NOON = dt.datetime.combine(YESTERDAY, dt.time(12)).timestamp()


# --- pure decisions ---------------------------------------------------------------------------------------


def test_due_day_is_yesterday_once_the_grace_has_passed_and_only_once():
    at = dt.datetime(2026, 11, 26, 0, 9, 59)
    assert due_day(at, 600, set()) is None  # within the grace after midnight
    assert due_day(at.replace(minute=10, second=0), 600, set()) == "2026-11-25"
    assert due_day(dt.datetime(2026, 11, 26, 15, 0), 600, set()) == "2026-11-25"  # a start-up late in the day
    assert due_day(dt.datetime(2026, 11, 26, 15, 0), 600, {"2026-11-25"}) is None  # never two for one day
    assert due_day(dt.datetime(2026, 3, 1, 0, 0), 0, set()) == "2026-02-28"  # across a month, no grace
    assert due_day(dt.datetime(2027, 1, 1, 23, 59), 600, {"2026-12-30"}) == "2026-12-31"


def test_run_connects_only_for_what_the_owner_opted_in_to():
    assert connection_for(learning_opt_in=True, analytics_opt_in=True) == "learning"  # one client answers both
    assert connection_for(learning_opt_in=True, analytics_opt_in=False) == "learning"
    assert connection_for(learning_opt_in=False, analytics_opt_in=True) == "analytics"
    assert connection_for(learning_opt_in=False, analytics_opt_in=False) is None


# --- the owner's commands ---------------------------------------------------------------------------------


def test_analytics_status_opt_in_show_and_errors_over_a_real_store(tmp_path, capsys):
    store_dir = tmp_path / "store"
    assert main(["analytics", "status", "--store", str(store_dir)]) == 1
    assert "no store in" in capsys.readouterr().err
    with Store(store_dir) as store:
        count_many(store, {"detection.accepted": 250, "tui.key.y": 3}, time_s=YESTERDAY_NOON)

    assert main(["analytics", "status", "--store", str(store_dir), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["opted_in"] is False and st["max_day_epsilon"] == 2.0 and st["events"] == len(REGISTRY)
    assert st["last_day"] == YESTERDAY.isoformat() and st["last_day_total"] == 200 + 3  # clipped as sent

    assert main(["analytics", "opt-in", "--store", str(store_dir)]) == 0
    assert "opted in" in capsys.readouterr().out
    with Store(store_dir) as store:
        assert store.settings().analytics_opt_in and not store.settings().learning_opt_in
    assert main(["analytics", "status", "--store", str(store_dir)]) == 0
    text = capsys.readouterr().out
    assert "opted in" in text and "epsilon 2" in text and "not opted in" not in text

    assert main(["analytics", "show", "--store", str(store_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{YESTERDAY.isoformat()}: 203 events in 2 of {len(REGISTRY)} counters")
    detections = next(line for line in lines if line.startswith("detection.accepted"))
    assert detections.split()[1:3] == ["200", "200"] and "counted 250, clipped" in detections
    assert next(line for line in lines if line.startswith("tui.key.y")).split()[1:3] == ["3", "100"]

    assert main(["analytics", "show", "--day", YESTERDAY.isoformat(), "--store", str(store_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["opted_in"] and [c["name"] for c in shown["counters"]] == [k.name for k in REGISTRY]
    by_name = {c["name"]: c for c in shown["counters"]}
    assert by_name["detection.accepted"] == {"name": "detection.accepted", "counted": 250, "sent": 200,
                                             "max_count": 200}
    assert main(["analytics", "show", "--day", "2020-01-01", "--store", str(store_dir), "--json"]) == 0
    assert all(c["sent"] == 0 for c in json.loads(capsys.readouterr().out)["counters"])

    assert main(["analytics", "show", "--day", "26/11", "--store", str(store_dir)]) == 1
    assert "YYYY-MM-DD" in capsys.readouterr().err
    assert main(["analytics", "status", "--day", "2026-01-01", "--store", str(store_dir)]) == 1
    assert "--day goes with show" in capsys.readouterr().err
    assert main(["analytics", "opt-out", "--store", str(store_dir)]) == 0
    assert "opted out" in capsys.readouterr().out
    assert main(["analytics", "show", "--store", str(store_dir)]) == 0
    assert "not sent: not opted in" in capsys.readouterr().out


def test_a_counter_never_breaks_the_code_path_it_sits_in(tmp_path):
    store = Store(tmp_path / "store")
    count_quietly(store, "service.started", time_s=YESTERDAY_NOON)
    count_quietly(store, "no.such.event")  # a typo: dropped, not raised
    assert store.event_counts(YESTERDAY.isoformat()) == {"service.started": 1}
    store.close()
    count_quietly(store, "service.started")  # a closed store: dropped, not raised


# --- over a real Mosquitto ----------------------------------------------------------------------------------


def test_coordinator_analytics_requests_yesterday_and_analytics_only_devices_answer(tmp_path, capsys):
    u = direction()
    shipped = tmp_path / "shipped"
    sha = make_model(shipped, shipped_head(u))
    validation_set(u, sha).save(tmp_path / "validation.npz")
    c = Cluster(tmp_path, clerks=3, devices=3)
    opted_in = {"dev0": True, "dev1": True, "dev2": False}
    counts = {"dev0": {"detection.accepted": 7, "tui.key.y": 2}, "dev1": {"detection.accepted": 5},
              "dev2": {"detection.accepted": 40}}
    clerks, devices = [], {}
    try:
        clerks = [start_inprocess_clerk(c, name) for name in c.clerk_names]
        for name in c.device_names:
            store_dir = tmp_path / name / "store"
            with Store(store_dir) as store:
                count_many(store, counts[name], time_s=YESTERDAY_NOON)
            if opted_in[name]:  # analytics only: learning stays off
                assert main(["analytics", "opt-in", "--store", str(store_dir)]) == 0
            cred = tmp_path / f"{name}.yaml"
            Credentials(name, "device", c.broker_config(name), "coordinator", c.coordinator_key,
                        c.identity.public().box_key).save(cred)
            log = tmp_path / f"{name}.log"
            with open(log, "wb") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--input", "-", "--store",
                                         str(store_dir), "--model", str(shipped), "--credentials", str(cred),
                                         "--min-crowd", "2"],
                                        stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.STDOUT)
            devices[name] = (proc, store_dir, log)
        for name, (_, _, log) in devices.items():
            text = "answers the daily analytics announces" if opted_in[name] else "no connection"
            wait_for(lambda log=log, text=text: text in log.read_text(), 30, f"{name} to start", log.read_text)

        c._spawn("coordinator", ["-m", "assistant.cli", "coordinator", "--state", str(c.state), "--broker",
                                 c.url("coordinator"), "--model", str(shipped), "--validation",
                                 str(tmp_path / "validation.npz"), "--every", "3600", "--grant-stake", "100",
                                 "--analytics", "--analytics-grace", "0", "--analytics-min-participants", "2",
                                 "--analytics-committee-size", "3", "--analytics-collect-seconds", "8"])
        day = YESTERDAY.isoformat()
        line = f"analytics {day}: revealed over 2 devices, (epsilon, delta) = ("
        wait_for(lambda: line in c.logs["coordinator"].read_text(), 60, "the day's reveal",
                 lambda: c.log_tail("coordinator"))
        c.kill("coordinator", signal.SIGTERM)
        out = c.logs["coordinator"].read_text()
        assert out.count(f"analytics {day}: aggregation requested") == 1  # once, however long it ran

        row = c.store.aggregation(analytics_id(day))
        assert row.state == "revealed" and row.result["participants"] == 2
        sent = {d for d, *_ in c.store.participations(analytics_id(day))}
        assert sent - set(c.clerk_names) == {"dev0", "dev1"}  # the clerks take part as noise participants
        assert "dev2" not in {p.party_id for p in c.store.parties("device")}  # it never even connected
        detections = np.array(row.result["values"])[[k.name for k in REGISTRY].index("detection.accepted")]
        assert abs(detections - 12) < 6 * 3 * row.spec["noise_sigma"]  # the two opted-in devices' 7 + 5

        for proc, _, log in devices.values():
            proc.stdin.close()
            assert proc.wait(20) == 0, log.read_text()
        # each run counted its start in today's counters
        for _, store_dir, _ in devices.values():
            with Store(store_dir) as store:
                assert store.event_counts(dt.date.today().isoformat()).get("service.started") == 1

        # a restarted coordinator does not ask for the same day again
        c._spawn("coordinator2", ["-m", "assistant.cli", "coordinator", "--state", str(c.state), "--broker",
                                  c.url("coordinator"), "--model", str(shipped), "--validation",
                                  str(tmp_path / "validation.npz"), "--every", "3600", "--analytics",
                                  "--analytics-grace", "0"])
        c.wait_log("coordinator2", "coordinator running")
        time.sleep(7)  # past the settle time: the schedule has looked at yesterday
        c.kill("coordinator2", signal.SIGTERM)
        assert "aggregation requested" not in c.logs["coordinator2"].read_text()
        assert len([r for r in c.store.aggregations() if r.aggregation_id == analytics_id(day)]) == 1
    finally:
        shut_down(devices, clerks, c)
