"""The developer's validation set for the coordinator's release gate (`assistant coordinator --validation`).

    python -m models.validation --model models/hey_snips --out coord/validation.npz

Synthetic clips spoken by the TRAINING voices (assistant.learning.validation.synthetic_clips: the held-out
voices stay the test set), embedded by the model's own backbone exactly as the device's engine embeds audio.
Needs espeak-ng, flite and festival (`make test` installs them as root). Rebuilding with the same model,
window and recipe reads the file back instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from assistant.errors import AssistantError
from assistant.kws.head import Head
from assistant.kws.model import load_model
from assistant.learning.validation import build, synthetic_clips


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.validation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, metavar="DIR", help="model directory (card.json, ...)")
    ap.add_argument("--out", type=Path, required=True, metavar="FILE", help="the .npz to write")
    ap.add_argument("--positives", type=int, default=300, help="wake-word clips (default 300)")
    ap.add_argument("--negatives", type=int, default=900, help="other clips (default 900)")
    ap.add_argument("--seed", type=int, default=1, help="the set's own seed stream (default 1)")
    args = ap.parse_args(argv)
    if args.positives < 1 or args.negatives < 1:
        ap.error("--positives and --negatives must be at least 1")
    try:
        files = load_model(args.model)
        head = Head.load(files.head)
        recipe = f"synthetic_clips({files.wakeword!r}, {args.positives}, {args.negatives}, seed={args.seed})"
        t0 = time.time()
        print(f"synthesising {args.positives + args.negatives} clips of training voices and embedding them ...",
              file=sys.stderr, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        vset = build(lambda: synthetic_clips(files.wakeword, args.positives, args.negatives, args.seed),
                     files.backbone, head.window, cache=args.out, recipe=recipe)
    except (AssistantError, OSError) as exc:
        print(f"models.validation: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {vset.positives} positive clips, {vset.negative_windows} negative windows"
          f" ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
