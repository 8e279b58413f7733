"""Wake-word evaluation on a fixed, regenerable test set from held-out voices.

Positives: the wake word spoken by held-out voices (espeak-ng variants and the flite and festival
speaker never heard in training), each in 3 s of noise at 10 dB SNR. Negatives: at least
`--negative-hours` of held-out voices speaking evaluation-only sentences, random words and
confusable phrases, plus noise and near silence, streamed through the engine as the device would.
A hit is a detection between the keyword's start and 0.5 s after its end; detections are merged
with a 2 s refractory window (patience 1 for every engine, so engines compare on scores alone).
Reported per engine: FRR at 0.1, 0.5 and 1.0 false accepts per hour, CPU ms per 80 ms frame on
one thread, peak RSS of the process that ran it, and the p95 delay from the keyword's end to the
detection. Also a DET plot (PNG) of every engine. The last line printed is one JSON object.

The test set of each wake word is built once, in this process, and cached as raw int16 files under
`--cache` (reused when present). Each engine then runs in its own spawned process that reads the
audio from those files in chunks, so that process's peak RSS is the detector's own. Peer engines
(openWakeWord, microWakeWord) come from bench/kws_peers.py; one it cannot provide is listed as
missing with the reason.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import resource
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from assistant.audio import FRAME_SAMPLES, SAMPLE_RATE  # noqa: E402
from assistant.kws.evaluation import BUDGETS, FRAME_S, LOGIT_GRID, sweep_thresholds  # noqa: E402

POSITIVES_FILE, NEGATIVES_FILE, META_FILE = "positives.i16", "negatives.i16", "testset.json"
FRAME_BYTES = 2 * FRAME_SAMPLES
CHUNK_FRAMES = 1024  # 2.6 MB of audio per read in the engine's process


@dataclass(frozen=True)
class EngineSpec:
    """An engine to evaluate: ours (a model directory) or a peer from bench/kws_peers.py."""

    name: str
    wakeword: str
    model_dir: Path | None = None  # ours
    peer: str | None = None  # the kws_peers function that builds it


def engine_specs(models: Path) -> dict[str, EngineSpec]:
    """Every engine this bench knows, in report order."""
    return {
        "ours_hey_jarvis": EngineSpec("ours_hey_jarvis", "hey jarvis", model_dir=models / "hey_jarvis"),
        "ours_hey_snips": EngineSpec("ours_hey_snips", "hey snips", model_dir=models / "hey_snips"),
        "openwakeword_hey_jarvis": EngineSpec("openwakeword_hey_jarvis", "hey jarvis",
                                              peer="openwakeword_hey_jarvis"),
        "microwakeword_hey_jarvis": EngineSpec("microwakeword_hey_jarvis", "hey jarvis",
                                               peer="microwakeword_hey_jarvis"),
    }


# -- the test set (built in the parent) -------------------------------------------------------


def _voice_specs(rng: np.random.Generator, test, n: int, text) -> list:
    """n (text, voice, pitch, speed) requests by held-out voices, picked 60/20/20 by engine."""
    from models import data as D

    return [(text() if callable(text) else text, D.pick_voice(test, rng), int(rng.integers(20, 80)),
             int(rng.integers(120, 200))) for _ in range(n)]


def positives(wakeword: str, n: int, seed: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """One stream of n 3-second clips, the wake word spoken by held-out voices (espeak-ng variants
    and the held-out flite and festival speaker) in noise at 10 dB SNR; returns samples and each
    keyword's (start_s, end_s)."""
    from models import data as D

    rng = np.random.default_rng(seed)
    _, test = D.split_voices(D.all_voices())
    speech = D.synthesize_many(_voice_specs(rng, test, n, wakeword))
    clips, spans = [], []
    for i, kw in enumerate(speech):
        kw = kw.astype(np.float64)
        clip = np.zeros(3 * SAMPLE_RATE)
        start = int(rng.uniform(0.5, 3.0 - len(kw) / SAMPLE_RATE - 0.6) * SAMPLE_RATE) if len(kw) < 1.9 * SAMPLE_RATE \
            else int(0.3 * SAMPLE_RATE)
        clip[start : start + len(kw)] = kw[: len(clip) - start]
        mixed = D.mix_at_snr(clip, D.noise(str(rng.choice(["white", "pink", "brown"])), len(clip), rng), 10.0)
        clips.append(D.to_int16(mixed))
        t0 = 3.0 * i
        spans.append((t0 + start / SAMPLE_RATE, t0 + (start + len(kw)) / SAMPLE_RATE))
    return np.concatenate(clips), spans


