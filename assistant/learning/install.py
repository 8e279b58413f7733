"""The device's side of a model release (DESIGN §8: devices verify, evaluate on their local labels, and
hot-swap): check the release on the owner's labels, install it as a new model version beside the
previous ones, swap it into the running service without losing a frame, and roll back.

Layout of the device's model directory (`ModelVersions`, under the device's data dir, never the shipped
read-only model):

    root/current -> versions/7           a relative symlink: ServiceConfig.model_dir is root/current
    root/versions/0/                     the shipped model, copied at adoption
    root/versions/7/{backbone.onnx, head.npz, card.json}
    root/releases.json                   installed versions (a stack), refused ones, the highest seen

Each version directory is a whole model that `load_model` accepts: the backbone (a hard link to the
previous version's file, or a copy), the release's head, and a card that is the previous card with the
head's SHA-256 and size replaced and a "release" entry (version, rounds, epsilon, delta, validation,
clip norm, coordinator, created). The switch is one `rename` of the symlink, so a crash or a power cut
leaves the device on the old model or the new one, never a card that disagrees with its head; the
service then reloads (`DeviceService.reload` warms the new engine on the ring buffer and swaps between
two frames). A version once seen is never installed again: not after a rollback, not when the owner's
labels refused it, not when the retained message comes back on every reconnect.

The local check: the owner's labelled rows (gradient.examples_from, max-pooled windows for long
rows) scored by the running head and by the release. Accepted when the device has fewer than
`min_labels` usable labels (too few to judge), or when the release's mean BCE is not worse by more
than `loss_tolerance` and its accuracy at the card's threshold not worse by more than
`accuracy_tolerance`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from sda.mqtt import topics

from ..analytics.counters import count_quietly
from ..errors import ModelError
from ..kws.backbone import sha256_file
from ..kws.head import Head
from ..kws.model import ModelFiles, load_model
from ..store import Record, Store
from ..store.clips import fsync_path
from .atomic import write_atomic
from .gradient import examples_from
from .participate import labelled_records
from .release import Release, ReleaseError, StaleRelease, verify_release

log = logging.getLogger(__name__)

STATE_FILE = "releases.json"
KEEP_VERSIONS = 3  # version directories kept on disk (the current one and the ones rollback can reach)


# --- the local check: pure -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalCheckPolicy:
    """When the owner's labels accept a release (see the module doc)."""

    min_labels: int = 20
    loss_tolerance: float = 0.05  # nats of mean BCE
    accuracy_tolerance: float = 0.02


@dataclass(frozen=True)
class LocalCheck:
    """The decision, why, and the numbers (None when there were too few labels to measure)."""

    accept: bool
    reason: str
    labels: int
    current_loss: float | None = None
    candidate_loss: float | None = None
    current_accuracy: float | None = None
    candidate_accuracy: float | None = None


def _loss_and_accuracy(head: Head, records: list[Record], threshold: float) -> tuple[int, float, float]:
    ex = examples_from(records, head)
    if not len(ex):
        return 0, 0.0, 0.0
    s = head.logits(ex.x)
    loss = float(np.mean(np.logaddexp(0.0, s) - ex.y * s))
    accuracy = float(np.mean((s >= np.log(threshold / (1 - threshold))) == (ex.y == 1)))
    return len(ex), loss, accuracy


def local_check(records: Iterable[Record], current: Head, candidate: Head, threshold: float,
                policy: LocalCheckPolicy | None = None) -> LocalCheck:
    """Whether the owner's labelled `records` accept `candidate` in place of `current` (probability threshold
    `threshold` for the accuracy)."""
    policy = policy or LocalCheckPolicy()
    records = list(records)
    n, cur_loss, cur_acc = _loss_and_accuracy(current, records, threshold)
    n_new, new_loss, new_acc = _loss_and_accuracy(candidate, records, threshold)
    labels = min(n, n_new)
    if labels < policy.min_labels:
        return LocalCheck(True, f"accepted: {labels} usable label(s), fewer than the {policy.min_labels} needed to"
                                " judge a release", labels)
    worse = []
    if new_loss > cur_loss + policy.loss_tolerance:
        worse.append(f"loss {new_loss:.4f} > {cur_loss:.4f} + {policy.loss_tolerance:g}")
    if new_acc < cur_acc - policy.accuracy_tolerance:
        worse.append(f"accuracy {new_acc:.3f} < {cur_acc:.3f} - {policy.accuracy_tolerance:g}")
    reason = (f"refused on {labels} local labels: " + "; ".join(worse)) if worse else (
        f"accepted on {labels} local labels: loss {cur_loss:.4f} -> {new_loss:.4f}, accuracy {cur_acc:.3f} ->"
        f" {new_acc:.3f}")
    return LocalCheck(not worse, reason, labels, cur_loss, new_loss, cur_acc, new_acc)


