"""`assistant data`: the owner exports, prunes and deletes what the device keeps."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np

from assistant.store import Store


def data(*args, store, stdin=None):
    return subprocess.run([sys.executable, "-m", "assistant.cli", "data", *map(str, args), "--store", str(store)],
                          capture_output=True, text=True, timeout=60, input=stdin)


def seeded(tmp_path, n=3):
    root = tmp_path / "store"
    with Store(root) as s:
        for i in range(n):
            s.record_detection(np.full(1600, 1000 * (i + 1), np.int16), 0.9, "m1", np.ones((2, 3), np.float32))
        s.label(1, "true_accept")
    return root


def test_export_writes_every_row_and_clip(tmp_path):
    root = seeded(tmp_path)
    out = data("export", tmp_path / "mine.zip", store=root)
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(tmp_path / "mine.zip") as z:
        names = z.namelist()
        doc = json.loads(z.read("store.json"))
    assert sum(n.startswith("clips/") and n.endswith(".wav") for n in names) == 3
    assert len(doc["detections"]) == 3 and "true_accept" in json.dumps(doc)


def test_delete_everything_asks_then_leaves_nothing(tmp_path):
    root = seeded(tmp_path)
    refused = data("delete-everything", store=root)  # stdin is not a terminal: refuses without --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr and (root / "store.db").exists()
    done = data("delete-everything", "--yes", store=root)
    assert done.returncode == 0, done.stderr
    assert not root.exists() or not any(root.rglob("*"))


def test_retention_and_a_missing_store_are_explained(tmp_path):
    root = seeded(tmp_path)
    with Store(root) as s:
        s.mark_learned([1, 2])
    out = data("retention", store=root)
    assert out.returncode == 0 and "removed 2 clips" in out.stdout
    missing = data("export", tmp_path / "x.zip", store=tmp_path / "nowhere")
    assert missing.returncode == 1 and "no store in" in missing.stderr