def negatives(wakeword: str, hours: float, seed: int):
    """Yield (int16 segment, kind) totalling `hours`: held-out voices speaking evaluation-only sentences
    (never synthesised in training), random word sequences and confusable phrases; noise; near
    silence. Synthesised 200 segments at a time (festival is batched)."""
    from models import data as D

    rng = np.random.default_rng(seed)
    _, test = D.split_voices(D.all_voices())
    total, want = 0, int(hours * 3600 * SAMPLE_RATE)
    texts = {0: lambda: str(rng.choice(D.TEST_SENTENCES)), 1: lambda: D.word_sequence(rng),
             2: lambda: str(rng.choice(D.CONFUSABLE[wakeword]))}
    names = ("sentence", "words", "confusable", "noise", "silence")
    while total < want:  # counted in whole 80 ms frames, as they are scored
        kinds = rng.integers(5, size=200)
        speech = iter(D.synthesize_many([_voice_specs(rng, test, 1, texts[int(k)])[0] for k in kinds if k <= 2]))
        for kind in kinds:
            if kind <= 2:
                seg = next(speech).astype(np.float64)
                seg = D.mix_at_snr(seg, D.noise("pink", len(seg), rng), rng.uniform(5, 25))
            elif kind == 3:
                seg = D.noise(str(rng.choice(["white", "pink", "brown"])), int(rng.uniform(1, 6) * SAMPLE_RATE), rng)
                seg *= 10 ** rng.uniform(1.0, 3.5)
            else:
                seg = D.noise("white", int(rng.uniform(1, 4) * SAMPLE_RATE), rng) * 20  # near silence
            seg = D.to_int16(seg)
            total += len(seg) // FRAME_SAMPLES * FRAME_SAMPLES
            yield seg, names[int(kind)]
            if total >= want:
                return


def testset_dir(cache: Path, seed: int, hours: float, n_pos: int, wakeword: str) -> Path:
    """Where the test set of these parameters is cached."""
    return cache / f"kws_testset-v4-{seed}-{hours:g}-{n_pos}-{wakeword.replace(' ', '_')}"