# --- the versioned model directory -------------------------------------------------------------------


class ModelVersions:
    """The device's versioned model directory (see the module doc). Not thread-safe: one installer uses it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.current.is_dir():
            raise ModelError(f"{self.root}: no model versions here (create them with ModelVersions.adopt)")

    @classmethod
    def adopt(cls, root: Path, shipped: Path) -> ModelVersions:
        """The versions under `root`, created from the model at `shipped` (checked against its card) as version 0
        (or the version its card's release entry names) when `root` has none yet."""
        root = Path(root)
        if not (root / "current").is_dir():
            files = load_model(shipped)
            version = int(files.card.get("release", {}).get("version", 0))
            (root / "versions").mkdir(parents=True, exist_ok=True)
            _write_version(root / "versions", version, files, files.head.read_bytes(), files.card)
            _link(root, version)
            _write_state(root, {"installed": [version], "refused": {}, "highest_seen": version})
        return cls(root)

    @property
    def current(self) -> Path:
        """The path to give ServiceConfig.model_dir: always the installed version."""
        return self.root / "current"

    def current_version(self) -> int:
        return int(os.readlink(self.current).rsplit("/", 1)[-1])

    def _state(self) -> dict:
        try:
            state = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            state = None
        if not _well_formed(state):
            if state is not None:
                log.warning("%s: not a state of installed versions; starting again from the current version",
                            self.root / STATE_FILE)
            state = {"installed": [], "refused": {}, "highest_seen": 0}
        current, installed = self.current_version(), state["installed"]
        if not installed or installed[-1] != current:
            # The symlink moved but the state write did not follow (a crash between the two): the link rules.
            if current in installed:  # an interrupted rollback: what came after `current` was being left
                for left in installed[installed.index(current) + 1 :]:
                    state["refused"].setdefault(str(left), "rolled back")
                state["installed"] = installed[: installed.index(current) + 1]
            else:  # an interrupted install
                state["installed"] = [*installed, current]
        return state

    def highest_seen(self) -> int:
        """The highest version installed, refused or rolled back here: a release must be above it."""
        versions = [int(p.name) for p in (self.root / "versions").iterdir() if p.name.isdigit()]
        return max([self._state()["highest_seen"], self.current_version(), *versions])

    def installed(self) -> list[int]:
        """Installed versions, oldest first; the last is current, the one before it is what rollback restores."""
        return list(self._state()["installed"])

    def refused(self) -> dict[int, str]:
        """Versions refused or rolled back here, with why."""
        return {int(k): v for k, v in self._state()["refused"].items()}

    def note_refused(self, version: int, reason: str) -> None:
        """Remember a version that must never be installed (and raise the highest seen to it)."""
        state = self._state()
        state["refused"][str(version)] = reason
        state["highest_seen"] = max(state["highest_seen"], version)
        _write_state(self.root, state)

    def install(self, release: Release) -> Path:
        """Write `release` as a new version (the current card, the release's head) and make it current; its dir."""
        files = load_model(self.current)
        buf = io.BytesIO()
        release.head().save(buf)  # type: ignore[arg-type]  # np.savez takes a file object too
        data = buf.getvalue()
        card = {**files.card, "release": {
            "version": release.version, "model_id": release.model_id, "coordinator_id": release.coordinator_id,
            "created_s": release.created_s, "rounds": list(release.rounds), "epsilon": release.epsilon,
            "delta": release.delta, "clip_norm": release.clip_norm, "validation": asdict(release.validation)}}
        directory = _write_version(self.root / "versions", release.version, files, data, card)
        load_model(directory)  # the card matches what was written, before anything points at it
        state = self._state()
        _link(self.root, release.version)
        state["installed"].append(release.version)
        state["highest_seen"] = max(state["highest_seen"], release.version)
        _write_state(self.root, state)
        self._prune(state["installed"])
        return directory

    def rollback(self, reason: str = "rolled back") -> int:
        """Make the previously installed version current again; the version left is never installed again.
        Returns the version now current; ModelError when there is nothing to go back to."""
        state = self._state()
        if len(state["installed"]) < 2 or not (self.root / "versions" / str(state["installed"][-2])).is_dir():
            raise ModelError(f"{self.root}: no previous version to roll back to (installed: {state['installed']})")
        left = state["installed"].pop()
        _link(self.root, state["installed"][-1])
        state["refused"][str(left)] = reason
        state["highest_seen"] = max(state["highest_seen"], left)
        _write_state(self.root, state)
        return state["installed"][-1]

    def _prune(self, installed: list[int]) -> None:
        keep = {str(v) for v in installed[-KEEP_VERSIONS:]}
        for p in (self.root / "versions").iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)


