"""Wake-word evaluation on a fixed, regenerable test set from held-out voices.

Positives: the wake word spoken by held-out espeak-ng voices (never heard in training), each in
3 s of noise at 10 dB SNR. Negatives: at least `--negative-hours` of held-out-voice sentences,
confusable phrases, noise and silence, streamed through the engine exactly as the device would.
A hit is a detection between the keyword's start and 0.5 s after its end; detections are merged
with a 2 s refractory window (patience 1 for every engine, so engines compare on scores alone).
Reported per engine: FRR at 0.1, 0.5 and 1.0 false accepts per hour, CPU ms per 80 ms frame on
one thread, peak RSS of the process that ran it, and the p95 delay from the keyword's end to the
detection. Also a DET plot (PNG). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from assistant.audio import FRAME_SAMPLES, SAMPLE_RATE  # noqa: E402
from models import data as D  # noqa: E402

REFRACTORY_S = 2.0
BUDGETS = (0.1, 0.5, 1.0)


def positives(wakeword: str, n: int, seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One stream of n 3-second clips; returns samples and each keyword's (start_s, end_s)."""
    rng = np.random.default_rng(seed)
    _, test = D.split_voices(D.espeak_voices())
    clips, spans = [], []
    for i in range(n):
        v = test[rng.integers(len(test))]
        kw = D.synthesize(wakeword, v, int(rng.integers(20, 80)), int(rng.integers(120, 200))).astype(np.float64)
        clip = np.zeros(3 * SAMPLE_RATE)
        start = int(rng.uniform(0.5, 3.0 - len(kw) / SAMPLE_RATE - 0.6) * SAMPLE_RATE) if len(kw) < 1.9 * SAMPLE_RATE \
            else int(0.3 * SAMPLE_RATE)
        clip[start : start + len(kw)] = kw[: len(clip) - start]
        mixed = D.mix_at_snr(clip, D.noise(str(rng.choice(["white", "pink", "brown"])), len(clip), rng), 10.0)
        # keep the noise level of the whole clip equal to the keyword's SNR window
        clips.append(D.to_int16(mixed))
        t0 = 3.0 * i
        spans.append((t0 + start / SAMPLE_RATE, t0 + (start + len(kw)) / SAMPLE_RATE))
    return np.concatenate(clips), spans


def negatives(wakeword: str, hours: float, seed: int):
    """Yield int16 segments totalling `hours`: sentences and confusables by held-out voices, noise, silence."""
    rng = np.random.default_rng(seed)
    _, test = D.split_voices(D.espeak_voices())
    total, want = 0, int(hours * 3600 * SAMPLE_RATE)
    while total < want:  # counted in whole 80 ms frames, as they are scored
        kind = rng.integers(5)
        if kind <= 1:
            text = str(rng.choice(D.SENTENCES))
        elif kind == 2:
            text = str(rng.choice(D.CONFUSABLE[wakeword]))
        else:
            text = None
        if text is not None:
            v = test[rng.integers(len(test))]
            seg = D.synthesize(text, v, int(rng.integers(20, 80)), int(rng.integers(120, 200))).astype(np.float64)
            seg = D.mix_at_snr(seg, D.noise("pink", len(seg), rng), rng.uniform(5, 25))
        elif kind == 3:
            seg = D.noise(str(rng.choice(["white", "pink", "brown"])), int(rng.uniform(1, 6) * SAMPLE_RATE), rng)
            seg *= 10 ** rng.uniform(1.0, 3.5)
        else:
            seg = D.noise("white", int(rng.uniform(1, 4) * SAMPLE_RATE), rng) * 20  # near silence
        seg = D.to_int16(seg)
        total += len(seg) // FRAME_SAMPLES * FRAME_SAMPLES
        yield seg


def ours(model_dir: Path):
    """A scorer for our engine: frame -> score or None (same code as the device)."""
    from assistant.kws.backbone import Backbone
    from assistant.kws.detector import Detector
    from assistant.kws.engine import Engine
    from assistant.kws.head import Head

    engine = Engine(Backbone(model_dir / "backbone.onnx"), Head.load(model_dir / "head.npz"), Detector())
    # Thresholds are swept over logits: probabilities saturate at exactly 1.0 and would tie.
    return lambda frame: engine.process(frame).logit, engine.reset


