"""The developer's side of learning from the command line: building the validation set the release gate uses,
and `assistant coordinator`'s noise options refused before anything connects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from assistant.kws.backbone import sha256_file
from assistant.learning.validation import ValidationSet
from models import validation

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "hey_snips"


def test_the_validation_set_is_built_by_the_models_backbone_and_read_back(tmp_path, capsys):
    out = tmp_path / "v" / "validation.npz"
    assert validation.main(["--model", str(MODEL), "--out", str(out), "--positives", "4", "--negatives", "6"]) == 0
    vset = ValidationSet.load(out)
    assert vset.positives == 4 and vset.negative_windows > 0
    assert vset.backbone_sha256 == sha256_file(MODEL / "backbone.onnx") and vset.window == 16
    first = out.stat().st_mtime_ns
    assert validation.main(["--model", str(MODEL), "--out", str(out), "--positives", "4", "--negatives", "6"]) == 0
    assert out.stat().st_mtime_ns == first  # same model, window and recipe: read back, not rebuilt
    assert "4 positive clips" in capsys.readouterr().out


def test_a_model_directory_that_is_not_one_is_a_clear_error(tmp_path, capsys):
    assert validation.main(["--model", str(tmp_path), "--out", str(tmp_path / "v.npz")]) == 1
    assert "models.validation: error:" in capsys.readouterr().err


def test_clerk_noise_without_a_committee_size_is_refused_before_connecting(tmp_path):
    vset = tmp_path / "v.npz"
    assert validation.main(["--model", str(MODEL), "--out", str(vset), "--positives", "2", "--negatives", "2"]) == 0
    r = subprocess.run([str(Path(sys.executable).with_name("assistant")), "coordinator", "--state", str(tmp_path / "c"),
                        "--broker", "mqtt://coordinator:x@127.0.0.1:1", "--model", str(MODEL),
                        "--validation", str(vset), "--noise-added-by", "clerks"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "needs committee_size" in r.stderr, r.stderr


def test_broker_file_keeps_the_password_out_of_argv(tmp_path):
    import argparse

    import pytest

    from assistant.cli import _broker_url
    from assistant.errors import AssistantError

    f = tmp_path / "broker.url"
    f.write_text("mqtt://coordinator:s3cret@127.0.0.1:1883\n")
    assert _broker_url(argparse.Namespace(broker=None, broker_file=f)) == "mqtt://coordinator:s3cret@127.0.0.1:1883"
    f.write_text("\n")
    with pytest.raises(AssistantError, match="empty"):
        _broker_url(argparse.Namespace(broker=None, broker_file=f))
    with pytest.raises(AssistantError, match="cannot read"):
        _broker_url(argparse.Namespace(broker=None, broker_file=tmp_path / "absent"))
