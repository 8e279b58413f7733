"""One simulated device of the demo, as its own process: the real device code (store, DeviceService with the
shipped model, DeviceLearning with its privacy ledger and release installer, and, for an owner who opted in
as a clerk, sda's ClerkService), fed synthetic audio and labelled by a simulated owner.

    python -m assistant.demo.device --index 3 --workdir DIR --broker mqtt://127.0.0.1:PORT --coordinator-key HEX

It reads commands on stdin, one per line, and answers with one JSON object per line on stdout:
  (at start)   {"event": "started", ...}            connected, registered (and the clerk too)
  hear N       {"event": "heard", "chunk": N, ...}  heard day N's audio and the owner labelled it
  (any time)   {"event": "sent", "aggregation": A}   what it sent to A saved in DIR/sent/A/DEVICE.npy (the demo's
                                                      ground truth: a real device tells nobody)
  (any time)   {"event": "release", "version": V, "status": S, "reason": R}   installed, or refused and why
  quit or EOF  {"event": "bytes", ...}               then it exits

Day N's audio is stamped as heard on day N of the demo's past (rounds + 1 - N days ago), so that the analytics
round can ask for a day that has ended (a device answers only for finished days).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..store.rows import Kind, Label

LABEL_SHARE = 0.9  # of the moments saved, the share the owner labels
FLIP = 0.05  # labels the owner gets wrong
MISSED_PRESS = 0.7  # a missed wake word the owner reports with "you missed me"
HIT_BEFORE_S, HIT_AFTER_S = 0.5, 1.5  # a saved moment this close to a wake word is the wake word


def day_start(chunk: int, chunks: int, today: dt.date | None = None) -> float:
    """Unix time of 08:00 local on chunk `chunk`'s day: `chunks - chunk` days before today."""
    day = (today or dt.date.today()) - dt.timedelta(days=chunks - chunk)
    return dt.datetime.combine(day, dt.time(8, 0)).timestamp()


def truth_label(t_s: float, wake: np.ndarray) -> bool:
    """Whether a moment at stream time `t_s` is one of the wake words [start, end) in `wake`."""
    return bool(np.any((t_s >= wake[:, 0] - HIT_BEFORE_S) & (t_s <= wake[:, 1] + HIT_AFTER_S)))


def _heard(fired: list[float], lo: float, hi: float) -> bool:
    """Whether one of the detection times `fired` belongs to the wake word said over [lo, hi)."""
    return any(lo - HIT_BEFORE_S <= t <= hi + HIT_AFTER_S for t in fired)


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assistant.demo.device", description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", type=int, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--broker", required=True)
    ap.add_argument("--protocol", default="auto")
    ap.add_argument("--coordinator-key", required=True)
    ap.add_argument("--chunks", type=int, required=True, help="days of audio (one per learning round)")
    ap.add_argument("--clerk", action="store_true", help="the owner opted in as a clerk")
    ap.add_argument("--min-crowd", type=int, default=2)
    ap.add_argument("--budget", type=float, default=8.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"dev{args.index}: %(name)s %(message)s")

    from sda.mqtt.transport import BrokerConfig
    from sda.services.clerk import ClerkConfig, ClerkService

    from ..kws.model import default_model_dir
    from ..learning.device import DeviceLearning, LearningConfig, model_versions_dir
    from ..learning.install import ModelVersions
    from ..service import DeviceService, ServiceConfig
    from ..store import Store
    from .world import device_day

    name = f"dev{args.index:02d}"
    root = args.workdir / name
    broker = BrokerConfig(**{**BrokerConfig.from_url(args.broker).__dict__, "protocol": args.protocol})
    store = Store(root / "store")
    store.update_settings(learning_opt_in=True, epsilon_budget=args.budget, analytics_opt_in=True)
    versions = ModelVersions.adopt(model_versions_dir(store.root), default_model_dir())
    clock = [0.0]
    service = DeviceService(store, ServiceConfig(versions.current, verifier=False, source="demo"),
                            clock=lambda: clock[0])
    learning = DeviceLearning(store, versions, service.reload, LearningConfig(
        name, broker, "coordinator", bytes.fromhex(args.coordinator_key), store.root / "device.key", "hey_snips",
        min_crowd=args.min_crowd, min_new_labels=10),
        on_outcome=lambda o: emit("release", device=name, version=o.version, status=str(o.status), reason=o.reason))
    sent_dir = args.workdir / "sent"
    provide = learning.participant.provide

    def provide_and_keep(a):
        x = provide(a)
        if x is not None:  # the demo's ground truth; written before the participation is published
            out = sent_dir / a.aggregation_id / f"{name}.npy"
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out.with_suffix(".tmp.npy"), np.asarray(x, np.float64))
            os.replace(out.with_suffix(".tmp.npy"), out)
            emit("sent", aggregation=a.aggregation_id)
        return x

    learning.participant.provide = provide_and_keep
    learning.start()
    clerk = None
    if args.clerk:
        # Its own party, as on a Pi (assistant-clerk.service, with its own credentials): one MQTT client id each.
        clerk = ClerkService(ClerkConfig(f"{name}-clerk", root / "clerk", broker, "coordinator",
                                         bytes.fromhex(args.coordinator_key)))
        clerk.start()
    emit("started", device=name, clerk=args.clerk)

    rng = np.random.default_rng([2611, 3, args.index])
    try:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd or cmd[0] == "quit":
                break
            if cmd[0] == "hear":
                chunk = int(cmd[1])
                emit("heard", chunk=chunk, **hear(service, store, device_day(args.index, chunk),
                                                  day_start(chunk, args.chunks), clock, rng))
    finally:
        learning.stop()
        if clerk is not None:
            clerk.stop()
        service.close()
        store.close()
        t, r = learning.participant.transport, learning._releases  # the round's connection, the releases' one
        emit("bytes", device=name, device_out=t.bytes_out + r.bytes_out, device_in=t.bytes_in + r.bytes_in,
             clerk_out=clerk.transport.bytes_out if clerk else 0, clerk_in=clerk.transport.bytes_in if clerk else 0,
             clerk_jobs=clerk.stats.processed if clerk else 0)
    return 0


