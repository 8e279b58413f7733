"""The streaming wake-word pipeline: 80 ms frames in, scores and detections out."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..audio import FRAME_SAMPLES, SAMPLE_RATE
from ..errors import ModelError
from .backbone import Backbone
from .detector import Detection, Detector
from .features import StreamingLogMel
from .head import Head


@dataclass(frozen=True)
class Step:
    """What one 80 ms frame produced: the head's score (None while the windows fill up) and a
    detection when the detector fires."""

    time_s: float
    score: float | None
    detection: Detection | None
    embedding: np.ndarray | None
    logit: float | None = None  # the score before the sigmoid (it saturates at 1.0; this does not)


class Engine:
    """features -> backbone (one embedding per frame) -> head over the last `head.window`
    embeddings -> detector. Keeps only the state it needs; `reset()` starts a new stream."""

    def __init__(self, backbone: Backbone, head: Head, detector: Detector):
        if head.embed != backbone.embed:
            raise ModelError(f"head expects {head.embed}-dim embeddings, backbone gives {backbone.embed}")
        self.backbone, self.head, self.detector = backbone, head, detector
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far."""
        self._mel = StreamingLogMel()
        self._mels: deque[np.ndarray] = deque(maxlen=self.backbone.context)
        self._embs: deque[np.ndarray] = deque(maxlen=self.head.window)
        self._samples = 0

    def process(self, frame: np.ndarray) -> Step:
        """Consume one frame of FRAME_SAMPLES int16 samples."""
        if len(frame) != FRAME_SAMPLES:
            raise ValueError(f"frames must have {FRAME_SAMPLES} samples, got {len(frame)}")
        self._samples += len(frame)
        t = self._samples / SAMPLE_RATE
        self._mels.extend(self._mel.push(frame))
        if len(self._mels) < self.backbone.context:
            return Step(t, None, None, None)
        emb = self.backbone(np.stack(self._mels))
        self._embs.append(emb)
        if len(self._embs) < self.head.window:
            return Step(t, None, None, emb)
        logit = float(self.head.logits(np.stack(self._embs)[None])[0])
        score = float(1.0 / (1.0 + np.exp(-logit)))
        return Step(t, score, self.detector.update(score, t), emb, logit)
