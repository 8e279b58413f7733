"""The device service (`assistant run`): 80 ms frames -> the wake-word engine -> the device store.

A pre-roll ring buffer keeps the last seconds of audio and their embeddings, so each detection, each
near miss and each "you missed me" (a control-channel capture) is saved with the clip and the
embeddings behind it. Detections also go to the local Hermes bus when one is configured.

Threads: the audio loop (the caller's), the store writer, and the control server's. The audio loop does not
wait for the disk or the database (the store's busy timeout can hold a write for seconds while the TUI
labels in another process); it hands rows to the writer through a bounded queue. One lock guards what the
loop shares with the control commands: the ring, the embedding and score history, the engine (which
`reload` swaps) and the counters.

The owner's personal verifier (learning.verifier, DESIGN §8) has the last word on a detection: when it
disagrees, the detection is not announced (no Hermes message, no `on_detection`) but saved as a near miss, so
the owner can still label it (and a wrong rejection teaches the next verifier). It is trained only on this
store's labels, never leaves the device, retrains on the writer's thread when the labels have changed enough
and on a reload, and `ServiceConfig.verifier` False turns it off.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from .analytics.counters import count, count_at_hour, count_quietly
from .audio import FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, RingBuffer
from .config import default_store_dir  # noqa: F401  (re-exported: where the store lives by default)
from .control import ControlServer, default_control_path
from .errors import AssistantError, ControlError, StoreError
from .kws.engine import Engine, Step
from .kws.model import ModelFiles, load_model
from .learning.verifier import PersonalVerifier, VerifierPolicy
from .notify import Notifier
from .store import Store

if TYPE_CHECKING:
    from .hermes import HermesPublisher

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
SETTINGS_REFRESH_S = 10.0  # how often the writer re-reads the near-miss band the owner may change in the TUI
RETENTION_EVERY_S = 3600.0  # how often the writer applies the retention settings (first at start-up)
# Rows waiting for the store. A live source fills it never (a detection or a near miss comes at most once per
# refractory period, a write takes milliseconds); a file read as fast as possible is paced by it.
WRITE_QUEUE = 64


@dataclass(frozen=True)
class ServiceConfig:
    """How the service listens. `threshold` None: the model card's operating point (kept across reloads
    of a new card); `ring_s` is also the longest "you missed me" capture."""

    model_dir: Path
    threshold: float | None = None
    patience: int = 1
    refractory_s: float = 2.0
    pre_roll_s: float = 2.0  # audio saved before the frame a detection or near miss peaked in
    ring_s: float = 10.0
    source: str = "microphone"  # what the frames come from, for status
    verifier: bool = True  # the owner's personal verifier vets each detection (see the module doc)
    verifier_policy: VerifierPolicy = field(default_factory=VerifierPolicy)

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise AssistantError(f"service setting {key}: got {getattr(self, key)!r}; need {allowed}")

        need(self.threshold is None or 0.0 < self.threshold < 1.0, "threshold", "a probability in (0, 1)")
        need(self.patience >= 1, "patience", "a whole number >= 1")
        need(self.refractory_s >= 0, "refractory_s", "seconds >= 0")
        need(self.ring_s >= 1.0, "ring_s", "at least 1 second")
        need(0.0 <= self.pre_roll_s <= self.ring_s - FRAME_S, "pre_roll_s",
             f"seconds in 0..{self.ring_s - FRAME_S:g} (ring_s less one frame)")


@dataclass(frozen=True)
class Heard:
    """A detection as it happened: stream time (seconds since the service started listening), wall clock
    (unix seconds), score, and the model that heard it."""

    stream_s: float
    time_s: float
    score: float
    wakeword: str
    model_version: str


@dataclass(frozen=True)
class Summary:
    """What one run heard: frames processed, detections, near misses the store kept (after its quota)."""

    frames: int
    detections: int
    near_misses: int
    rejected: int = 0  # detections the personal verifier turned into near misses (not counted in `detections`)


T = TypeVar("T")


class NearMissTracker(Generic[T]):
    """Picks the near misses worth saving from a stream of scores: one per utterance (a run of scores at or
    above the band's floor), at its peak, at most one per `window_s` of a long run, none from a run in which
    the detector fired. Pure: `update` takes a score and returns a finished near miss, if any."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._start: float | None = None  # the open episode's first in-band time
        self._peak: tuple[float, T] | None = None
        self._detected = False  # the detector fired in this run: nothing more until the run ends

    def update(self, time_s: float, score: float, floor: float, threshold: float, detected: bool,
               payload: Callable[[], T]) -> tuple[float, T] | None:
        """One score at `time_s`; (peak score, payload) of a near miss to save when one is complete.
        `payload()` is called at each new peak (to snapshot its clip), not at every frame."""
        if score < floor:  # the run ended
            self._detected = False
            return self.flush()
        if detected:
            self._detected = True
            self.flush()
            return None
        if self._detected:
            return None
        done = None
        if self._start is not None and time_s - self._start >= self.window_s:
            done = self.flush()
        if self._start is None:
            self._start = time_s
        if score < threshold and (self._peak is None or score > self._peak[0]):
            self._peak = (score, payload())
        return done

    def flush(self) -> tuple[float, T] | None:
        """End the open episode (at the end of the stream); its near miss, if it had one."""
        done, self._start, self._peak = self._peak, None, None
        return done


class _StoreWriter:
    """Runs store writes in one thread, in order, so the audio loop does not wait on the disk or the
    database; between writes, every SETTINGS_REFRESH_S, calls `refresh`."""

    def __init__(self, refresh: Callable[[], None], on_error: Callable[[], None] = lambda: None):
        self._refresh, self._on_error = refresh, on_error
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(WRITE_QUEUE)
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue a write; waits only when WRITE_QUEUE writes are pending (no row is ever dropped)."""
        self._jobs.put(job)

    def close(self) -> None:
        """Finish every queued write, then stop."""
        self._jobs.put(None)
        self._thread.join()

    def _loop(self) -> None:
        due = time.monotonic()  # the first refresh (and retention pass) right at start-up
        while True:
            try:
                job = self._jobs.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                job = _idle
            if job is None:
                return
            try:
                job()
                if time.monotonic() >= due:
                    due = time.monotonic() + SETTINGS_REFRESH_S
                    self._refresh()
            except StoreError as exc:  # a full disk, say: one line per write, the service keeps listening
                log.error("store write failed: %s", exc)
                self._on_error()
            except Exception:  # a failed write is logged (and counted); the service keeps listening
                log.exception("store write failed")
                self._on_error()


def _idle() -> None:
    """The writer's job when none came: just the settings refresh."""


@dataclass(frozen=True)
class _Moment:
    """What a near miss saves, snapshotted at its peak."""

    samples: np.ndarray
    embeddings: np.ndarray | None
    time_s: float
    threshold: float
    model_version: str


class DeviceService:
    """The wake-word loop over a store, with the control commands (status, capture, reload) it serves. The
    model is `config.model_dir`'s, checked against its card (`model`: one already loaded from there).

    `process(frame)` is the audio loop's step; `run(frames)` loops until the source ends or `stop()`;
    `close()` finishes the queued writes and returns the summary. `on_detection` is called in the audio
    loop for each detection (the CLI prints it)."""

    def __init__(self, store: Store, config: ServiceConfig, hermes: HermesPublisher | None = None,
                 on_detection: Callable[[Heard], None] | None = None, clock: Callable[[], float] = time.time,
                 model: ModelFiles | None = None):
        self.config = config
        self._store = store
        self._hermes = hermes
        self._on_detection = on_detection
        self._clock = clock
        self._started = time.monotonic()
        self._lock = threading.Lock()  # ring, histories, engine, counters
        self._reload_lock = threading.Lock()  # one reload at a time
        self._stop = threading.Event()
        self._files, self._engine = self._load(model)
        self._ring = RingBuffer(config.ring_s)
        history = math.ceil(self._ring.capacity / FRAME_SAMPLES)
        # One entry per frame in the ring, oldest first (None before the engine's windows fill up).
        self._embeddings: deque[np.ndarray | None] = deque(maxlen=history)
        self._scores: deque[float | None] = deque(maxlen=history)
        self._near: NearMissTracker[_Moment] = NearMissTracker(config.refractory_s)
        self._band = store.settings().near_miss_band
        self._retention_due = time.monotonic()  # at start-up, then every RETENTION_EVERY_S
        self._frames = self._detections = self._near_misses = self._rejected = 0
        self._personal = PersonalVerifier(store, self._engine.head, config.verifier_policy) if config.verifier else None
        self._writer = _StoreWriter(self._refresh, lambda: count_quietly(store, "error.store_write"))

    def _load(self, files: ModelFiles | None = None) -> tuple[ModelFiles, Engine]:
        files = files or load_model(self.config.model_dir)
        return files, files.engine(self.config.threshold, self.config.patience, self.config.refractory_s)

    @property
    def model_version(self) -> str:
        """The running model's version (ModelFiles.version)."""
        return self._files.version

    @property
    def wakeword_id(self) -> str:
        """The wake word as an id for Hermes topics ("hey_snips")."""
        return self._files.wakeword.replace(" ", "_")

    # --- the audio loop ---------------------------------------------------------------------------

    def run(self, frames: Iterable[np.ndarray], on_frame: Callable[[], None] | None = None) -> None:
        """Process frames until the source ends or `stop()` is called; then save an open near miss.
        `on_frame` is called after each frame (systemd's watchdog ping: it stops when this loop stalls)."""
        for frame in frames:
            if self._stop.is_set():
                break
            self.process(frame)
            if on_frame is not None:
                on_frame()
        with self._lock:
            done = self._near.flush()
        if done is not None:
            self._save_near_miss(*done)

    def stop(self) -> None:
        """Make `run` return after the frame it is processing."""
        self._stop.set()

    def process(self, frame: np.ndarray) -> Step:
        """One frame through the engine; queues the rows it causes. Returns the engine's step."""
        now = self._clock()
        heard = near = rejected = None
        with self._lock:
            self._ring.append(frame)
            step = self._engine.process(frame)
            self._frames += 1
            self._embeddings.append(step.embedding)
            self._scores.append(step.score)
            if step.detection is not None:
                clip, window = self._clip(), self._window(self._engine.head.window)
                if self._personal is None or self._personal.accepts(window):
                    self._detections += 1
                    heard = Heard(self._frames * FRAME_S, now, step.detection.score, self.wakeword_id,
                                  self.model_version)
                else:
                    self._rejected += 1
                    rejected = _Moment(clip, window, now, self._engine.detector.threshold, self.model_version)
            if step.score is not None:
                threshold = self._engine.detector.threshold
                near = self._near.update(self._frames * FRAME_S, step.score, threshold - self._band, threshold,
                                         step.detection is not None,
                                         lambda: _Moment(self._clip(), self._window(self._engine.head.window),
                                                         now, threshold, self.model_version))
        if heard is not None:
            def save_detection() -> None:
                self._store.record_detection(clip, heard.score, heard.model_version, window, time_s=heard.time_s)
                count_at_hour(self._store, "detection.accepted", heard.time_s)

            self._writer.submit(save_detection)
            if self._hermes is not None:
                self._hermes.detected(heard.wakeword, heard.score, heard.stream_s, heard.model_version)
            if self._on_detection is not None:
                self._on_detection(heard)
        if rejected is not None:
            score = step.detection.score  # type: ignore[union-attr]  # rejected only where it fired
            log.info("the personal verifier rejected a detection (score %.3f): saved as a near miss", score)
            self._writer.submit(lambda: count(self._store, "detection.rejected_by_verifier", time_s=now))
            # The store keeps a near miss only strictly under the threshold it is given, and a rejection scored at
            # or above the detector's: it is given the score's successor, so a rejection is kept whenever near
            # misses are (band > 0, today's quota not used up), as the owner set them.
            self._save_near_miss(score, rejected, float(np.nextafter(score, math.inf)))
        if near is not None:
            self._save_near_miss(*near)
        return step

    def _save_near_miss(self, score: float, m: _Moment, ceiling: float | None = None) -> None:
        def job() -> None:
            if self._store.record_near_miss(m.samples, score, m.threshold if ceiling is None else ceiling,
                                            m.model_version, m.embeddings, time_s=m.time_s) is not None:
                with self._lock:
                    self._near_misses += 1
                count_at_hour(self._store, "near_miss.saved", m.time_s)

        self._writer.submit(job)

    def _clip(self) -> np.ndarray:
        """The pre-roll and the current frame, from the ring (under the lock)."""
        n = round(self.config.pre_roll_s * SAMPLE_RATE) + FRAME_SAMPLES
        return self._ring.last()[-n:]

    def _window(self, frames: int) -> np.ndarray | None:
        """The embeddings of the last `frames` frames that have one, (k, embed); None if none (under the lock)."""
        start = max(0, len(self._embeddings) - frames)
        kept = [e for e in itertools.islice(self._embeddings, start, None) if e is not None]
        return np.stack(kept).astype(np.float32) if kept else None

    def _refresh(self) -> None:
        """The writer's periodic job: settings, retention, and the personal verifier."""
        self._refresh_settings()
        if self._personal is not None:
            try:
                self._personal.refresh()
            except (AssistantError, OSError) as exc:  # e.g. a verifier file it cannot write (a full disk):
                log.warning("personal verifier not retrained: %s", exc)  # detections pass meanwhile
                count_quietly(self._store, "error.verifier_train")

    def _refresh_settings(self) -> None:
        self._band = self._store.settings().near_miss_band  # a float: replaced atomically
        if time.monotonic() >= self._retention_due:
            self._retention_due = time.monotonic() + RETENTION_EVERY_S
            r = self._store.apply_retention()
            if r.clips_removed or r.rows_deleted:
                log.info("retention: removed %d clips (%d bytes) and %d rows", r.clips_removed, r.bytes_freed,
                         r.rows_deleted)

    # --- control commands (called from the control server's threads) -----------------------------

    def status(self) -> dict:
        """The `status` response's fields."""
        with self._lock:
            return {"model_version": self.model_version, "wakeword": self._files.wakeword,
                    "threshold": self._engine.detector.threshold,
                    "uptime_s": round(time.monotonic() - self._started, 3), "frames": self._frames,
                    "detections": self._detections, "near_misses": self._near_misses,
                    "source": self.config.source, "verifier": self._verifier_status()}

    def _verifier_status(self) -> dict:
        """The personal verifier for `status`: off, inactive (too few labels) or active, and what it learned from."""
        if self._personal is None:
            return {"state": "off", "rejected": self._rejected}
        v = self._personal.current
        return {"state": "active" if v.active else "inactive", "rejected": self._rejected,
                "true_labels": v.true_labels, "false_labels": v.false_labels}

    def retrain_verifier(self) -> bool:
        """Retrain the personal verifier now on the store's labels; False when it is turned off."""
        if self._personal is None:
            return False
        self._personal.retrain()
        return True

    def capture(self, seconds: float) -> int:
        """Save the last `seconds` (1..ring_s) as a captured miss, with the embeddings of those frames and the
        best score among them; the row's id."""
        if not 1.0 <= seconds <= self.config.ring_s:
            raise ControlError(f"capture: seconds must be in 1..{self.config.ring_s:g} (the ring's length),"
                               f" got {seconds:g}")
        with self._lock:
            if self._frames == 0:
                raise ControlError("capture: nothing heard yet")
            samples = self._ring.last(seconds)
            frames = math.ceil(len(samples) / FRAME_SAMPLES)
            embeddings = self._window(frames)
            scores = [s for s in itertools.islice(self._scores, max(0, len(self._scores) - frames), None)
                      if s is not None]
            version = self.model_version
        ring = RingBuffer(len(samples) / SAMPLE_RATE)  # the store reads a ring: hand it a private copy
        ring.append(samples)
        # Written here, not by the writer thread: the caller waits for the id. The store takes its own lock.
        return self._store.record_captured_miss(ring, seconds, version, embeddings,
                                                max(scores) if scores else None, time_s=self._clock())

    def reload(self) -> str:
        """Load the model again from disk (checked against its card) and swap it in without missing a frame:
        the new engine is first fed the ring's audio (so it starts warm, with the detector's refractory
        period carried over), then, under the lock, the frames that arrived meanwhile. Returns its version.
        A model that fails its card leaves the running one in place."""
        with self._reload_lock:
            try:
                files, engine = self._load()
            except Exception:
                count_quietly(self._store, "error.model_load")
                raise
            if self._personal is not None:  # over the new head's windows, before it hears anything
                try:
                    self._personal.retrain(engine.head)
                except (AssistantError, OSError) as exc:  # OSError: a full disk
                    log.warning("personal verifier not retrained for the new model: %s", exc)
                    count_quietly(self._store, "error.verifier_train")
            with self._lock:
                audio, mark = self._ring.last(), self._frames
            steps = _warm(engine, audio)  # the slow part, while the audio loop carries on with the old engine
            with self._lock:
                behind = self._frames - mark
                if behind:  # at most a ring's worth: frames further back only mattered to the old engine
                    steps += _warm(engine, self._ring.last()[-behind * FRAME_SAMPLES:])
                self._files, self._engine = files, engine
                self._embeddings.clear()
                self._embeddings.extend(s.embedding for s in steps)
                self._scores.clear()
                self._scores.extend(s.score for s in steps)
                version = self.model_version
            log.info("reloaded the model: now %s, threshold %g", version, engine.detector.threshold)
            count_quietly(self._store, "service.reloaded")
            return version

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until every write queued so far is done; False on timeout."""
        done = threading.Event()
        self._writer.submit(done.set)
        return done.wait(timeout_s)

    def close(self) -> Summary:
        """Finish the queued writes; what the run heard."""
        self._writer.close()
        with self._lock:
            return Summary(self._frames, self._detections, self._near_misses, self._rejected)


def _warm(engine: Engine, audio: np.ndarray) -> list[Step]:
    """Feed whole frames of `audio` (aligned to its end) to `engine`; its steps, detections ignored
    (they are the past: the running engine already reported them)."""
    audio = audio[len(audio) % FRAME_SAMPLES:]
    return [engine.process(f) for f in audio.reshape(-1, FRAME_SAMPLES)]


def serve(config: ServiceConfig, store_dir: Path, frames: Iterable[np.ndarray], control_path: Path | None = None,
          hermes_url: str | None = None, on_detection: Callable[[Heard], None] | None = None,
          attach: Callable[[Store, DeviceService], Callable[[], None] | None] | None = None,
          notifier: Notifier | None = None) -> Summary:
    """Run the service until `frames` ends (or KeyboardInterrupt: Ctrl-C, or SIGTERM when the caller maps
    it so): the control socket, the store, Hermes if configured, and what `attach(store, service)` starts next
    to the service (learning.device: rounds and releases), stopped by the callable it returns; everything
    closed and the socket removed on the way out. AssistantError when it cannot start.

    `notifier` (systemd) hears READY once the model is loaded, Hermes is connected and `attach` returned (it may
    leave a learning broker that does not answer to a background thread: the device listens meanwhile), a watchdog
    ping per frame of the audio loop (rate-limited), and STOPPING on the way out."""
    model = load_model(config.model_dir)  # a bad model stops here, before anything is created on disk
    control = ControlServer(control_path or default_control_path(store_dir))  # a second service stops here
    try:
        with Store(store_dir) as store:
            hermes = None
            if hermes_url:
                from .hermes import HermesPublisher

                hermes = HermesPublisher(hermes_url)
                if not hermes.wait_connected():
                    hermes.close()
                    raise AssistantError(f"cannot reach the local broker {hermes_url}")
            try:
                service = DeviceService(store, config, hermes, on_detection, model=model)
                try:
                    detach = attach(store, service) if attach is not None else None
                except BaseException:
                    service.close()
                    raise
                control.start(service)
                count_quietly(store, "service.started")
                log.info("listening to %s: %s model %s, threshold %g; store %s; control %s", config.source,
                         service.wakeword_id, service.model_version, service.status()["threshold"], store.root,
                         control.path)
                if notifier is not None:
                    notifier.ready(f"listening for {service.wakeword_id} (model {service.model_version})")
                try:
                    service.run(frames, notifier.ping if notifier is not None else None)
                except KeyboardInterrupt:
                    log.info("stopping")
                finally:
                    if notifier is not None:
                        notifier.stopping()
                    control.close()  # no command may reach a half-closed service
                    if detach is not None:  # before the service closes: a release may be reloading it
                        detach()
                    summary = service.close()
            finally:
                if hermes is not None:
                    hermes.close()
    finally:
        control.close()
    return summary