def hear(service, store, stream, start: float, clock: list[float], rng: np.random.Generator) -> dict:
    """Feed `stream` through the service at stream time from `start`, pressing "you missed me" for some missed
    wake words; then label what was saved as the owner would. Counts of what happened."""
    frames = stream.samples[: len(stream.samples) // FRAME_SAMPLES * FRAME_SAMPLES].reshape(-1, FRAME_SAMPLES)
    wake_end_frames = {int((end + 0.8) * SAMPLE_RATE) // FRAME_SAMPLES: i for i, (_, end) in enumerate(stream.wake)}
    fired: list[float] = []
    captured = 0
    for f, frame in enumerate(frames):
        clock[0] = start + (f + 1) * FRAME_SAMPLES / SAMPLE_RATE
        step = service.process(frame)
        if step.detection is not None:
            fired.append((f + 1) * FRAME_SAMPLES / SAMPLE_RATE)
        w = wake_end_frames.get(f)
        if w is not None:
            lo, hi = stream.wake[w]
            if not _heard(fired, lo, hi) and rng.random() < MISSED_PRESS:
                service.capture(min(3.0, hi - lo + 1.3))  # the owner's "you missed me", right after the miss
                captured += 1
    service.flush()  # the service's writer thread has stored every moment
    rows = [r for r in store.review_queue(unlabelled_only=True, limit=10_000) if start <= r.time_s]
    labels = {"true_accept": 0, "false_accept": 0, "missed_wake_word": 0}
    for r in rows:
        if rng.random() >= LABEL_SHARE and r.kind is not Kind.CAPTURED_MISS:
            continue
        is_wake = r.kind is Kind.CAPTURED_MISS or truth_label(r.time_s - start, stream.wake)
        if rng.random() < FLIP:
            is_wake = not is_wake
        if r.kind is Kind.DETECTION:
            label = Label.TRUE_ACCEPT if is_wake else Label.FALSE_ACCEPT
        else:
            label = Label.MISSED_WAKE_WORD if is_wake else Label.FALSE_ACCEPT
        store.label(r.id, label, time_s=start + stream.seconds)
        labels[label.value] += 1
    hits = sum(_heard(fired, lo, hi) for lo, hi in stream.wake)
    return {"seconds": round(stream.seconds, 1), "wake_words": len(stream.wake), "detections": len(fired),
            "heard_wake_words": hits, "captured": captured, "saved": len(rows), "labels": labels}


if __name__ == "__main__":
    sys.exit(main())