def _write_version(versions: Path, version: int, files: ModelFiles, head: bytes, card: dict) -> Path:
    """versions/{version} holding files' backbone (linked or copied), `head` and `card` (its head entry set to
    `head`'s hash), written in a partial dir first and renamed in whole. Its path."""
    final = versions / str(version)
    partial = versions / f".partial-{version}"
    for leftover in (partial, final):  # a crash's leftovers; never the current version (verify refuses those)
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir()
    try:
        os.link(files.backbone, partial / "backbone.onnx")
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(files.backbone, partial / "backbone.onnx")
    write_atomic(partial / "head.npz", head)
    card = {**card, "files": {**card["files"], "head.npz": {"sha256": sha256_file(partial / "head.npz"),
                                                             "bytes": len(head)}}}
    write_atomic(partial / "card.json", (json.dumps(card, indent=1) + "\n").encode())
    fsync_path(partial / "backbone.onnx")
    os.rename(partial, final)
    fsync_path(versions)
    return final


def _link(root: Path, version: int) -> None:
    """Point root/current at versions/{version}, atomically (a new symlink renamed over the old)."""
    tmp = root / ".current.partial"
    tmp.unlink(missing_ok=True)
    os.symlink(f"versions/{version}", tmp)
    os.replace(tmp, root / "current")
    fsync_path(root)


def _well_formed(state: object) -> bool:
    """Whether `state` has the shape _write_state writes: installed [int], refused {"int": str}, highest_seen int."""
    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    return (isinstance(state, dict) and isinstance(state.get("installed"), list)
            and all(whole(v) for v in state["installed"]) and isinstance(state.get("refused"), dict)
            and all(re.fullmatch(r"-?[0-9]+", k) and isinstance(v, str) for k, v in state["refused"].items())
            and whole(state.get("highest_seen")))


def _write_state(root: Path, state: dict) -> None:
    write_atomic(root / STATE_FILE, (json.dumps(state, indent=1, sort_keys=True) + "\n").encode())


# --- the installer: verify, check, install, swap -------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """The device's trust anchor for releases: the coordinator's id and Ed25519 public key (pinned at set-up)."""

    coordinator_id: str
    coordinator_sign_key: bytes


class Status(StrEnum):
    """What became of an offered release."""

    INSTALLED = "installed"
    DUPLICATE = "duplicate"  # the version running or already handled (a retained message seen again)
    REFUSED = "refused"  # failed verification
    REJECTED_LOCALLY = "rejected_locally"  # worse on the owner's labels
    FAILED = "failed"  # verified and accepted, but the service could not load it (the old model runs on)
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True)
class Outcome:
    """The fate of a release (or a rollback): status, the version concerned, why, the running model's version
    string after it (ModelFiles.version), and the local check when one ran."""

    status: Status
    version: int | None
    reason: str
    model_version: str | None = None
    check: LocalCheck | None = None


#: The analytics counter of each release outcome (a duplicate, seen on every reconnect, is not an event).
_OUTCOME_EVENTS = {Status.INSTALLED: "model.install.release", Status.REJECTED_LOCALLY: "model.refused.validation",
                   Status.FAILED: "error.model_load"}