def build_testset(cache: Path, wakeword: str, hours: float, n_pos: int, seed: int) -> Path:
    """The cached test set's directory, built first if absent: positives.i16 (one stream), negatives.i16
    (whole frames of every segment, as they are scored), testset.json (keyword spans, counts, and each
    negative segment's frames and kind)."""
    final = testset_dir(cache, seed, hours, n_pos, wakeword)
    if (final / META_FILE).exists():
        print(f"{wakeword}: reusing the test set in {final}", file=sys.stderr, flush=True)
        return final
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"{wakeword}: building the test set in {final}", file=sys.stderr, flush=True)
    pos, spans = positives(wakeword, n_pos, seed)
    pos.astype("<i2").tofile(tmp / POSITIVES_FILE)
    want = int(hours * 3600 * SAMPLE_RATE)
    frames, shown, segments = 0, 0, []
    with open(tmp / NEGATIVES_FILE, "wb") as f:
        for seg, kind in negatives(wakeword, hours, seed + 1):
            whole = seg[: len(seg) // FRAME_SAMPLES * FRAME_SAMPLES]
            f.write(whole.astype("<i2").tobytes())
            frames += len(whole) // FRAME_SAMPLES
            segments.append((len(whole) // FRAME_SAMPLES, kind))
            pct = min(100, 100 * frames * FRAME_SAMPLES // max(want, 1))
            if pct >= shown + 10:
                shown = pct - pct % 10
                print(f"{wakeword}: negatives {shown}% synthesised", file=sys.stderr, flush=True)
    meta = {"wakeword": wakeword, "seed": seed, "negative_hours_asked": hours, "positives": n_pos,
            "positive_samples": len(pos), "negative_frames": frames, "sample_rate": SAMPLE_RATE,
            "spans_s": [list(s) for s in spans], "segments": [[n, k] for n, k in segments]}
    (tmp / META_FILE).write_text(json.dumps(meta) + "\n")  # written last: its presence means complete
    try:
        tmp.rename(final)
    except OSError:  # built meanwhile by another run: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- one engine (in its own spawned process) --------------------------------------------------


class EngineMissing(Exception):
    """The engine cannot run here; the message says why."""


def open_scorer(spec: EngineSpec, cache: Path):
    """(score, reset): score(frame (1280,) int16) -> float | None, on the engine's own scale."""
    if spec.model_dir is not None:
        from assistant.kws.backbone import Backbone
        from assistant.kws.detector import Detector
        from assistant.kws.engine import Engine
        from assistant.kws.head import Head

        engine = Engine(Backbone(spec.model_dir / "backbone.onnx"), Head.load(spec.model_dir / "head.npz"),
                        Detector())
        # Thresholds are swept over logits: probabilities saturate at exactly 1.0 and would tie.
        return lambda frame: engine.process(frame).logit, engine.reset
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    try:
        import kws_peers
    except ImportError as exc:
        raise EngineMissing(f"bench/kws_peers.py cannot be imported ({exc})") from exc
    build = getattr(kws_peers, spec.peer, None)
    if build is None:
        raise EngineMissing(f"bench/kws_peers.py has no {spec.peer}()")
    try:
        return build(cache)
    except kws_peers.PeerUnavailable as exc:
        raise EngineMissing(str(exc) or type(exc).__name__) from exc


def score_file(score, reset, path: Path, label: str = "") -> tuple[np.ndarray, float]:
    """Scores of every whole frame of a raw int16 file, read in chunks, after a reset; and the CPU
    seconds spent in `score`. Prints progress every 10 % when `label` is given. -> ((frames,), s)"""
    n = path.stat().st_size // FRAME_BYTES
    out = np.full(n, np.nan)
    cpu, at, shown = 0.0, 0, 0
    reset()
    with open(path, "rb") as f:
        while at < n:
            buf = f.read(CHUNK_FRAMES * FRAME_BYTES)
            chunk = np.frombuffer(buf[: len(buf) // FRAME_BYTES * FRAME_BYTES], "<i2").reshape(-1, FRAME_SAMPLES)
            if not len(chunk):
                break
            t0 = time.process_time()
            for k, frame in enumerate(chunk):
                s = score(frame)
                if s is not None:
                    out[at + k] = s
            cpu += time.process_time() - t0
            at += len(chunk)
            pct = 100 * at // n
            if label and pct >= shown + 10:
                shown = pct - pct % 10
                print(f"{label}: {shown}% of the negatives scored", file=sys.stderr, flush=True)
    return out, cpu


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the process's own address space; ru_maxrss would
    also count the parent's RSS at fork time (Linux carries it across exec), i.e. the test set."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_engine(spec: EngineSpec, testset: str, cache: str, q) -> None:
    """The body of an engine's process: score the cached test set and put the raw scores on q."""
    try:
        try:
            score, reset = open_scorer(spec, Path(cache))
        except EngineMissing as exc:
            q.put({"name": spec.name, "missing": str(exc)})
            return
        pos, _ = score_file(score, reset, Path(testset) / POSITIVES_FILE)
        neg, cpu = score_file(score, reset, Path(testset) / NEGATIVES_FILE, label=spec.name)
        rss_mb = peak_rss_mb()
        q.put({"name": spec.name, "positive_scores": pos, "negative_scores": neg, "cpu_s": cpu,
               "peak_rss_mb": rss_mb})
    except Exception:
        q.put({"name": spec.name, "error": traceback.format_exc()})


def spawn_engine(ctx, spec: EngineSpec, testset: Path, cache: Path) -> dict:
    """Run one engine in a fresh spawned process; its message (scores, missing or error)."""
    q = ctx.Queue()
    proc = ctx.Process(target=run_engine, args=(spec, str(testset), str(cache), q))
    proc.start()
    while True:
        try:
            msg = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not proc.is_alive():
                try:
                    msg = q.get(timeout=1.0)
                except queue.Empty:
                    msg = {"name": spec.name, "error": f"its process died (exit code {proc.exitcode})"}
                break
    proc.join()
    return msg


# -- figures -----------------------------------------------------------------------------------


def figures(msg: dict, spans: list[tuple[float, float]], segments: list | None = None) -> dict:
    """An engine's figures from its scores (the same definitions as `assistant eval`). With the
    negative segments' kinds, also FRR at 0.5 FA/h counting only the non-confusable negatives
    (ordinary speech, noise, silence): how an engine does when nobody says a near-miss phrase."""
    pos, neg = msg["positive_scores"], msg["negative_scores"]
    frames = len(neg)
    neg_hours = frames * FRAME_S / 3600
    # Every engine reports logits (kws_peers converts its peers' probabilities), so one grid serves all.
    sweep = sweep_thresholds(pos, spans, neg, neg_hours, budgets=BUDGETS, grid=LOGIT_GRID)
    out = {"name": msg["name"], "negative_hours": round(neg_hours, 3), "positives": len(spans),
           "cpu_ms_per_frame": round(1000 * msg["cpu_s"] / max(frames, 1), 4),
           "peak_rss_mb": round(msg["peak_rss_mb"], 1),
           "det": {"fa_per_hour": sweep.fa_per_hour.tolist(), "frr": sweep.frr.tolist()}}
    for budget in BUDGETS:
        out[f"frr_at_{budget}"] = round(sweep.at(budget).point.frr, 4)
    lat = sweep.latency_p95_s
    out["latency_p95_ms"] = round(1000 * lat, 1) if lat is not None else None
    out["logit_threshold_at_0.5"] = round(sweep.at(0.5).point.threshold, 4)
    out["threshold_at_0.5"] = float(1 / (1 + np.exp(-out["logit_threshold_at_0.5"])))
    if segments:
        kinds = np.repeat([k for _, k in segments], [n for n, _ in segments])[:frames]
        ordinary = kinds != "confusable"
        # confusable frames never fire (NaN) and do not count towards the hours
        masked = np.where(ordinary, neg, np.nan)
        plain = sweep_thresholds(pos, spans, masked, ordinary.sum() * FRAME_S / 3600, budgets=(0.5,), grid=LOGIT_GRID)
        out["frr_at_0.5_without_confusables"] = round(plain.at(0.5).point.frr, 4)
        out["confusable_hours"] = round(float((~ordinary).sum() * FRAME_S / 3600), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    specs_all = engine_specs(ROOT / "models")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--negative-hours", type=float, default=6.0)
    p.add_argument("--positives", type=int, default=400)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--plot", type=Path, default=ROOT / "bench" / "kws_det.png")
    p.add_argument("--cache", type=Path, default=BENCH / ".cache",
                   help="where test sets are kept (and peers keep their downloads); default bench/.cache")
    p.add_argument("--engines", default=",".join(specs_all),
                   help=f"comma-separated, from {','.join(specs_all)} (default: all)")
    args = p.parse_args(argv)
    specs_all = engine_specs(args.models)
    wanted = [n.strip() for n in args.engines.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in specs_all]
    if unknown or not wanted:
        p.error(f"--engines: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(specs_all)}")
    specs = [specs_all[n] for n in dict.fromkeys(wanted)]

    reasons: dict[str, str] = {}
    for s in specs:
        if s.model_dir is not None and not (s.model_dir / "backbone.onnx").exists():
            reasons[s.name] = f"no model in {args.models}"
            print(f"{s.name}: no model in {args.models}; skipped (train it with python -m models.train)",
                  file=sys.stderr)
    specs = [s for s in specs if s.name not in reasons]
    if not specs:
        print("no engine to evaluate", file=sys.stderr)
        return 1

    args.cache.mkdir(parents=True, exist_ok=True)
    testsets = {w: build_testset(args.cache, w, args.negative_hours, args.positives, args.seed)
                for w in dict.fromkeys(s.wakeword for s in specs)}
    metas = {w: json.loads((d / META_FILE).read_text()) for w, d in testsets.items()}
    spans = {w: [tuple(x) for x in m["spans_s"]] for w, m in metas.items()}

    ctx = mp.get_context("spawn")
    results, failed = {}, False
    for spec in specs:
        print(f"{spec.name}: scoring in its own process", file=sys.stderr, flush=True)
        msg = spawn_engine(ctx, spec, testsets[spec.wakeword], args.cache)
        if "missing" in msg:
            reasons[spec.name] = msg["missing"]
            print(f"{spec.name}: missing: {msg['missing']}", file=sys.stderr, flush=True)
            continue
        if "error" in msg:
            failed = True
            print(f"{spec.name}: failed:\n{msg['error']}", file=sys.stderr, flush=True)
            continue
        results[spec.name] = figures(msg, spans[spec.wakeword], metas[spec.wakeword].get("segments"))
        print(f"{spec.name}: FRR@0.5FA/h {results[spec.name]['frr_at_0.5']}, "
              f"{results[spec.name]['cpu_ms_per_frame']} ms/frame", file=sys.stderr, flush=True)
    if failed:
        return 1
    if not results:
        print("no engine to evaluate", file=sys.stderr)
        return 1
    _plot(results, args.plot)
    first = next(iter(results.values()))
    missing = sorted(reasons)
    out = {"negative_hours": first["negative_hours"], "positives": first["positives"], "det_plot": str(args.plot),
           "missing": missing, "missing_reasons": {n: reasons[n] for n in missing},
           "engines": {k: {m: v[m] for m in ("frr_at_0.1", "frr_at_0.5", "frr_at_1.0", "cpu_ms_per_frame",
                                              "peak_rss_mb", "latency_p95_ms", "threshold_at_0.5",
                                              "frr_at_0.5_without_confusables", "confusable_hours") if m in v}
                       for k, v in results.items()}}
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
