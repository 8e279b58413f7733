"""Model cards: what a shipped model was trained on, how long it took, its files' hashes and its
measured figures. `python -m models.card MODEL_DIR [--eval EVAL.json --engine NAME]` writes
MODEL_DIR/MODEL_CARD.md and MODEL_DIR/card.json (the machine-readable part tests check)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.kws.backbone import sha256_file

FILES = ("backbone.onnx", "head.npz")


def write_card(model_dir: Path, evaluation: dict | None = None, breakdown: dict | None = None) -> dict:
    """Write the card from MODEL_DIR/training.json, the files' hashes and an optional evaluation."""
    training = json.loads((model_dir / "training.json").read_text())
    ev = evaluation or {}
    card = {
        "wakeword": training["wakeword"],
        "files": {f: {"sha256": sha256_file(model_dir / f), "bytes": (model_dir / f).stat().st_size} for f in FILES},
        # The operating point: the threshold that met 0.5 false accepts per hour on the evaluation.
        "threshold": ev.get("threshold_at_0.5"),
        "training": {k: training.get(k) for k in ("positives", "negatives", "epochs", "mining_rounds",
                                                  "train_seconds", "dataset_seconds", "wall_seconds",
                                                  "train_voices", "train_recorded")},
        "held_out_variants": training["held_out_variants"],
        "held_out_recorded": training.get("held_out_recorded", []),
        "evaluation": evaluation,
        "breakdown": breakdown,
    }
    (model_dir / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    t = card["training"]
    wall = t["wall_seconds"] or (t["train_seconds"] + t["dataset_seconds"])
    lines = [
        f"# Model card: \"{card['wakeword']}\"", "",
        "## Data",
        f"Synthetic speech only: {t['positives']} positive and {t['negatives']} negative clips (confusable"
        " phrases, random word sequences, sentences, noise and near silence), spoken by "
        f"{t['train_voices']} training voices: espeak-ng accents x variants, and the recorded voices "
        f"{', '.join(t['train_recorded'] or [])} (flite, festival), picked 60/20/20 by engine. Augmented with"
        " speed 0.9-1.1, pitch, a synthetic room half the time, white/pink/brown noise at -5..20 dB SNR and"
        f" gain -12..+6 dB. {t['mining_rounds'] or 0} rounds of hard-negative mining on training voices.",
        "", "Held out (never heard in training; the evaluation uses only these): the espeak-ng variants "
        + ", ".join(card["held_out_variants"]) + " in every accent, and the recorded speaker(s) "
        + ", ".join(card["held_out_recorded"]) + ".", "",
        "## Training",
        f"{t['epochs']} epochs; {wall / 60:.0f} minutes wall clock in all (dataset and mining "
        f"{t['dataset_seconds']} s, training {t['train_seconds']} s) on a 2-core x86_64 machine (torch, CPU):",
        f"`python -m models.train --wakeword \"{card['wakeword']}\" --out models/{model_dir.name} ...`"
        " (see training.json; the shipped recipe is in the README).",
        "",
        "## Files", "",
        "| file | bytes | sha256 |", "|---|---:|---|",
        *[f"| {f} | {v['bytes']:,} | `{v['sha256']}` |" for f, v in card["files"].items()], "",
        "## Measured (`python bench/kws_eval.py --json`)", "",
    ]
    if ev:
        lines += ["| figure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in ev.items()]]
    else:
        lines.append("Not evaluated yet.")
    if breakdown:
        lines += ["", "### Which held-out voices it misses (`python bench/kws_breakdown.py`)", "",
                  f"At the 0.5 FA/h threshold (logit {breakdown['logit_threshold_at_0.5']}), the share of positives"
                  " whose peak score stays below it, by voice source:", "",
                  "| held-out voices | positives | FRR | median peak logit |", "|---|---:|---:|---:|",
                  *[f"| {k} | {v['positives']} | {v['frr']} | {v['median_peak_logit']} |"
                    for k, v in breakdown["peak_reaches_threshold_by_source"].items()], "",
                  "Highest negative logits by kind of audio: "
                  + "; ".join(f"{k} {v}" for k, v in breakdown["top_negative_logits_by_kind"].items()) + "."]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    return card


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.card", description=__doc__)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--eval", type=Path, default=None, help="output of bench/kws_eval.py --json")
    p.add_argument("--engine", default=None, help="which engine of the evaluation (e.g. ours_hey_snips)")
    p.add_argument("--breakdown", type=Path, default=None, help="output of bench/kws_breakdown.py --json")
    args = p.parse_args(argv)
    evaluation = None
    if args.eval:
        res = json.loads(args.eval.read_text().strip().splitlines()[-1])
        evaluation = {"negative_hours": res["negative_hours"], "positives": res["positives"],
                      **res["engines"][args.engine]}
    breakdown = json.loads(args.breakdown.read_text().strip().splitlines()[-1]) if args.breakdown else None
    write_card(args.model_dir, evaluation, breakdown)
    print(args.model_dir / "MODEL_CARD.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
