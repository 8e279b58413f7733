"""A shipped wake-word model: a directory with backbone.onnx, head.npz and card.json.

The card records each file's SHA-256 and the operating threshold measured for it (0.5 false
accepts per hour on the held-out evaluation); loading checks both, so a corrupt or swapped file
is refused before it can listen.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from .backbone import Backbone, sha256_file
from .detector import Detector
from .engine import Engine
from .head import Head

#: Where the project's own models live in a source checkout or an editable install.
CHECKOUT = Path(__file__).resolve().parents[2] / "models"
MODELS_ENV = "ASSISTANT_MODELS"
DEFAULT_WAKEWORD = "hey_snips"
_FILES = ("backbone.onnx", "head.npz")  # what a card must list, with their SHA-256


def shipped_root(env: Mapping[str, str] = os.environ, prefix: str = sys.prefix) -> Path:
    """The folder of shipped models: $ASSISTANT_MODELS; else the checkout's models/ (a source tree or an editable
    install); else models/ beside the venv systemd/install.sh made (/opt/assistant/venv -> /opt/assistant/models),
    since a wheel does not carry the models."""
    if env.get(MODELS_ENV):
        return Path(env[MODELS_ENV])
    if CHECKOUT.is_dir():
        return CHECKOUT
    return Path(prefix).parent / "models"


def default_model_dir(wakeword_id: str = DEFAULT_WAKEWORD) -> Path:
    """The shipped model for a wake word ("hey_snips", "hey_jarvis")."""
    return shipped_root() / wakeword_id


@dataclass(frozen=True)
class ModelFiles:
    """A model directory whose files matched its card."""

    directory: Path
    wakeword: str
    threshold: float | None  # the card's operating point (probability), None if never evaluated
    card: dict

    @property
    def backbone(self) -> Path:
        return self.directory / "backbone.onnx"

    @property
    def head(self) -> Path:
        return self.directory / "head.npz"

    @property
    def version(self) -> str:
        """A short name for exactly these files: the first 8 hex digits of the backbone's and the head's
        SHA-256 from the card (which `load_model` checked), "backbone+head"."""
        files = self.card["files"]
        return f"{files['backbone.onnx']['sha256'][:8]}+{files['head.npz']['sha256'][:8]}"

    def engine(self, threshold: float | None = None, patience: int = 1, refractory_s: float = 2.0) -> Engine:
        """An Engine on these files; the threshold defaults to the card's operating point."""
        th = threshold if threshold is not None else (self.threshold if self.threshold is not None else 0.5)
        return Engine(Backbone(self.backbone), Head.load(self.head), Detector(th, patience, refractory_s))


def load_model(directory: Path) -> ModelFiles:
    """Check a model directory against its card. ModelError names the file that is wrong."""
    directory = Path(directory)
    card_path = directory / "card.json"
    if not card_path.is_file():
        raise ModelError(f"{directory}: no card.json (not a model directory; train one with python -m models.train"
                         " and write its card with python -m models.card)")
    try:
        card = json.loads(card_path.read_text())
        files = card["files"]
        wakeword = str(card["wakeword"])
        if not isinstance(files, dict) or not all(isinstance(files.get(n, {}), dict) for n in _FILES):
            raise TypeError("files: expected a map of file name to {sha256, bytes}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{card_path}: not a valid model card ({exc})") from exc
    for name in _FILES:
        path = directory / name
        if not path.is_file():
            raise ModelError(f"{path}: missing")
        want = files.get(name, {}).get("sha256")
        if want != sha256_file(path):
            raise ModelError(f"{path}: SHA-256 does not match its card (corrupt or replaced file)")
    threshold = card.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                                  or not 0.0 < threshold < 1.0):
        raise ModelError(f"{card_path}: threshold {threshold!r:.40} is not a probability in (0, 1)")
    return ModelFiles(directory, wakeword, None if threshold is None else float(threshold), card)
