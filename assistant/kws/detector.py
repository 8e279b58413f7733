"""From scores to detections: threshold, patience, refractory period."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """A wake word heard: when (seconds from the stream's start) and how sure."""

    time_s: float
    score: float


class Detector:
    """Fires when `patience` consecutive scores reach `threshold`, then stays quiet for
    `refractory_s` so one utterance gives one detection."""

    def __init__(self, threshold: float = 0.5, patience: int = 2, refractory_s: float = 2.0):
        if not 0.0 < threshold < 1.0 or patience < 1 or refractory_s < 0:
            raise ValueError(f"need 0 < threshold < 1, patience >= 1, refractory_s >= 0; got "
                             f"{threshold}, {patience}, {refractory_s}")
        self.threshold, self.patience, self.refractory_s = threshold, patience, refractory_s
        self._run = 0
        self._quiet_until = float("-inf")

    def update(self, score: float, time_s: float) -> Detection | None:
        """Take the score of the step ending at `time_s`; a Detection when it fires."""
        if time_s < self._quiet_until:
            self._run = 0
            return None
        self._run = self._run + 1 if score >= self.threshold else 0
        if self._run >= self.patience:
            self._run = 0
            self._quiet_until = time_s + self.refractory_s
            return Detection(time_s, float(score))
        return None
