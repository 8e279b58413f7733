"""The benchmark must keep running: a tiny run of bench/sda_seed.py checks its JSON contract."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sda_seed_benchmark_prints_one_json_object_with_checked_results():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sda_seed.py"), "--json", "--settings", "small",
         "--participants", "400", "--e2e-participants", "120", "--participant-runs", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    small = result["small"]
    for key in ("participants", "clerks", "upload_bytes_per_participant", "participant_ms",
                "clerk_download_bytes", "clerk_cold_s", "clerk_warm_s", "server_snapshot_s",
                "recipient_reveal_s", "end_to_end_correct"):
        assert key in small, key
    assert small["participants"] == 400 and small["clerks"] == 24
    assert small["end_to_end_correct"] is True
    assert small["recipient_reveal_correct"] is True
    # n * B * 4 bytes of shares plus the sealed seed: the upload can be no smaller.
    assert small["upload_bytes_per_participant"] > 24 * 10 * 4 + 80


PEERS = '''
import numpy as np


class PeerUnavailable(Exception):
    pass


def openwakeword_hey_jarvis(cache):
    raise PeerUnavailable(f"cannot fetch the model into {cache}")


def microwakeword_hey_jarvis(cache):
    """Loudness as the score, None for the first two frames of a stream."""
    seen = [0]

    def score(frame):
        seen[0] += 1
        return None if seen[0] <= 2 else float(np.abs(frame.astype(np.int64)).mean())

    def reset():
        seen[0] = 0

    return score, reset
'''


def test_kws_eval_engine_process_scores_the_cached_files_through_the_peer_hooks(tmp_path, monkeypatch):
    """The body of an engine's process, run here on a stand-in bench/kws_peers.py: a peer that
    raises PeerUnavailable is reported missing with its reason; another is fed every frame of the
    cached raw files (read in chunks, reset between positives and negatives)."""
    import importlib.util
    import queue

    import numpy as np

    monkeypatch.setattr(sys, "path", list(sys.path))  # kws_eval adds the repository and bench/ to it
    for name, path in (("kws_peers", tmp_path / "kws_peers.py"), ("kws_eval", ROOT / "bench" / "kws_eval.py")):
        if name == "kws_peers":
            path.write_text(PEERS)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
    kws_eval = sys.modules["kws_eval"]

    rng = np.random.default_rng(0)
    testset = tmp_path / "testset"
    testset.mkdir()
    pos = rng.standard_normal(1280 * 50 + 100) * 50  # a partial last frame: not scored
    for start_s in (0.5, 3.0):  # a loud "keyword" over (start_s, start_s + 0.5)
        pos[int(start_s * 16000) : int((start_s + 0.5) * 16000)] *= 20
    pos = pos.astype("<i2")
    neg = (rng.standard_normal(1280 * (kws_eval.CHUNK_FRAMES + 300)) * 50).astype("<i2")  # two chunks
    pos.tofile(testset / kws_eval.POSITIVES_FILE)
    neg.tofile(testset / kws_eval.NEGATIVES_FILE)
    specs = kws_eval.engine_specs(tmp_path / "models")

    q = queue.Queue()
    kws_eval.run_engine(specs["openwakeword_hey_jarvis"], str(testset), str(tmp_path / "cache"), q)
    assert q.get_nowait() == {"name": "openwakeword_hey_jarvis",
                              "missing": f"cannot fetch the model into {tmp_path / 'cache'}"}

    kws_eval.run_engine(specs["microwakeword_hey_jarvis"], str(testset), str(tmp_path / "cache"), q)
    msg = q.get_nowait()
    for got, audio in ((msg["positive_scores"], pos), (msg["negative_scores"], neg)):
        frames = audio[: len(audio) // 1280 * 1280].reshape(-1, 1280)
        want = np.abs(frames.astype(np.int64)).mean(axis=1)
        want[:2] = np.nan  # a reset before each file
        assert np.array_equal(got, want, equal_nan=True)
    assert msg["cpu_s"] > 0 and msg["peak_rss_mb"] > 10

    spans = [(0.5, 1.0), (3.0, 3.5)]
    figures = kws_eval.figures(msg, spans)
    assert figures["positives"] == 2 and figures["negative_hours"] == round(len(neg) / 16000 / 3600, 3)
    assert {"frr_at_0.1", "frr_at_0.5", "frr_at_1.0", "cpu_ms_per_frame", "peak_rss_mb",
            "latency_p95_ms"} <= set(figures)
    # loud keywords (std 1000) against quiet negatives (std 50): both are hit at any budget
    assert figures["frr_at_0.1"] == 0.0


def test_kws_eval_refuses_unknown_engines():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "kws_eval.py"), "--engines", "ours_hey_jarvis,nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown nope" in proc.stderr and "microwakeword_hey_jarvis" in proc.stderr


def test_soak_benchmark_runs_rounds_back_to_back_and_counts_the_intruders_rejected_messages():
    """A tiny bench/soak.py: 30 devices, 6 clerks on Mosquitto for 12 s of back-to-back rounds, every
    sum checked; the intruder's junk is rejected by the coordinator and no round fails."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--json", "--devices", "30", "--clerks", "6",
         "--minutes", "0.2", "--junk-per-round", "7", "--collect-s", "20", "--results-s", "20", "--grace-s", "25"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("rounds_completed", "failed_rounds", "round_p99_s", "coordinator_rss_growth_mb", "messages_rejected",
                "junk_sent", "round_mean_s", "round_p50_s", "round_max_s", "participants_min",
                "coordinator_rss_mb_start", "coordinator_rss_mb_end", "coordinator_rss_mb_peak", "broker"):
        assert key in result, key
    assert result["aborted"] is None
    assert result["failed_rounds"] == 0 and result["rounds_completed"] >= 2
    assert result["participants_min"] == 30 and result["devices"] == 30 and result["clerks"] == 6
    assert result["junk_sent"] >= 7 * result["rounds_completed"]
    assert result["messages_rejected"] > 0 and result["messages_rejected"] >= result["junk_sent"]


def test_fuzz_benchmark_runs_every_target_with_atheris_and_reports_its_inputs():
    """bench/fuzz.py, 100 inputs per target: every target runs coverage-guided (atheris is in the bench extra)
    and finds nothing; the counts are libFuzzer's."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--runs", "100"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["engine"] == "atheris" and result["crashes_total"] == 0
    assert len(result["targets"]) >= 15
    assert all(t["inputs"] >= 100 and t["crashes"] == 0 for t in result["targets"].values()), result
    assert result["inputs_total"] == sum(t["inputs"] for t in result["targets"].values())
