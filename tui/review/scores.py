"""A saved moment's score over time: its clip streamed through the wake-word engine again, or, without a
model or a clip, only what the store kept (and a sentence saying so)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from assistant.audio import FRAME_MS, frames, read_audio
from assistant.errors import AssistantError
from assistant.store import Record

if TYPE_CHECKING:
    from assistant.kws.engine import Engine


@dataclass(frozen=True)
class ScoreCurve:
    """Per-frame scores of one row, or why there are none. Times are seconds from the clip's start."""

    detection_id: int
    times_s: tuple[float, ...]
    scores: tuple[float, ...]
    source: str  # where the numbers come from, shown under the plot

    @property
    def peak(self) -> tuple[float, float] | None:
        """(time_s, score) of the highest score, None without scores."""
        if not self.scores:
            return None
        k = int(np.argmax(self.scores))
        return self.times_s[k], self.scores[k]


def stream_scores(engine: Engine, samples: np.ndarray) -> tuple[list[float], list[float]]:
    """Feed int16 samples (n,) through a fresh stream of `engine`: (times_s, scores) of the frames that
    scored (the first ones only fill the engine's windows)."""
    engine.reset()
    times, scores = [], []
    for frame in frames(samples):
        step = engine.process(frame)
        if step.score is not None:
            times.append(step.time_s)
            scores.append(step.score)
    return times, scores


class Rescorer:
    """Scores rows with the model in `model_dir`, loaded on first use; safe to call from worker threads
    (one engine, used by one thread at a time). Without a model it says what the store has instead."""

    def __init__(self, model_dir: Path | None):
        self.model_dir = model_dir
        self._engine: Engine | None = None
        self.version: str | None = None  # of the loaded model, as the service names it
        self._error: str | None = None if model_dir else "no model given (--model DIR)"
        self._lock = threading.Lock()

    def _load(self) -> Engine | None:
        if self._engine is None and self._error is None:
            from assistant.kws.model import load_model

            try:
                model = load_model(self.model_dir)  # type: ignore[arg-type]
                self._engine, self.version = model.engine(), model.version
            except AssistantError as exc:
                self._error = f"no model ({exc})"
        return self._engine

    def curve(self, record: Record, clip: Path | None) -> ScoreCurve:
        """The row's score over time (the worker's job: reading the clip and the model take a while)."""
        with self._lock:
            engine = self._load()
            if engine is not None and clip is not None:
                try:
                    times, scores = stream_scores(engine, read_audio(clip))
                except AssistantError as exc:
                    return self._stored(record, f"cannot read the clip: {exc}")
                return ScoreCurve(record.id, tuple(times), tuple(scores), self._by(record, "clip rescored"))
            if engine is not None and record.embeddings is not None and len(record.embeddings) >= engine.head.window:
                w = engine.head.window
                windows = np.lib.stride_tricks.sliding_window_view(record.embeddings, w, axis=0)  # (n, embed, w)
                scores = engine.head.forward(np.ascontiguousarray(windows.transpose(0, 2, 1)))
                times = tuple((w + k) * FRAME_MS / 1000 for k in range(len(scores)))
                return ScoreCurve(record.id, times, tuple(float(s) for s in scores),
                                  self._by(record, "clip gone: the stored embeddings rescored"))
            why = self._error if engine is None else "the clip is gone and too few embeddings were kept"
            return self._stored(record, why)

    def _by(self, record: Record, what: str) -> str:
        """Say which model the numbers are from, and that it is not the one that saved the row if so."""
        same = self.version == record.model_version
        return f"{what} by model {self.version}" + ("" if same else f" (saved by {record.model_version})")

    @staticmethod
    def _stored(record: Record, why: str) -> ScoreCurve:
        return ScoreCurve(record.id, (), (), f"{why}; only the stored score")
