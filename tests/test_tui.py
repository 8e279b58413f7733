"""The TUI on a real SQLite store in a temporary directory, driven by Textual's Pilot (keys in, rows in
SQLite out), snapshots of its screens at 80x24 and 120x40, and the real `assistant tui` in tmux."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
from test_kws import energy_backbone
from test_service import LOUD, QUIET, cli, make_model, n_frames, sound, summary
from textual.widgets import Checkbox, Input, Static

from assistant.audio import read_audio, write_wav
from assistant.control import ControlClient
from assistant.errors import ControlError
from assistant.kws.head import Head
from assistant.store import Label, LearningRound, RoundStatus, Store
from tui.app import AssistantApp
from tui.review.table import QueueTable
from tui.wording import LABEL_KEYS, LABEL_WORDS

T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC
NO_SERVICE = Path("/nonexistent/assistant/control.sock")  # fixed, so the snapshots do not depend on tmp_path
EMB = np.ones((16, 4), np.float32)


def seed(store: Store, n: int, clip_s: float = 0.5) -> list[int]:
    """n rows a minute apart, every fifth a near miss; ids oldest first."""
    rng = np.random.default_rng(0)
    ids = []
    for k in range(n):
        audio = (rng.standard_normal(int(16_000 * clip_s)) * 2000).astype(np.int16)
        if k % 5 == 3:
            ids.append(store.record_near_miss(audio, 0.3 + 0.01 * (k % 10), 0.5, "kws-1.0", EMB, time_s=T0 + 60 * k))
        else:
            ids.append(store.record_detection(audio, 0.5 + 0.04 * (k % 10), "kws-1.0", EMB, time_s=T0 + 60 * k))
    return ids


def sqlite_labels(root: Path) -> dict[int, str]:
    """The labels table as another process sees it."""
    db = sqlite3.connect(root / "store.db")
    try:
        return dict(db.execute("SELECT detection_id, label FROM labels"))
    finally:
        db.close()


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store", clock=lambda: T0 + 86_400) as s:
        yield s


def make_app(store: Store, **kw) -> AssistantApp:
    kw.setdefault("control_path", NO_SERVICE)
    return AssistantApp(store, tz=UTC, poll_s=0, **kw)


def drive(app: AssistantApp, scenario, size=(80, 24)) -> None:
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await scenario(pilot)

    asyncio.run(main())


async def settle(pilot) -> None:
    """Let the workers finish and their messages land."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def message(app: AssistantApp) -> str:
    return str(app.screen.query_one("#message", Static).content)


def table(app: AssistantApp) -> QueueTable:
    return app.screen.query_one(QueueTable)


# --- labelling ----------------------------------------------------------------------------------------


def test_single_keys_label_the_row_under_the_cursor_and_move_on(store):
    ids = seed(store, 6)
    newest = ids[::-1]
    app = make_app(store)

    async def scenario(pilot):
        assert table(app).current_id() == newest[0]
        await pilot.press("y", "n", "m", "u")
        assert sqlite_labels(store.root) == {newest[0]: "true_accept", newest[1]: "false_accept",
                                             newest[2]: "missed_wake_word", newest[3]: "unsure"}
        assert table(app).current_id() == newest[4]
        assert "unsure" in message(app)
        assert app.screen.sub_title.startswith("2 unlabelled of 6")
        await pilot.press("up", "y")  # relabelling replaces
        assert sqlite_labels(store.root)[newest[3]] == "true_accept"

    drive(app, scenario)


def test_undo_takes_back_the_last_label_with_z_and_ctrl_z(store):
    ids = seed(store, 3)
    newest = ids[::-1]
    app = make_app(store)

    async def scenario(pilot):
        await pilot.press("y", "n")
        await pilot.press("z")
        assert sqlite_labels(store.root) == {newest[0]: "true_accept"}
        assert table(app).current_id() == newest[1]  # the cursor goes back to the row undone
        assert "undid" in message(app)
        await pilot.press("ctrl+z")
        assert sqlite_labels(store.root) == {}
        await pilot.press("z")
        assert message(app) == "nothing to undo"

    drive(app, scenario)