def stream_scores(score, samples: np.ndarray) -> np.ndarray:
    """Scores per 80 ms frame (NaN until the engine's windows fill). (frames,)"""
    out = []
    for i in range(0, len(samples) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        s = score(samples[i : i + FRAME_SAMPLES])
        out.append(np.nan if s is None else s)
    return np.array(out)


def events(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Frame indices where a detection fires: score >= threshold, then quiet for REFRACTORY_S."""
    gap = int(REFRACTORY_S * 1000 / 80)
    fired, quiet_until = [], -1
    for i in np.nonzero(scores >= threshold)[0]:
        if i >= quiet_until:
            fired.append(i)
            quiet_until = i + gap
    return np.array(fired, int)


def evaluate(name: str, model_dir: str, wakeword: str, n_pos: int, hours: float, seed: int, q) -> None:
    """Run one engine in this (child) process and put its figures on q."""
    score, reset = ours(Path(model_dir))
    pos, spans = positives(wakeword, n_pos, seed)
    reset()
    pos_scores = stream_scores(score, pos)
    neg_scores, frames, cpu = [], 0, 0.0
    reset()
    for seg in negatives(wakeword, hours, seed + 1):
        t0 = time.process_time()
        neg_scores.append(stream_scores(score, seg))
        cpu += time.process_time() - t0
        frames += len(neg_scores[-1])
    floor = -1e9  # frames before the engine's windows fill never fire
    neg = np.nan_to_num(np.concatenate(neg_scores), nan=floor)
    pos_s = np.nan_to_num(pos_scores, nan=floor)
    neg_hours = frames * 0.08 / 3600
    # Logit thresholds: a grid, plus every one of the 300 highest negative peaks (where the
    # false-accept budgets are decided), plus just above the highest.
    top = np.sort(neg)[-300:]
    thresholds = np.unique(np.concatenate([np.linspace(-10, 30, 161), top, [neg.max() + 1e-6]]))
    frr, fah, delays = [], [], {}
    for th in thresholds:
        fah.append(len(events(neg, th)) / neg_hours)
        hit_frames = events(pos_s, th)
        hit_t = (hit_frames + 1) * 0.08
        hits = 0
        for (a, b) in spans:
            inside = hit_t[(hit_t >= a) & (hit_t <= b + 0.5)]
            if len(inside):
                hits += 1
                delays.setdefault(float(th), []).append(float(inside[0] - b))
        frr.append(1 - hits / len(spans))
    frr, fah = np.array(frr), np.array(fah)
    out = {"name": name, "negative_hours": round(neg_hours, 3), "positives": len(spans),
           "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 4),
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "det": {"fa_per_hour": fah.tolist(), "frr": frr.tolist()}}
    for budget in BUDGETS:
        ok = np.nonzero(fah <= budget)[0]
        i = ok[np.argmin(frr[ok])] if len(ok) else len(thresholds) - 1
        out[f"frr_at_{budget}"] = round(float(frr[i]), 4)
        if budget == 0.5:
            d = delays.get(float(thresholds[i]), [])
            out["latency_p95_ms"] = round(1000 * float(np.percentile(d, 95)), 1) if d else None
            out["logit_threshold_at_0.5"] = round(float(thresholds[i]), 4)
    q.put(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--negative-hours", type=float, default=6.0)
    p.add_argument("--positives", type=int, default=400)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "kws_det.png")
    args = p.parse_args(argv)
    engines = {"ours_hey_jarvis": (args.models / "hey_jarvis", "hey jarvis"),
               "ours_hey_snips": (args.models / "hey_snips", "hey snips")}
    missing = sorted(n for n, (d, _) in engines.items() if not (d / "backbone.onnx").exists())
    engines = {n: e for n, e in engines.items() if n not in missing}
    for n in missing:
        print(f"{n}: no model in {args.models}; skipped (train it with python -m models.train)", file=sys.stderr)
    if not engines:
        print("no engine to evaluate", file=sys.stderr)
        return 1
    ctx = mp.get_context("spawn")
    results = {}
    for name, (model_dir, wakeword) in engines.items():
        q = ctx.Queue()
        proc = ctx.Process(target=evaluate, args=(name, str(model_dir), wakeword, args.positives,
                                                  args.negative_hours, args.seed, q))
        proc.start()
        results[name] = q.get()
        proc.join()
        print(f"{name}: FRR@0.5FA/h {results[name]['frr_at_0.5']}, {results[name]['cpu_ms_per_frame']} ms/frame",
              file=sys.stderr, flush=True)
    _plot(results, args.plot)
    first = next(iter(results.values()))
    out = {"negative_hours": first["negative_hours"], "positives": first["positives"], "det_plot": str(args.plot),
           "missing": missing,
           "engines": {k: {m: v[m] for m in ("frr_at_0.1", "frr_at_0.5", "frr_at_1.0", "cpu_ms_per_frame",
                                              "peak_rss_mb", "latency_p95_ms")} for k, v in results.items()}}
    print(json.dumps(out))
    return 0


def _plot(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no DET plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        fah, frr = np.array(r["det"]["fa_per_hour"]), np.array(r["det"]["frr"])
        keep = fah > 0  # zero false accepts has no place on a log axis; the JSON keeps those points
        order = np.argsort(fah[keep], kind="stable")
        ax.plot(fah[keep][order], frr[keep][order], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("false accepts per hour")
    ax.set_ylabel("false rejection rate")
    ax.set_title("DET on held-out voices")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
