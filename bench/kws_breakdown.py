"""Which held-out voices a model misses: `python bench/kws_breakdown.py --engine ours_hey_jarvis --json`.

Scores kws_eval's cached test set (build it first with bench/kws_eval.py) with one of our models,
takes the threshold that meets 0.5 false accepts per hour on its negatives, and reports the FRR
per voice source of the positives (espeak-ng held-out variants, the held-out flite and festival
speaker) and the highest negative scores per kind of negative audio. The positives' voices are
recovered by replaying the test set's seeded draw. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import kws_eval as K  # noqa: E402

from assistant.kws.evaluation import BUDGETS, LOGIT_GRID, sweep_thresholds  # noqa: E402
from models import data as D  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="ours_hey_jarvis", choices=["ours_hey_jarvis", "ours_hey_snips"])
    p.add_argument("--models", type=Path, default=BENCH.parent / "models")
    p.add_argument("--cache", type=Path, default=BENCH / ".cache")
    p.add_argument("--negative-hours", type=float, default=6.0)
    p.add_argument("--positives", type=int, default=400)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    spec = K.engine_specs(args.models)[args.engine]
    d = K.testset_dir(args.cache, args.seed, args.negative_hours, args.positives, spec.wakeword)
    if not (d / K.META_FILE).exists():
        print(f"no cached test set in {d}: run bench/kws_eval.py first", file=sys.stderr)
        return 1
    meta = json.loads((d / K.META_FILE).read_text())
    score, reset = K.open_scorer(spec, args.cache)
    pos, _ = K.score_file(score, reset, d / K.POSITIVES_FILE)
    neg, _ = K.score_file(score, reset, d / K.NEGATIVES_FILE)
    spans = [tuple(s) for s in meta["spans_s"]]
    sweep = sweep_thresholds(pos, spans, neg, len(neg) * 0.08 / 3600, budgets=BUDGETS, grid=LOGIT_GRID)
    threshold = sweep.at(0.5).point.threshold
    # The same draw as kws_eval.positives(): its first use of the seeded generator.
    _, test = D.split_voices(D.all_voices())
    voices = [v for _, v, _, _ in K._voice_specs(np.random.default_rng(args.seed), test, len(spans), spec.wakeword)]
    peaks = np.array([np.nanmax(np.concatenate([[-np.inf], pos[int(a / 0.08) : int((b + 0.5) / 0.08) + 1]]))
                      for a, b in spans])
    by_source: dict[str, list[float]] = defaultdict(list)
    for v, peak in zip(voices, peaks, strict=True):
        by_source[v.engine if v.engine != "espeak" else "espeak"].append(float(peak))
    kinds = np.repeat([k for _, k in meta["segments"]], [n for n, _ in meta["segments"]])[: len(neg)]
    out = {
        "engine": args.engine, "logit_threshold_at_0.5": round(float(threshold), 3),
        "frr_at_0.5": round(sweep.at(0.5).point.frr, 4),
        "peak_reaches_threshold_by_source": {
            s: {"positives": len(v), "frr": round(float(np.mean(np.array(v) < threshold)), 4),
                "median_peak_logit": round(float(np.median(v)), 2)} for s, v in sorted(by_source.items())},
        "top_negative_logits_by_kind": {
            k: [round(float(x), 2) for x in np.sort(neg[(kinds == k) & np.isfinite(neg)])[-3:]]
            for k in ("sentence", "words", "confusable", "noise", "silence")},
    }
    if not args.json:
        for s, f in out["peak_reaches_threshold_by_source"].items():
            print(f"{s:10s} {f['positives']:4d} positives  FRR {f['frr']:.3f}"
                  f"  median peak logit {f['median_peak_logit']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