def test_bulk_labels_picked_rows_in_one_undoable_step(store):
    ids = seed(store, 8)
    newest = ids[::-1]
    app = make_app(store)

    async def scenario(pilot):
        await pilot.press("space", "down", "space")  # space picks and moves down: rows 0 and 2
        assert table(app).picked == {newest[0], newest[2]}
        await pilot.press("n")
        assert sqlite_labels(store.root) == {newest[0]: "false_accept", newest[2]: "false_accept"}
        assert table(app).picked == set() and "labelled 2 rows false alarm" in message(app)
        await pilot.press("z")  # one undo takes back the whole bulk label
        assert sqlite_labels(store.root) == {}

        await pilot.press("space", "escape")  # esc unpicks
        assert table(app).picked == set()
        await pilot.press("y")  # a single label on the row under the cursor
        await pilot.press("a", "m")  # every loaded unlabelled row, as missed
        labels = sqlite_labels(store.root)
        assert len(labels) == 8 and sum(v == "missed_wake_word" for v in labels.values()) == 7

    drive(app, scenario)


def test_the_filter_switches_between_unlabelled_and_all_rows(store):
    ids = seed(store, 6)
    store.label(ids[:2], Label.TRUE_ACCEPT)
    app = make_app(store)

    async def scenario(pilot):
        assert set(table(app).loaded_ids) == set(ids[2:])
        await pilot.press("f")
        assert table(app).loaded_ids == ids[::-1] and "showing all rows" in app.screen.sub_title
        await pilot.press("f")
        assert table(app).loaded_ids == ids[2:][::-1]
        await pilot.press("y")  # a labelled row stays in view until a reload, so it can be seen and undone
        assert ids[5] in table(app).loaded_ids
        await pilot.press("r")
        assert table(app).loaded_ids == ids[2:5][::-1]

    drive(app, scenario)


def test_the_queue_loads_a_page_at_a_time_as_the_cursor_goes_down(store):
    ids = seed(store, 35, clip_s=0.05)
    app = make_app(store, page_size=10)

    async def scenario(pilot):
        assert table(app).row_count == 10
        await pilot.press("y", "y", "y")  # labelled rows must not make the next page skip any
        await pilot.press(*["down"] * 8)
        assert table(app).row_count == 20
        await pilot.press("ctrl+end")
        await pilot.press("ctrl+end")
        await pilot.press("ctrl+end")
        assert table(app).loaded_ids == ids[::-1] and table(app).exhausted

    drive(app, scenario)


# --- the detail pane, playing, "you missed me" -------------------------------------------------------------


def write_model(directory: Path, context: int = 12, embed: int = 4, window: int = 3) -> None:
    """A tiny model directory with a card: an energy backbone (mean log-mel energy per frame) and a head
    that scores loud audio high. Plumbing, not a wake-word model."""
    directory.mkdir(parents=True)
    energy_backbone(directory / "backbone.onnx", context, embed)
    head = Head(np.full((window * embed, 1), 1.0), np.zeros(1), np.array([0.5]), np.array(-20.0), window, embed)
    head.save(directory / "head.npz")
    files = {n: {"sha256": hashlib.sha256((directory / n).read_bytes()).hexdigest()}
             for n in ("backbone.onnx", "head.npz")}
    (directory / "card.json").write_text(json.dumps({"wakeword": "hey test", "files": files, "threshold": 0.5}))


def test_the_detail_pane_plots_the_clip_rescored_by_the_model(store, tmp_path):
    quiet = (np.random.default_rng(1).standard_normal(16_000) * 30).astype(np.int16)
    loud = (np.random.default_rng(2).standard_normal(8_000) * 12_000).astype(np.int16)
    i = store.record_detection(np.concatenate([quiet, loud, quiet]), 0.97, "kws-1.0", EMB, time_s=T0)
    write_model(tmp_path / "model")
    app = make_app(store, model_dir=tmp_path / "model")

    async def scenario(pilot):
        await settle(pilot)
        pane = app.screen.query_one("#detail")
        text = str(pane.content)
        assert pane.curve is not None and pane.curve.detection_id == i
        times, scores = np.array(pane.curve.times_s), np.array(pane.curve.scores)
        assert scores[(times > 1.2) & (times < 1.5)].max() > 0.9 > scores[times < 0.9].max()  # the loud part
        assert "1.0 ▕" in text and "0.0 ▕" in text and "clip rescored by model" in text
        assert "saved by kws-1.0" in text  # honest: this model is not the one that scored the row

    drive(app, scenario)


