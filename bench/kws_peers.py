"""Peer wake-word engines for "hey jarvis", wrapped so bench/kws_eval.py can stream the same audio
through them as through our own engine, one 80 ms frame at a time.

Each adapter returns (score, reset): `score(frame)` takes 1280 int16 samples at 16 kHz and returns
one float per frame (higher = more confident; None while the engine's windows still hold audio from
before the stream began), `reset()` starts a new stream. Scores are logits computed from the
engine's probability, because the harness sweeps thresholds over a logit grid and a probability
that rounds to 1.0 would tie every confident frame.

- openWakeWord 0.5.1, `hey_jarvis_v0.1`: the three ONNX models shipped in the PyPI wheel, run by
  our own streaming code in ONNX Runtime (one thread, no spinning), the same way our engine runs.
- microWakeWord `hey_jarvis` (v2, 2024) through the `pymicro-wakeword` package (the `bench`
  extra), which bundles the quantised TFLite model, a TFLite C library and the micro frontend.

The pretrained openWakeWord models are licensed CC BY-NC-SA 4.0 (its README): fine for measuring
here, not for shipping.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from assistant.kws.backbone import sha256_file

FRAME_SAMPLES = 1280  # 80 ms at 16 kHz, as assistant.audio.FRAME_SAMPLES
P_CLIP = 1e-7  # float32 probabilities are clipped here before the logit; logit(1 - 1e-7) ~ 16.1

Scorer = tuple[Callable[[np.ndarray], float | None], Callable[[], None]]


class PeerUnavailable(Exception):
    """The peer's files or package could not be obtained; message says why and how to fix."""


def logit(p: float) -> float:
    """log(p) - log(1 - p) in float64, with p clipped to [P_CLIP, 1 - P_CLIP] so it stays finite."""
    p = min(max(float(p), P_CLIP), 1.0 - P_CLIP)
    return float(np.log(p) - np.log1p(-p))


# --- openWakeWord -------------------------------------------------------------------------------

OWW_VERSION = "0.5.1"
# SHA-256 of the files inside openwakeword-0.5.1-py3-none-any.whl (PyPI), checked after extraction.
OWW_FILES = {
    "melspectrogram.onnx": "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    "embedding_model.onnx": "70d164290c1d095d1d4ee149bc5e00543250a7316b59f31d056cff7bd3075c1f",
    "hey_jarvis_v0.1.onnx": "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
}
OWW_WHEEL_DIR = "openwakeword/resources/models/"

# The streaming pipeline of openwakeword 0.5.1 (utils.AudioFeatures._streaming_features and
# model.Model.predict). The mel model is an STFT of 512-sample windows every 160 samples with no
# padding, so each 80 ms frame plus the 480 samples before it gives exactly 8 new mel frames.
MEL_CONTEXT_SAMPLES = 480
MEL_BINS = 32
EMB_WINDOW_MELS = 76  # one embedding per 80 ms from the last 76 mel frames (0.775 s)
EMB_DIM = 96
CLF_WINDOW_EMBS = 16  # hey_jarvis_v0.1 reads the last 16 embeddings (1.28 s)


