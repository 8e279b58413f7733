"""The personal verifier (issue 7): trained on the owner's labels in a real store, it raises precision for an
owner whose false alarms cluster in one region of embedding space while keeping nearly every real wake word;
with few labels it agrees with everything; it survives a save and load; both Newton solvers agree; and the
module has no way to send anything."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from assistant.audio import RingBuffer
from assistant.kws.head import Head
from assistant.learning import verifier as verifier_module
from assistant.learning.errors import LearningError
from assistant.learning.verifier import (
    Verifier,
    VerifierPolicy,
    fit,
    fit_logistic,
    load_verifier,
    retrain,
    verifier_path,
)
from assistant.store import Label, Store

WINDOW, EMBED = 8, 16  # 128 features: more than the owner's labels, as on a real device (1024)
T0 = 1_750_000_000.0


class Owner:
    """A synthetic household: the owner's wake words vary around one pattern; the head's false alarms come from
    one thing in the room (a TV jingle, say): a tight cluster elsewhere in embedding space."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.wake = rng.standard_normal((WINDOW, EMBED))
        self.jingle = self.wake + 0.4 * rng.standard_normal((WINDOW, EMBED))  # close: the head confuses them

    def says(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.wake + rng.standard_normal((n, WINDOW, EMBED))

    def false_alarms(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.jingle + 0.7 * rng.standard_normal((n, WINDOW, EMBED))


def head() -> Head:
    return Head.init(WINDOW, EMBED, 4, np.random.default_rng(0))


def label_rows(store: Store, windows: np.ndarray, label: Label) -> list[int]:
    ids = [store.record_detection(np.zeros(1600, np.int16), 0.9, "m1", w.astype(np.float32), time_s=T0 + i)
           for i, w in enumerate(windows)]
    store.label(ids, label, time_s=T0 + 1000)
    return ids


def precision_recall(v: Verifier, owner: Owner, rng: np.random.Generator) -> tuple[float, float]:
    """Every test window made the head fire: precision and recall of head + verifier."""
    real, false = owner.says(400, rng), owner.false_alarms(400, rng)
    kept_real, kept_false = int(v.agrees(real).sum()), int(v.agrees(false).sum())
    return kept_real / max(1, kept_real + kept_false), kept_real / len(real)


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_the_verifier_raises_precision_for_an_owner_with_clustered_false_alarms(store):
    owner, rng = Owner(), np.random.default_rng(1)
    label_rows(store, owner.says(30, rng), Label.TRUE_ACCEPT)
    label_rows(store, owner.false_alarms(15, rng), Label.FALSE_ACCEPT)
    ring = RingBuffer(1.0)
    ring.append(np.zeros(16000, np.int16))
    miss = np.concatenate([owner.false_alarms(1, rng)[0], owner.says(1, rng)[0]])  # the word in its second half
    store.label(store.record_captured_miss(ring, 1.0, "m1", miss.astype(np.float32), 0.3), Label.MISSED_WAKE_WORD)
    v = retrain(store, head())
    assert v.active and (v.true_labels, v.false_labels) == (31, 15)
    assert verifier_path(store).is_file()
    precision, recall = precision_recall(v, owner, np.random.default_rng(2))
    print(f"precision {precision:.3f}, recall {recall:.4f}, cross-validated: {v.cv_true_rejected:.3f} of wake words"
          f" and {v.cv_false_rejected:.3f} of false alarms rejected")
    assert precision > 0.85  # the head alone: 400 real and 400 false alarms, precision 0.5
    assert recall > 0.95
    assert v.cv_true_rejected <= 0.05 and v.cv_false_rejected > 0.7
    again = load_verifier(store, head())
    probe = owner.says(5, rng)
    assert np.allclose(again.logits(probe), v.logits(probe)) and again.threshold == v.threshold


def test_with_few_labels_the_verifier_agrees_with_everything(store):
    owner, rng = Owner(), np.random.default_rng(3)
    label_rows(store, owner.says(30, rng), Label.TRUE_ACCEPT)
    label_rows(store, owner.false_alarms(4, rng), Label.FALSE_ACCEPT)  # one short of the default minimum
    v = retrain(store, head())
    assert not v.active and (v.true_labels, v.false_labels) == (30, 4)
    assert v.agrees(owner.false_alarms(50, rng)).all() and v.accepts(owner.false_alarms(1, rng)[0])
    # no saved verifier, or one for another window: inactive
    verifier_path(store).unlink()
    assert not load_verifier(store, head()).active
    Verifier.inactive(WINDOW + 1, EMBED).save(verifier_path(store))
    assert not load_verifier(store, head()).active and load_verifier(store, head()).window == WINDOW


def test_it_never_rejects_what_it_thinks_is_more_likely_the_owner(store):
    owner, rng = Owner(seed=5), np.random.default_rng(5)
    x = np.concatenate([owner.says(20, rng), owner.false_alarms(20, rng)])
    y = np.r_[np.ones(20), np.zeros(20)]
    v = fit(x, y, VerifierPolicy(max_reject_rate=0.5))  # a reckless rate is still capped at p = 1/2
    assert v.threshold <= 0.0
    test = np.concatenate([owner.says(200, rng), owner.false_alarms(200, rng)])
    logits = v.logits(test)
    assert np.array_equal(v.agrees(test), logits >= v.threshold)
    assert v.agrees(test)[logits >= 0].all()


def test_primal_and_dual_newton_steps_find_the_same_fit():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((30, 12))
    y = (x[:, 0] + 0.5 * rng.standard_normal(30) > 0).astype(float)
    wide = np.hstack([x, np.zeros((30, 40))])  # 52 features > 30 examples: the dual path
    w1, b1 = fit_logistic(x, y, 1.0)
    w2, b2 = fit_logistic(wide, y, 1.0)
    assert np.allclose(w2[:12], w1, atol=1e-6) and np.allclose(w2[12:], 0) and b2 == pytest.approx(b1, abs=1e-6)
    with pytest.raises(LearningError, match="both classes"):
        fit_logistic(x, np.ones(30), 1.0)


def test_a_corrupt_verifier_file_is_refused_by_name(tmp_path):
    (tmp_path / "verifier.npz").write_bytes(b"junk")
    with pytest.raises(LearningError, match="verifier"):
        Verifier.load(tmp_path / "verifier.npz")


def test_the_verifier_module_has_no_network_code():
    """Its parameters stay on the device: nothing in the module can open a connection or reach sda."""
    tree = ast.parse(inspect.getsource(verifier_module))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    banned = ("socket", "http", "urllib", "paho", "sda", "requests", "mqtt", "transport", "hermes", "control")
    assert not [m for m in imported if any(b in m for b in banned)], imported