def test_without_a_model_the_detail_pane_says_it_has_only_the_stored_score(store):
    seed(store, 1)
    app = make_app(store)

    async def scenario(pilot):
        await settle(pilot)
        text = str(app.screen.query_one("#detail").content)
        assert "score 0.50" in text and "no model given" in text and "only the stored score" in text

    drive(app, scenario)


def test_play_without_a_sound_card_says_why_and_keeps_running(store):
    ids = seed(store, 1)
    app = make_app(store)

    async def scenario(pilot):
        await pilot.press("p")
        await settle(pilot)
        text = message(app)
        if text != f"played #{ids[0]}":  # CI has no sound card: then the reason must be on screen
            assert text.startswith("cannot play: ") and ("no audio output device" in text or "PortAudio" in text)
            assert app.screen.query_one("#message").has_class("-error")
        await pilot.press("y")  # still labelling
        assert len(sqlite_labels(store.root)) == 1

    drive(app, scenario)


def test_missed_me_without_a_running_service_says_so(store, tmp_path):
    seed(store, 1)
    app = make_app(store, control_path=tmp_path / "control.sock")

    async def scenario(pilot):
        await pilot.press("exclamation_mark")
        await settle(pilot)
        text = message(app)
        assert text.startswith("not saved: nothing listens on") and "`assistant run`" in text
        assert store.count() == 1

    drive(app, scenario)


