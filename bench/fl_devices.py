"""Simulated devices for bench/fl_sim.py: backbone embeddings of each device's own audio, computed once
and cached under bench/.cache (computing them is the expensive part; the simulation only runs heads).

A device is one held-out voice (models.data.split_voices' test side: espeak-ng variants never heard in
training and the recorded speaker slt, in flite and festival), its own noise colour and SNR and its own
room (or none). It hears `clips` wake words (half kept for training labels, half held out to measure its
FRR) and `clips` negative utterances (confusable phrases, evaluation-only sentences, random words) in
its voice, noise and room. Each clip is embedded exactly as the device's Engine does on a stream: one
64-dim embedding per 80 ms frame from the last 32 log-mel frames (assistant.kws.features.log_mel over the
whole clip gives the same frames as streaming).

The shared negative pool (for the threshold at 0.5 FA/h): the held-out negative audio of
bench/kws_eval.py's cached hey-snips test set when present (bench/.cache/kws_testset-v4-2026-6-400-
hey_snips), else synthesised with kws_eval.negatives; embedded once as one stream and cached.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
MODEL = ROOT / "models" / "hey_snips"
WAKEWORD = "hey snips"
FRAME = 1280  # samples per 80 ms audio frame
CONTEXT, WIN, HOP = 32, 400, 160
HIT_TAIL_S, FRAME_S = 0.5, 0.08
KWS_TESTSET = CACHE / "kws_testset-v4-2026-6-400-hey_snips"
KWS_TESTSET_SEED = 2026
BACKGROUND_SEED = 4242  # the devices' own background audio (implicit negatives): never the evaluation's
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def embed_stream(backbone, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """(embeddings (k, embed) float32 for audio frames f0..f0+k-1, f0): what the Engine computes frame by frame."""
    from assistant.kws.features import log_mel

    mel = log_mel(audio)
    n_frames = len(audio) // FRAME
    avail = 1 + (np.arange(1, n_frames + 1) * FRAME - WIN) // HOP  # mel frames the engine has after frame f
    ok = np.flatnonzero(avail >= CONTEXT)
    if not len(ok):
        return np.zeros((0, backbone.embed), np.float32), n_frames
    out = np.stack([backbone(mel[a - CONTEXT : a]) for a in avail[ok]]).astype(np.float32)
    return out, int(ok[0])


@dataclass(frozen=True, eq=False)
class DeviceSet:
    """Clips of every device, flat: emb (frames, embed) float16; clip c's embeddings are emb[start[c]:start[c+1]].
    Per clip: device, positive, test (held-out), and for positives the window indices [hit_lo, hit_hi) that
    count as a hit (window j ends at embedding j + window - 1). Per device: voice, noise, snr, rt60."""

    emb: np.ndarray
    start: np.ndarray
    device: np.ndarray
    positive: np.ndarray
    test: np.ndarray
    hit_lo: np.ndarray
    hit_hi: np.ndarray
    voice: np.ndarray
    noise: np.ndarray
    snr_db: np.ndarray
    rt60_s: np.ndarray
    seconds: float  # wall time it took to build (0 when read from the cache)

    @property
    def devices(self) -> int:
        return len(self.voice)

    def clip(self, c: int) -> np.ndarray:
        return self.emb[self.start[c] : self.start[c + 1]].astype(np.float32)


def _clip(speech: np.ndarray, rng: np.random.Generator, noise_kind: str, snr_db: float, room) -> tuple[np.ndarray,
                                                                                                      float, float]:
    """Speech after 0.8-1.2 s of lead and before 0.8 s of tail, in the device's room and noise: (int16, start, end)."""
    from models import data as D

    s = np.asarray(speech, np.float64)
    if room is not None:
        s = D.reverberate(s, room)
    lead, tail = int(rng.uniform(0.8, 1.2) * D.SAMPLE_RATE), int(0.8 * D.SAMPLE_RATE)
    x = np.zeros(lead + len(s) + tail)
    x[lead : lead + len(s)] = s
    ps = np.mean(s**2) if len(s) else 0.0
    bg = D.noise(noise_kind, len(x), rng)
    if ps > 0:
        x = x + bg * np.sqrt(ps / 10 ** (snr_db / 10))
    x *= 10 ** (rng.uniform(-6, 6) / 20)
    return D.to_int16(x), lead / D.SAMPLE_RATE, (lead + len(s)) / D.SAMPLE_RATE


