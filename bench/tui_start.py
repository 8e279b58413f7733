"""Benchmark of `assistant tui` on a big device store: how soon the queue shows, and how long a label takes.

The store is seeded with ROWS detections (default 10,000), each with its embeddings (16 x 64 float32, the
shipped head's window), a score and a model version; clips are optional (--clips): without them each row
looks as it does once retention removed its clip, which the queue does not read anyway. Rows without clips
are inserted in one transaction (writing 10,000 fsynced clips through the store takes minutes); with
--clips every row goes through Store.record_detection with a 0.2 s clip.

  first_paint_s        the real `assistant tui --store DIR` in an 80x24 tmux pane, from spawn to the first
                       queue row on the terminal (the median of --runs; needs tmux)
  label_roundtrip_ms   the same process: `tmux send-keys y` to the label committed in SQLite, as another
                       connection reads it (median and p95 over --labels presses; includes running the tmux
                       client, so it is an upper bound)
  first_paint_pilot_s  the app in-process under Textual's Pilot, from start to the queue's first page
                       rendered (the median of --runs)
  label_roundtrip_pilot_ms  in-process: a key event handed to the app's driver to the row committed
  next_page_ms         loading one more page as the cursor nears the end of the loaded rows (median)

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

import numpy as np

from assistant.store import Store
from assistant.store.rows import encode_embeddings

T0 = 1_750_000_000.0
WINDOW, EMBED = 16, 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def seed(root: Path, rows: int, clips: bool) -> None:
    """`rows` detections a few seconds apart, newest last, every fifth a near miss."""
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((WINDOW, EMBED)).astype(np.float32)
    with Store(root) as store:
        if clips:
            audio = (rng.standard_normal(3200) * 1000).astype(np.int16)
            for k in range(rows):
                store.record_detection(audio, 0.5 + 0.5 * (k % 97) / 97, "kws-bench", emb, time_s=T0 + 7 * k)
            return
    blob, shape = encode_embeddings(emb)
    db = sqlite3.connect(root / "store.db")
    with db:
        db.executemany(
            "INSERT INTO detections (time, kind, score, model_version, clip, embeddings, embeddings_shape)"
            " VALUES (?, ?, ?, 'kws-bench', NULL, ?, ?)",
            [(T0 + 7 * k, "near_miss" if k % 5 == 3 else "detection", 0.5 + 0.5 * (k % 97) / 97, blob, shape)
             for k in range(rows)])
    db.close()


def real_process(root: Path, runs: int, labels: int) -> tuple[list[float], list[float]]:
    """The real `assistant tui` in an 80x24 tmux pane: seconds from spawn to the newest row's id on its
    screen, per run; and, in the last run, milliseconds from `tmux send-keys y` to the label committed in
    SQLite (read by another connection, polled every 0.5 ms), per press."""
    assistant = Path(sys.executable).with_name("assistant")
    with Store(root) as store:
        newest = store.review_queue(limit=1)[0]
    marker = f"{newest.id}  "
    paints, roundtrips = [], []
    reader = sqlite3.connect(root / "store.db")
    for run in range(runs):
        tmux = ["tmux", "-L", f"bench-tui-{os.getpid()}-{run}", "-f", "/dev/null"]  # a fresh server each run
        start = time.perf_counter()
        subprocess.run([*tmux, "new-session", "-d", "-s", "b", "-x", "80", "-y", "24",
                        f"{assistant} tui --store {root} --control {root}/none.sock --model {root}/no-model"],
                       check=True)
        try:
            while True:
                shown = subprocess.run([*tmux, "capture-pane", "-p", "-t", "b"], capture_output=True,
                                       text=True).stdout
                if marker in shown and "unlabelled of" in shown:
                    paints.append(time.perf_counter() - start)
                    break
                if time.perf_counter() - start > 30:
                    raise RuntimeError(f"the queue never showed; the screen:\n{shown}")
                time.sleep(0.005)
            for _ in range(labels if run == runs - 1 else 0):
                (before,) = reader.execute("SELECT COUNT(*) FROM labels").fetchone()
                t = time.perf_counter()
                subprocess.run([*tmux, "send-keys", "-t", "b", "y"], check=True)
                while reader.execute("SELECT COUNT(*) FROM labels").fetchone()[0] == before:
                    if time.perf_counter() - t > 10:
                        raise RuntimeError("a label never reached the store")
                    time.sleep(0.0005)
                roundtrips.append((time.perf_counter() - t) * 1000)
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
    reader.close()
    with Store(root) as store:  # leave the store as seeded for the in-process runs
        while store.undo_last_label():
            pass
    return paints, roundtrips


def pilot_measures(root: Path, runs: int, labels: int) -> dict:
    """In-process under Pilot: start to the first page rendered; a key event to its label committed; a
    next page."""
    from textual import events

    from tui.app import AssistantApp
    from tui.review.table import QueueTable

    paints, roundtrips, pages = [], [], []

    async def one_run(measure_labels: bool) -> None:
        with Store(root) as store:
            start = time.perf_counter()
            app = AssistantApp(store, root / "none.sock", None, tz=UTC, poll_s=0)
            async with app.run_test(size=(80, 24)) as pilot:
                while True:  # the first page in the table and drawn
                    try:
                        table = app.screen.query_one(QueueTable)
                    except Exception:  # the screen is not mounted yet
                        table = None
                    if table is not None and table.row_count and table.region.height:
                        break
                    await asyncio.sleep(0.001)
                await pilot.pause()
                paints.append(time.perf_counter() - start)
                if not measure_labels:
                    return
                reader = sqlite3.connect(root / "store.db")
                try:
                    for _ in range(labels):
                        expected = table.current_id()
                        t = time.perf_counter()
                        app._driver.send_message(events.Key("y", "y"))  # what a terminal's key press becomes
                        query = "SELECT 1 FROM labels WHERE detection_id = ?"
                        while reader.execute(query, (expected,)).fetchone() is None:
                            await asyncio.sleep(0.0002)
                        roundtrips.append((time.perf_counter() - t) * 1000)
                        await pilot.pause()  # let the screen settle before the next key
                finally:
                    reader.close()
                for _ in range(5):  # jump to the end of what is loaded: the next page loads
                    if table.exhausted:
                        break
                    before = table.row_count
                    t = time.perf_counter()
                    table.move_cursor(row=table.row_count - 1)
                    await pilot.pause()
                    if table.row_count > before:  # else that was the last page, and it was full
                        pages.append((time.perf_counter() - t) * 1000)

    for k in range(runs):
        asyncio.run(one_run(measure_labels=k == runs - 1))
    return {"paints": paints, "roundtrips": roundtrips, "pages": pages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--clips", action="store_true", help="write a 0.2 s clip per row through the store (slow)")
    p.add_argument("--runs", type=int, default=5, help="start-ups measured (the median is reported)")
    p.add_argument("--labels", type=int, default=200, help="labels timed")
    p.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-tui-"))
    try:
        root = tmp / "store"
        t = time.perf_counter()
        seed(root, args.rows, args.clips)
        log(f"seeded {args.rows} rows in {time.perf_counter() - t:.1f} s "
            f"({'with' if args.clips else 'without'} clips; embeddings {WINDOW}x{EMBED} float32)")
        real, real_rt = real_process(root, args.runs, args.labels) if shutil.which("tmux") else ([], [])
        if not real:
            log("tmux not found: the real-process figures are null (the Pilot ones are still measured)")
        m = pilot_measures(root, args.runs, args.labels)
        rt, real_rt = sorted(m["roundtrips"]), sorted(real_rt)

        def p95(xs: list[float]) -> float | None:
            return round(xs[int(0.95 * (len(xs) - 1))], 2) if xs else None
        result = {
            "rows": args.rows, "clips": args.clips, "embeddings_shape": [WINDOW, EMBED],
            "terminal": [80, 24],
            "first_paint_s": round(statistics.median(real), 3) if real else None,
            "first_paint_s_runs": [round(x, 3) for x in real],
            "first_paint_pilot_s": round(statistics.median(m["paints"]), 3),
            "label_roundtrip_ms": round(statistics.median(real_rt), 2) if real_rt else None,
            "label_roundtrip_p95_ms": p95(real_rt),
            "label_roundtrip_pilot_ms": round(statistics.median(rt), 2),
            "label_roundtrip_pilot_p95_ms": p95(rt),
            "labels_timed": len(rt),
            "next_page_ms": round(statistics.median(m["pages"]), 2) if m["pages"] else None,
            "target_first_paint_s": 1.0,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not args.json:
        for k, v in result.items():
            log(f"{k:24} {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