def test_missed_me_with_a_running_service_saves_the_last_seconds_and_selects_the_new_row(store, tmp_path):
    seed(store, 2)
    write_model(tmp_path / "model")
    write_wav(tmp_path / "quiet.wav", (np.random.default_rng(3).standard_normal(16_000 * 60) * 30).astype(np.int16))
    socket_path = tmp_path / "control.sock"
    service = subprocess.Popen(
        [str(Path(sys.executable).with_name("assistant")), "run", "--input", str(tmp_path / "quiet.wav"),
         "--realtime", "--store", str(store.root), "--control", str(socket_path), "--model", str(tmp_path / "model")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # until the service has heard a second and a half
            try:
                if ControlClient(socket_path).status()["frames"] >= 20:
                    break
            except ControlError:
                pass
            assert time.monotonic() < deadline and service.poll() is None, "the service did not start"
            time.sleep(0.1)
        store.update_settings(capture_seconds=1.5)
        app = make_app(store, control_path=socket_path)

        async def scenario(pilot):
            await pilot.press("exclamation_mark")
            await settle(pilot)
            assert store.count() == 3, message(app)
            new = store.review_queue(limit=1)[0]
            assert new.kind == "captured_miss" and new.label is None
            assert len(read_audio(store.clip_path(new))) == 24_000  # the last 1.5 s, as set
            assert table(app).current_id() == new.id
            assert message(app).startswith(f"saved the last 1.5 s as #{new.id}")
            await pilot.press("m")
            assert sqlite_labels(store.root) == {new.id: "missed_wake_word"}
            await pilot.press("2")  # the status view asks the service too
            await settle(pilot)
            model = str(app.screen.query_one("#model", Static).content)
            assert f"model {new.model_version}  wake word hey test  threshold 0.50" in model
            assert "listening to file" in model and "misses you reported 1" in model

        drive(app, scenario)
    finally:
        service.terminate()
        service.wait(30)


def test_the_service_writes_detections_while_the_tui_labels(tmp_path):
    """The real `assistant run` saves a detection every ~25 ms while the app, on the same store, reloads and
    labels rows as they arrive, until the service ends: no write lost, every label in SQLite, nobody told
    "database is locked"."""
    make_model(tmp_path / "model")
    bursts, pace_s = 240, 0.025
    lead, burst = sound((1, QUIET), seed=6), sound((0.5, LOUD), (2.0, QUIET), seed=7)  # one detection a burst
    root = tmp_path / "store"
    applied: dict[int, str] = {}  # what the UI labelled, as the labels table should hold it
    feed_error: list[BaseException] = []
    with Store(root) as store:  # the wall clock: labelled_at and the service's row times compare
        out, err = (tmp_path / "stdout", tmp_path / "stderr")
        with out.open("wb") as o, err.open("wb") as e:  # files, not pipes: nothing blocks the service
            # --no-verifier: the labels this test gives would train the personal verifier, which may then turn
            # detections into near misses; here every burst must be a detection
            proc = subprocess.Popen(cli("--input", "-", "--store", root, "--model", tmp_path / "model",
                                        "--no-verifier"), stdin=subprocess.PIPE, stdout=o, stderr=e)

        def feed() -> None:  # ~60x real time: the writes come faster than a person labels
            try:
                proc.stdin.write(lead.tobytes())
                for _ in range(bursts):
                    proc.stdin.write(burst.tobytes())
                    proc.stdin.flush()
                    time.sleep(pace_s)
            except BaseException as exc:
                feed_error.append(exc)
            finally:
                with contextlib.suppress(OSError):  # a broken pipe is already in feed_error
                    proc.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        app = make_app(store)

        async def scenario(pilot):
            deadline, keys = time.monotonic() + 240, "ynmu"  # a hang guard, not a speed check
            while proc.poll() is None:  # label for as long as the service writes
                assert time.monotonic() < deadline, "the service did not finish"
                await pilot.press("r")
                queue = table(app)
                for _ in range(10):  # then reload, to see the newer rows
                    i = queue.current_id()
                    if i is None or queue.label_of(i) is not None:  # no rows yet, or the cursor is on the last
                        await pilot.pause(0.01)
                        break
                    key = keys[len(applied) % 4]
                    await pilot.press(key)
                    label = LABEL_KEYS[key]
                    assert message(app) == f"#{i} {LABEL_WORDS[label]}; z undoes"  # not "not labelled: ..."
                    assert i not in applied  # each press labels a new row: presses == rows labelled
                    applied[i] = label.value

        try:
            drive(app, scenario)  # an exception in the app (sqlite3's "database is locked") is raised here
        finally:
            feeder.join(30)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    stderr = err.read_text()
    assert not feed_error and proc.returncode == 0, stderr
    assert "locked" not in stderr and "failed" not in stderr
    frames, detections, near_misses = summary(out.read_text())
    assert (frames, detections) == (n_frames(np.concatenate([lead, *[burst] * bursts])), bursts)
    db = sqlite3.connect(root / "store.db")
    try:
        (rows,) = db.execute("SELECT COUNT(*) FROM detections").fetchone()
        # labels committed before the service processed its last detection; rows saved after the first label
        (early,) = db.execute("SELECT COUNT(*) FROM labels WHERE labelled_at < (SELECT MAX(time) FROM detections)"
                              ).fetchone()
        (late,) = db.execute("SELECT COUNT(*) FROM detections WHERE time > (SELECT MIN(labelled_at) FROM labels)"
                             ).fetchone()
    finally:
        db.close()
    assert rows == detections + near_misses  # no write lost
    assert sqlite_labels(root) == applied  # every label the UI applied, and nothing else
    assert early >= 10 and late >= 50, (early, late)  # the two processes really wrote at the same time


# --- status and settings ---------------------------------------------------------------------------------


def test_status_shows_accuracy_privacy_budget_and_clerk_from_the_store(store):
    ids = seed(store, 5)
    store.label(ids[:3], Label.TRUE_ACCEPT)
    store.label(ids[3], Label.FALSE_ACCEPT)
    store.label(ids[4], Label.MISSED_WAKE_WORD)
    store.record_learning_round(LearningRound("round-7", T0 + 100, 1.25, 1e-6, RoundStatus.COMPLETED, 5))
    store.set_clerk(True, 500, time_s=T0)
    store.record_clerk_job("agg-1", 12, time_s=T0 + 200)
    app = make_app(store)

    async def scenario(pilot):
        await pilot.press("2")
        await settle(pilot)
        model, learning, clerk = (str(app.screen.query_one(f"#{n}", Static).content)
                                  for n in ("model", "learning", "clerk"))
        assert "right 3  false alarm 1  missed 1" in model and "precision 75.0%" in model
        assert "misses you reported 1" in model and "service not running" in model and "kws-1.0" in model
        assert "ε 1.25 of 8" in learning and "round-7" in learning
        assert "opted in" in clerk and "stake 500" in clerk and "1 jobs" in clerk and "+12 tokens" in clerk
        await pilot.press("escape")
        assert app.current_mode == "review"

    drive(app, scenario)


def test_settings_are_saved_through_the_store_and_bad_values_named_inline(store):
    app = make_app(store)

    async def scenario(pilot):
        await pilot.press("3")
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#epsilon_budget", Input).value == "8"
        await pilot.press("space")  # the first field has focus: learning opt-in
        assert screen.query_one("#learning_opt_in", Checkbox).value
        epsilon = screen.query_one("#epsilon_budget", Input)
        epsilon.focus()
        epsilon.value = ""
        await pilot.press("3", ".", "5", "enter")
        await pilot.pause()
        s = store.settings()
        assert (s.learning_opt_in, s.epsilon_budget) == (True, 3.5)
        assert "saved" in str(screen.query_one("#saved", Static).content)

        screen.query_one("#storage_cap_bytes", Input).value = "64"
        capture = screen.query_one("#capture_seconds", Input)
        capture.value = "-2"
        await pilot.press("ctrl+s")
        await pilot.pause()
        error = screen.query_one("#capture_seconds-error", Static)
        assert error.display and "capture_seconds" in str(error.content)
        assert store.settings().storage_cap_bytes == 256 * 2**20  # nothing saved while a field is bad
        capture.value = "6"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not error.display
        assert (store.settings().storage_cap_bytes, store.settings().capture_seconds) == (64 * 2**20, 6)

    drive(app, scenario)


# --- snapshots ---------------------------------------------------------------------------------------------


def snapshot_store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store", clock=lambda: T0 + 86_400)
    ids = seed(store, 30, clip_s=0.05)
    store.label(ids[-3], Label.TRUE_ACCEPT)
    store.label(ids[-5], Label.FALSE_ACCEPT)
    store.record_learning_round(LearningRound("round-1", T0 + 3600, 0.5, 1e-6, RoundStatus.COMPLETED, 12))
    store.record_learning_round(LearningRound("round-2", T0 + 7200, 0.0, 0.0, RoundStatus.REFUSED, 14))
    store.set_clerk(True, 250, time_s=T0)
    store.record_clerk_job("agg-0001", 10, time_s=T0 + 4000)
    store.record_clerk_job("agg-0002", -25, time_s=T0 + 8000)
    return store


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("keys", [(), ("f", "down", "down", "space"), ("2",), ("3",)],
                         ids=["review", "review-all-picked", "status", "settings"])
def test_screens_look_as_they_did(snap_compare, tmp_path, size, keys):
    store = snapshot_store(tmp_path)

    async def run_before(pilot):
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
        await settle(pilot)

    try:
        assert snap_compare(make_app(store), terminal_size=size, run_before=run_before)
    finally:
        store.close()


# --- the real thing, in a terminal -------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make system-deps installs it)")
def test_assistant_tui_runs_in_an_80x24_terminal_and_quits_on_q(tmp_path):
    root = tmp_path / "store"
    with Store(root) as s:
        seed(s, 4, clip_s=0.05)
    assistant = Path(sys.executable).with_name("assistant")
    tmux = ["tmux", "-L", f"test-tui-{os.getpid()}"]
    command = (f"{assistant} tui --store {root} --model {tmp_path / 'no-model'}; echo TUI-EXITED-$?; sleep 30")
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", command],
                   check=True)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "tui"], capture_output=True, text=True).stdout

    def wait_for(*texts: str, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            shown = screen()
            if all(t in shown for t in texts):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{texts!r} never all appeared; the screen:\n{screen()}")

    try:
        # the queue: its counts, its rows (newest first: #4 is the near miss), the keys
        shown = wait_for("4 unlabelled of 4", "      4  2025-", "near miss", "detection", "ynmu label", "q quit")
        lines = shown.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        subprocess.run([*tmux, "send-keys", "-t", "tui", "y"], check=True)
        wait_for("3 unlabelled of 4")
        assert len(sqlite_labels(root)) == 1
        subprocess.run([*tmux, "send-keys", "-t", "tui", "q"], check=True)
        wait_for("TUI-EXITED-0")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def test_the_start_benchmark_prints_one_json_object():
    bench = Path(__file__).resolve().parents[1] / "bench" / "tui_start.py"
    proc = subprocess.run([sys.executable, str(bench), "--json", "--rows", "300", "--runs", "1", "--labels", "5"],
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rows"] == 300 and result["labels_timed"] == 5 and result["embeddings_shape"] == [16, 64]
    assert 0 < result["first_paint_pilot_s"] < 10 and result["label_roundtrip_pilot_ms"] > 0
    if shutil.which("tmux"):
        assert 0 < result["first_paint_s"] < 10 and result["label_roundtrip_ms"] > 0
