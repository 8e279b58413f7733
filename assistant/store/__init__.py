"""The device store (issue 6): detections, near misses and "you missed me" clips with their
embeddings, the owner's labels, settings and retention, in SQLite beside a directory of WAV clips."""

from .rows import Kind, Label, LabelChange, Record, RetentionReport, Settings, Stats
from .schema import SCHEMA_VERSION
from .store import Store

__all__ = ["SCHEMA_VERSION", "Kind", "Label", "LabelChange", "Record", "RetentionReport", "Settings", "Stats",
           "Store"]
