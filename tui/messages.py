"""Every message the app's workers send back to its screens, in one place."""

from __future__ import annotations

from typing import Any

from textual.message import Message

from .review.scores import ScoreCurve


class ScoresReady(Message):
    """A row's score over time is computed."""

    def __init__(self, curve: ScoreCurve) -> None:
        super().__init__()
        self.curve = curve


class PlaybackEnded(Message):
    """A clip finished playing, or could not be played (`error` says why)."""

    def __init__(self, detection_id: int, error: str | None) -> None:
        super().__init__()
        self.detection_id = detection_id
        self.error = error


class CaptureEnded(Message):
    """The service saved the last seconds as a new row ("you missed me"), or could not (`error`)."""

    def __init__(self, row_id: int | None, seconds: float, error: str | None) -> None:
        super().__init__()
        self.row_id = row_id
        self.seconds = seconds
        self.error = error


class ServiceStatus(Message):
    """What the running service reported over the control channel, or why it could not be asked."""

    def __init__(self, status: dict[str, Any] | None, error: str | None) -> None:
        super().__init__()
        self.status = status
        self.error = error
