"""What `assistant learning status|opt-in|opt-out|rollback` does to the device store and its model versions
(the CLI parses and prints; this module reads and writes)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import AssistantError, ModelError
from ..kws.model import load_model
from ..store import RoundStatus, Store
from .client import model_head
from .device import model_versions_dir
from .errors import LearningError
from .install import ModelVersions
from .participate import labelled_records, new_labels
from .privacy import load_ledger
from .verifier import Verifier, verifier_path


@dataclass(frozen=True)
class LearningStatus:
    """The owner's view of learning on this device."""

    opted_in: bool
    epsilon_spent: float
    epsilon_budget: float
    delta: float
    rounds_taken: int  # rounds this device spent privacy on (completed or failed after sending)
    rounds_refused: int
    labels: int  # labelled rows (any label)
    labels_waiting: int  # usable labels no round has learned from yet
    model_version: int | None  # None: no release installed here (the shipped model runs)
    installed_versions: tuple[int, ...]
    can_roll_back: bool
    verifier: str  # "active", "inactive" or "none" (never trained)

    def as_json(self) -> dict:
        return {**asdict(self), "installed_versions": list(self.installed_versions)}

    def render(self) -> str:
        """The status as lines of text."""
        model = ("the shipped model (no release installed)" if self.model_version is None
                 else f"version {self.model_version} (installed: {', '.join(map(str, self.installed_versions))})")
        return "\n".join([
            f"learning:        {'opted in' if self.opted_in else 'not opted in (assistant learning opt-in)'}",
            f"privacy spent:   epsilon {self.epsilon_spent:.3f} of a budget of {self.epsilon_budget:g}"
            f" (delta {self.delta:g}), over {self.rounds_taken} round(s); {self.rounds_refused} refused",
            f"labels:          {self.labels} labelled, {self.labels_waiting} not learned from yet",
            f"model:           {model}",
            "rollback:        " + ("possible (assistant learning rollback)" if self.can_roll_back
                                   else "nothing to go back to"),
            f"personal verifier: {self.verifier}",
        ])


def _open(store_root: Path) -> Store:
    if not (Path(store_root) / "store.db").exists():
        raise AssistantError(f"no store in {store_root} (nothing saved yet, or give --store DIR)")
    return Store(store_root)


def _versions(store_root: Path) -> ModelVersions | None:
    root = model_versions_dir(store_root)
    return ModelVersions(root) if (root / "current").is_dir() else None


def status(store_root: Path, shipped_model: Path) -> LearningStatus:
    """Read the learning status of the store at `store_root` (labels are counted against the installed head, or
    the shipped one's before any release)."""
    versions = _versions(store_root)
    model_dir = versions.current if versions is not None else shipped_model
    with _open(store_root) as store:
        settings, ledger = store.settings(), load_ledger(store)
        rows = store.learning_rounds(limit=1_000_000)
        records = labelled_records(store)
        head = model_head(model_dir)
        vpath = verifier_path(store)
        verifier = "none"
        if vpath.is_file():
            try:
                verifier = "active" if Verifier.load(vpath).active else "inactive (too few labels)"
            except LearningError as exc:  # the service retrains over it at its next start
                verifier = f"unreadable ({exc})"
        installed = tuple(versions.installed()) if versions is not None else ()
        return LearningStatus(
            settings.learning_opt_in, ledger.epsilon_spent(), settings.epsilon_budget, ledger.delta,
            sum(r.status is not RoundStatus.REFUSED for r in rows), sum(r.status is RoundStatus.REFUSED for r in rows),
            sum(r.label is not None for r in records), new_labels(records, head),
            versions.current_version() if versions is not None else None, installed,
            versions is not None and len(installed) >= 2, verifier)


def set_opt_in(store_root: Path, opted_in: bool, budget: float | None = None) -> None:
    """Opt in (optionally setting the epsilon budget) or out; AssistantError naming a bad budget."""
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise AssistantError(f"--budget {budget:g}: need a finite epsilon > 0 (all rounds together)")
    changes: dict[str, object] = {"learning_opt_in": opted_in}
    if budget is not None:
        changes["epsilon_budget"] = float(budget)
    with _open(store_root) as store:
        store.update_settings(**changes)


def roll_back(store_root: Path) -> tuple[int, int]:
    """Make the previously installed release current again (the one left is never installed again); (left,
    now). The running service picks it up on its next reload (the CLI asks it to)."""
    versions = _versions(store_root)
    if versions is None:
        raise AssistantError(f"no model versions in {model_versions_dir(store_root)}: no release was ever installed")
    left = versions.current_version()
    try:
        now = versions.rollback("rolled back by the owner")
    except ModelError as exc:
        raise AssistantError(str(exc)) from exc
    load_model(versions.current)  # the version gone back to still matches its card
    return left, now