def _oww_wheel(cache: Path) -> Path:
    """The openwakeword wheel in `cache`, fetched with pip if it is not there yet."""
    name = f"openwakeword-{OWW_VERSION}-py3-none-any.whl"
    if (cache / name).exists():
        return cache / name
    cmd = [sys.executable, "-m", "pip", "download", f"openwakeword=={OWW_VERSION}", "--no-deps",
           "--only-binary=:all:", "--disable-pip-version-check", "--quiet", "-d", str(cache)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise PeerUnavailable(f"openWakeWord: `{' '.join(cmd)}` did not finish: {e}") from e
    if run.returncode != 0 or not (cache / name).exists():
        tail = (run.stderr or run.stdout).strip().splitlines()[-3:]
        raise PeerUnavailable(
            f"openWakeWord: could not download {name} from PyPI (pip exit {run.returncode}: "
            f"{' / '.join(tail) or 'no output'}); check that this machine reaches PyPI, or put the "
            f"wheel in {cache}")
    return cache / name


def openwakeword_files(cache: Path) -> dict[str, Path]:
    """The three ONNX files of openWakeWord's hey_jarvis_v0.1, extracted from the 0.5.1 wheel into
    cache/openwakeword-0.5.1/ and checked against their SHA-256. {file name: path}"""
    cache = Path(cache)
    out_dir = cache / f"openwakeword-{OWW_VERSION}"
    paths = {name: out_dir / name for name in OWW_FILES}
    if all(p.exists() and sha256_file(p) == OWW_FILES[n] for n, p in paths.items()):
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = _oww_wheel(cache)
    try:
        with zipfile.ZipFile(wheel) as z:
            for name, path in paths.items():
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(z.read(OWW_WHEEL_DIR + name))
                tmp.replace(path)  # atomic: a concurrent reader never sees half a model
    except (zipfile.BadZipFile, KeyError) as e:
        wheel.unlink(missing_ok=True)
        raise PeerUnavailable(f"openWakeWord: {wheel.name} is damaged or lacks {OWW_WHEEL_DIR}: {e}; "
                              "removed it, run again to fetch it anew") from e
    for name, path in paths.items():
        if sha256_file(path) != OWW_FILES[name]:
            raise PeerUnavailable(f"openWakeWord: {path} has SHA-256 {sha256_file(path)}, expected {OWW_FILES[name]}: "
                                  f"delete {wheel} and run again")
    return paths


def _onnx_session(path: Path):
    """One thread, no spinning, sequential: the settings of our own Backbone."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def openwakeword_hey_jarvis(cache: Path) -> Scorer:
    """openWakeWord's hey_jarvis_v0.1 as (score, reset); fetches the 0.5.1 wheel into `cache` once.

    Per 80 ms frame: log-mel of the frame plus the 480 samples before it (8 frames x 32 bins,
    rescaled x/10 + 2 as openWakeWord does), one 96-d embedding from the last 76 mel frames, and
    the classifier over the last 16 embeddings. None until 16 embeddings of this stream exist
    (25 frames, 2.0 s): openWakeWord itself pads its buffers and reports 0 for 5 frames instead.

    Score: logit of the classifier's float32 probability, clipped to [1e-7, 1 - 1e-7], so
    it lies in [-16.1, 16.1]; confident positives can still tie at the top. Note the model
    is two-stage: when the first classifier's p >= 0.5 it returns a verifier's p instead.
    """
    paths = openwakeword_files(Path(cache))
    mel_model = _onnx_session(paths["melspectrogram.onnx"])
    emb_model = _onnx_session(paths["embedding_model.onnx"])
    clf_model = _onnx_session(paths["hey_jarvis_v0.1.onnx"])
    mel_in, emb_in, clf_in = (m.get_inputs()[0].name for m in (mel_model, emb_model, clf_model))

    state: dict[str, np.ndarray] = {}

    def reset() -> None:
        state["tail"] = np.zeros(0, np.float32)
        state["mels"] = np.zeros((0, MEL_BINS), np.float32)
        state["embs"] = np.zeros((0, EMB_DIM), np.float32)

    def score(frame: np.ndarray) -> float | None:
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"frame: expected ({FRAME_SAMPLES},) int16 samples, got shape {frame.shape}")
        audio = np.concatenate([state["tail"], frame.astype(np.float32)])  # int16 scale, as openWakeWord
        state["tail"] = audio[-MEL_CONTEXT_SAMPLES:]
        mel = mel_model.run(None, {mel_in: audio[None]})[0].reshape(-1, MEL_BINS) / 10.0 + 2.0
        state["mels"] = np.concatenate([state["mels"], mel])[-EMB_WINDOW_MELS:]
        if len(state["mels"]) < EMB_WINDOW_MELS:
            return None
        emb = emb_model.run(None, {emb_in: state["mels"][None, :, :, None]})[0].reshape(1, EMB_DIM)
        state["embs"] = np.concatenate([state["embs"], emb])[-CLF_WINDOW_EMBS:]
        if len(state["embs"]) < CLF_WINDOW_EMBS:
            return None
        p = clf_model.run(None, {clf_in: state["embs"][None]})[0]
        return logit(p.item())

    reset()
    return score, reset


# --- microWakeWord ------------------------------------------------------------------------------

PYMICRO_WAKEWORD_VERSION = "2.5.0"  # pinned in pyproject.toml's bench extra


def microwakeword_hey_jarvis(cache: Path) -> Scorer:
    """microWakeWord's hey_jarvis (pymicro-wakeword 2.5.0) as (score, reset).

    The package bundles the model, so `cache` is not written to; it is kept for the same
    signature as the other peers. The micro frontend makes one 40-bin feature every 10 ms; the
    streaming model runs on every 3 features (30 ms) and the engine averages its last 5
    probabilities (150 ms), the value it compares with its cutoff of 0.97. Score: the logit
    (clipped as for openWakeWord) of the highest such average among the 2 or 3 model steps that
    end inside the 80 ms frame; None until the first full average (the first 2 frames).

    The model's output is uint8 (steps of 1/256), so the average moves in steps of 1/1280 and
    never exceeds 255/256 (logit 5.5): scores tie by construction, whatever transform is used.
    """
    del cache
    try:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model
    except ImportError as e:
        raise PeerUnavailable(
            f"microWakeWord: the pymicro-wakeword package is missing ({e}); install the bench extra: "
            f"`python -m pip install -e '.[bench]'` (or pymicro-wakeword=={PYMICRO_WAKEWORD_VERSION})") from e
    try:
        model = MicroWakeWord.from_builtin(Model.HEY_JARVIS)
    except (OSError, ValueError, RuntimeError) as e:
        raise PeerUnavailable(f"microWakeWord: pymicro-wakeword could not load its hey_jarvis model or its "
                              f"TFLite library on this machine: {e}") from e
    frontend = MicroWakeWordFeatures()
    stride, window = model.stride, model.sliding_window_size
    count = [0]  # features fed since reset: the model runs when count is a multiple of stride

    def reset() -> None:
        model.reset()
        frontend.reset()
        count[0] = 0

    def score(frame: np.ndarray) -> float | None:
        if frame.shape != (FRAME_SAMPLES,):
            raise ValueError(f"frame: expected ({FRAME_SAMPLES},) int16 samples, got shape {frame.shape}")
        best = None
        for feature in frontend.process_streaming(frame.astype("<i2").tobytes()):
            p = model.process_streaming_prob(feature)
            count[0] += 1
            # Between model steps the package returns 0.0, and it returns 0.0 until `window` steps
            # exist: neither is a score.
            if count[0] % stride == 0 and count[0] >= stride * window and p is not None:
                best = p if best is None else max(best, p)
        return None if best is None else logit(best)

    return score, reset
