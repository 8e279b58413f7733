"""`assistant demo` (what `make demo` runs), small: 6 device processes with the real device code over the embedded
broker, one analytics round and 2 learning rounds; and `assistant run --input` for anyone without a microphone."""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from assistant.demo.device import truth_label
from assistant.demo.story import DemoOptions, run_demo

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "tests" / "data" / "kws" / "positive_hey_snips_en-gb_male3.wav"


@pytest.mark.slow
def test_demo_with_6_devices_and_2_rounds(tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("assistant-demo-*"))
    out = io.StringIO()
    s = run_demo(DemoOptions(devices=6, rounds=2, out_dir=tmp_path / "plots"), out=out)
    text = out.getvalue()
    assert s.rounds_completed == 2, text
    # every revealed sum (the analytics day and each learning round) is the true sum plus the clerks' noise
    assert len(s.checks) == 3 and all(c.ok for c in s.checks), [(c.aggregation, c.ratio) for c in s.checks]
    assert all(c.participants == 6 for c in s.checks)
    assert "revealed sums checked against the truth: 3 of 3 right" in text
    # the clerks were paid for their work
    assert len(s.tokens) == 3 and all(v > 0 for v in s.tokens.values()), s.tokens
    # the devices heard their audio and the owners labelled it
    assert s.heard[0]["wake_words"] == 72 and s.heard[0]["heard_wake_words"] > 30 and s.heard[0]["labels"] > 30
    assert 0 < s.epsilon_spent <= 8.0
    # every device got the last release (retained topic), checked it on its own labels and installed or refused it
    assert not s.releases or s.release_fates == 6
    assert 0 <= s.before.frr <= 1 and 0 <= s.after.frr <= 1 and s.before.wake_words == 24
    assert {p.name for p in s.plots} == {"demo-accuracy.png", "demo-analytics.png"}
    assert all(p.stat().st_size > 1000 for p in s.plots)
    assert s.bytes_by_role["device (mean)"][0] > 0 and s.bytes_by_role["clerk (mean)"][0] > 0
    assert "== summary ==" in text and "tokens earned per clerk: dev00-clerk" in text
    # cleaned up after itself: no state folder left behind, no device process running
    assert set(Path(tempfile.gettempdir()).glob("assistant-demo-*")) == before
    ps = subprocess.run(["pgrep", "-f", "assistant.demo.device"], capture_output=True, text=True)
    assert ps.stdout.strip() == ""


def test_demo_options_are_checked():
    from assistant.errors import AssistantError

    with pytest.raises(AssistantError, match="--devices 3"):
        DemoOptions(devices=3)
    with pytest.raises(AssistantError, match="--clerks 2"):
        DemoOptions(devices=10, clerks=2)
    with pytest.raises(AssistantError, match="--rounds 0"):
        DemoOptions(rounds=0)
    assert DemoOptions(devices=20).committee == 8 and DemoOptions(devices=6).committee == 3


def test_the_simulated_owner_knows_a_wake_word_by_its_time():
    import numpy as np

    wake = np.array([[10.0, 10.8], [30.0, 30.6]])
    assert truth_label(10.5, wake) and truth_label(31.9, wake) and truth_label(9.6, wake)
    assert not truth_label(20.0, wake) and not truth_label(32.5, wake)


def test_run_with_input_works_without_a_microphone(tmp_path):
    r = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--input", str(CLIP), "--store",
                        str(tmp_path / "store"), "--no-verifier"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if "hey_snips  score" in ln]
    assert len(lines) == 1 and "summary: " in r.stdout and "1 detection," in r.stdout
    assert f"listening to file {CLIP}" in r.stderr