class ReleaseInstaller:
    """Verifies an offered release against `trust`, checks it on `store`'s labels, installs it in `versions` and
    calls `reload` (DeviceService.reload, whose config.model_dir is versions.current); `rollback` undoes the
    last install. One offer at a time."""

    def __init__(self, versions: ModelVersions, store: Store, trust: Trust, model_id: str,
                 reload: Callable[[], str] | None = None, policy: LocalCheckPolicy | None = None):
        self.versions, self.store, self.trust, self.model_id = versions, store, trust, model_id
        self.reload, self.policy = reload, policy or LocalCheckPolicy()
        self._lock = threading.Lock()

    def offer(self, raw: bytes) -> Outcome:
        """Handle one release message (the envelope bytes from the retained topic); its outcome is counted in the
        day's analytics (model.install.release, model.refused.*)."""
        outcome = self._offer(raw)
        event = _OUTCOME_EVENTS.get(outcome.status)
        if outcome.status is Status.REFUSED and outcome.version is None:
            event = "model.refused.signature"  # it did not verify (signature, signer, model or backbone)
        if event is not None:
            count_quietly(self.store, event)
        return outcome

    def _offer(self, raw: bytes) -> Outcome:
        with self._lock:
            files = load_model(self.versions.current)
            try:
                release = verify_release(raw, self.trust.coordinator_sign_key, self.versions.highest_seen(),
                                         files.card["files"]["backbone.onnx"]["sha256"], self.trust.coordinator_id,
                                         self.model_id)
            except StaleRelease as exc:
                earlier = self.versions.refused().get(exc.version)
                if earlier is not None:
                    return Outcome(Status.REFUSED, exc.version, f"version {exc.version} was refused here before:"
                                                                f" {earlier}", files.version)
                status = Status.DUPLICATE if exc.version == exc.highest else Status.REFUSED
                return Outcome(status, exc.version, str(exc), files.version)
            except ReleaseError as exc:
                return Outcome(Status.REFUSED, None, str(exc), files.version)
            current, candidate = Head.load(files.head), release.head()
            if candidate.embed != current.embed:
                reason = f"release {release.version}: head over {candidate.embed}-dim embeddings, backbone gives" \
                         f" {current.embed}"
                self.versions.note_refused(release.version, reason)
                log.warning("release refused: %s", reason)
                count_quietly(self.store, "model.refused.backbone")
                return Outcome(Status.REFUSED, release.version, reason, files.version)
            check = local_check(labelled_records(self.store), current, candidate,
                                files.threshold if files.threshold is not None else 0.5, self.policy)
            if not check.accept:
                self.versions.note_refused(release.version, check.reason)
                log.info("release %d of %s %s", release.version, release.model_id, check.reason)
                return Outcome(Status.REJECTED_LOCALLY, release.version, check.reason, files.version, check)
            self.versions.install(release)
            try:
                model_version = self.reload() if self.reload is not None else load_model(self.versions.current).version
            except Exception as exc:  # the service refused the files: back to the model it runs
                self.versions.rollback(f"the service could not load it: {exc}")
                log.error("release %d installed but not loaded (%s); rolled back", release.version, exc)
                return Outcome(Status.FAILED, release.version, str(exc), files.version, check)
            log.info("installed release %d of %s (%s): %s", release.version, release.model_id, model_version,
                     check.reason)
            return Outcome(Status.INSTALLED, release.version, check.reason, model_version, check)

    def rollback(self, reason: str = "rolled back by the owner") -> Outcome:
        """Go back to the previously installed version and reload; the version left is never installed again."""
        with self._lock:
            left = self.versions.current_version()
            now = self.versions.rollback(reason)
            model_version = self.reload() if self.reload is not None else load_model(self.versions.current).version
            log.info("rolled back from version %d to %d (%s)", left, now, reason)
            count_quietly(self.store, "model.install.rollback")
            return Outcome(Status.ROLLED_BACK, now, f"version {left} -> {now}: {reason}", model_version)


class ReleaseListener:
    """Hands the releases of one model from an MQTT transport to an installer, on a thread of its own (paho's
    network thread must not load models). Wire `on_message` into the device's sda.mqtt.Transport (with
    manual_ack the broker's acknowledgement waits until the release was handled) and subscribe it to `topic`."""

    def __init__(self, installer: ReleaseInstaller, on_outcome: Callable[[Outcome], None] | None = None):
        self.installer, self.on_outcome = installer, on_outcome
        self.topic = topics.release(installer.model_id)
        self._queue: queue.Queue[tuple[bytes, Callable[[], None]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="release-listener", daemon=True)

    def start(self) -> ReleaseListener:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the releases queued, then stop."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def on_message(self, topic: str, payload: bytes, retained: bool, ack: Callable[[], None]) -> None:
        """Transport callback: queue a release of our model; acknowledge anything else at once."""
        if topic != self.topic:
            ack()
            return
        self._queue.put((payload, ack))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            payload, ack = item
            started = time.monotonic()
            try:
                outcome = self.installer.offer(payload)
            except Exception:  # a bug or a disk error: logged, the service keeps running the model it has
                log.exception("handling a release failed")
                ack()
                continue
            ack()
            log.debug("release handled in %.2f s: %s", time.monotonic() - started, outcome.status.value)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