def build_devices(n: int, clips: int, seed: int, window: int = 16) -> DeviceSet:
    """n devices with `clips` wake words (half held out) and `clips` negatives each (see the module doc)."""
    from assistant.kws.backbone import Backbone
    from models import data as D

    t0 = time.time()
    backbone = Backbone(MODEL / "backbone.onnx")
    _, test_voices = D.split_voices(D.all_voices())
    rng = np.random.default_rng(seed)
    embs, device, positive, test, hit_lo, hit_hi = [], [], [], [], [], []
    voices, noises, snrs, rt60s = [], [], [], []
    for i in range(n):
        voice = D.pick_voice(test_voices, rng)
        noise_kind = str(rng.choice(["white", "pink", "brown"]))
        snr = float(rng.uniform(0.0, 20.0))
        rt60 = float(rng.uniform(0.2, 0.8)) if rng.random() < 0.7 else 0.0
        room = D.room_impulse(rt60, rng) if rt60 > 0 else None
        pitch, speed = int(rng.integers(20, 80)), int(rng.integers(130, 190))
        negs = [str(rng.choice(D.CONFUSABLE[WAKEWORD])) if k % 3 == 0 else
                (str(rng.choice(D.TEST_SENTENCES)) if k % 3 == 1 else D.word_sequence(rng)) for k in range(clips)]
        texts = [WAKEWORD] * clips + negs
        reqs = [(t, voice, int(np.clip(pitch + rng.integers(-5, 6), 0, 99)), int(speed + rng.integers(-15, 16)))
                for t in texts]
        for k, sp in enumerate(D.synthesize_many(reqs)):
            audio, s0, s1 = _clip(sp, rng, noise_kind, snr, room)
            e, f0 = embed_stream(backbone, audio)
            embs.append(e.astype(np.float16))
            is_pos = k < clips
            # window j ends at frame f0 + j + window - 1, at time (that + 1) * FRAME_S
            ends = (f0 + np.arange(max(len(e) - window + 1, 0)) + window) * FRAME_S
            hit = np.flatnonzero((ends >= s0) & (ends <= s1 + HIT_TAIL_S)) if is_pos else np.arange(len(ends))
            device.append(i)
            positive.append(is_pos)
            test.append(is_pos and k % 2 == 1)
            hit_lo.append(int(hit[0]) if len(hit) else 0)
            hit_hi.append(int(hit[-1]) + 1 if len(hit) else 0)
        voices.append(voice.name)
        noises.append(noise_kind)
        snrs.append(snr)
        rt60s.append(rt60)
        if (i + 1) % max(1, n // 10) == 0:
            print(f"devices: {i + 1}/{n} built ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    start = np.concatenate([[0], np.cumsum([len(e) for e in embs])]).astype(np.int64)
    return DeviceSet(np.concatenate(embs), start, np.array(device), np.array(positive), np.array(test),
                     np.array(hit_lo), np.array(hit_hi), np.array(voices), np.array(noises), np.array(snrs),
                     np.array(rt60s), time.time() - t0)


def _model_tag() -> str:
    return hashlib.sha256((MODEL / "backbone.onnx").read_bytes()).hexdigest()[:8]


def load_devices(n: int, clips: int, seed: int, cache: Path = CACHE) -> DeviceSet:
    """build_devices, cached as bench/.cache/fl_devices-v1-<backbone>-<seed>-<n>-<clips>.npz."""
    path = cache / f"fl_devices-v1-{_model_tag()}-{seed}-{n}-{clips}.npz"
    fields = [f for f in DeviceSet.__dataclass_fields__ if f != "seconds"]
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return DeviceSet(*(z[f] for f in fields), seconds=0.0)
    ds = build_devices(n, clips, seed)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{f: getattr(ds, f) for f in fields})
    tmp.rename(path)
    return ds


def load_negatives(hours: float, seed: int = 2026, cache: Path = CACHE) -> tuple[np.ndarray, float, float]:
    """(embeddings (frames, embed) float16 of the shared negative stream, its hours, build seconds (0: cached))."""
    path = cache / f"fl_negatives-v1-{_model_tag()}-{seed}-{hours:g}.npy"
    if path.is_file():
        e = np.load(path)
        return e, len(e) * FRAME_S / 3600, 0.0
    from assistant.kws.backbone import Backbone

    t0 = time.time()
    want = int(hours * 3600 / FRAME_S) * FRAME
    src = KWS_TESTSET / "negatives.i16"  # bench/kws_eval.py's own negatives: seed 2026 only
    if seed == KWS_TESTSET_SEED and src.is_file() and src.stat().st_size >= 2 * want:
        audio = np.fromfile(src, "<i2", count=want)
    else:
        if str(BENCH) not in sys.path:
            sys.path.insert(0, str(BENCH))
        import kws_eval

        audio = np.concatenate([s[: len(s) // FRAME * FRAME] for s, _ in kws_eval.negatives(WAKEWORD, hours, seed + 1)])
    backbone = Backbone(MODEL / "backbone.onnx")
    parts, step = [], 600 * 16000 // FRAME * FRAME  # 10 min chunks, overlapping by the backbone's context
    overlap = 4 * FRAME  # > CONTEXT mel frames of audio
    for a in range(0, len(audio), step):
        lo = max(0, a - overlap)
        e, f0 = embed_stream(backbone, audio[lo : a + step])
        skip = (a - lo) // FRAME - f0  # drop the frames the previous chunk already gave
        parts.append(e[max(skip, 0) :] if a else e)
    e = np.concatenate(parts).astype(np.float16)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, e)
    return e, len(e) * FRAME_S / 3600, time.time() - t0
