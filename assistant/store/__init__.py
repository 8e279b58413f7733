"""The device store (issue 6): detections, near misses and "you missed me" clips with their
embeddings, the owner's labels, settings and retention, the privacy ledger of learning rounds and the
clerk's standing, in SQLite beside a directory of WAV clips."""

from .rows import (
    ClerkJob,
    ClerkStatus,
    Kind,
    Label,
    LabelChange,
    LearningRound,
    Record,
    RetentionReport,
    RoundStatus,
    Settings,
    Stats,
)
from .schema import SCHEMA_VERSION
from .store import Store

__all__ = ["SCHEMA_VERSION", "ClerkJob", "ClerkStatus", "Kind", "Label", "LabelChange", "LearningRound", "Record",
           "RetentionReport", "RoundStatus", "Settings", "Stats", "Store"]
