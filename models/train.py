"""Train a wake-word model: `python -m models.train --wakeword "hey snips" --out models/hey_snips`.

Data: espeak-ng speech from the training voices only (models.data), augmented; positives are the
wake word ending near the end of a clip; negatives are confusable phrases, ordinary sentences,
noise and silence. Features: the same log-mel code the device runs (assistant.kws.features).
Model: a small CNN backbone over CONTEXT mel frames (one embedding per 80 ms step), exported to
ONNX and frozen on the device, and the numpy head over WINDOW embeddings (assistant.kws.head),
trained jointly here with torch on the CPU. Checkpoints every epoch; `--resume` continues.
Needs the `train` extra (torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from assistant.kws.features import HOP, N_MELS, WIN, log_mel
from assistant.kws.head import Head

from . import data as D

CONTEXT = 32  # mel frames per embedding (0.32 s)
STEP = 8  # mel frames per 80 ms audio frame
WINDOW = 16  # embeddings per head window (1.28 s)
EMBED = 64
HIDDEN = 32
SPAN = CONTEXT + STEP * (WINDOW - 1)  # mel frames the model sees: 152 (1.52 s)
CLIP = (SPAN - 1) * 160 + 400  # samples that make exactly SPAN frames


def place(speech: np.ndarray, rng: np.random.Generator, end_margin_s: tuple[float, float] | None) -> np.ndarray:
    """Put speech into a CLIP-long buffer so it ends end_margin_s before the clip's end (float64).

    end_margin_s None: anywhere, as a streaming window sees it: a random crop of longer speech, or
    shorter speech at a random offset (partly cut off at either edge).
    """
    out = np.zeros(CLIP)
    if end_margin_s is None:
        s = np.asarray(speech, np.float64)
        offset = int(rng.integers(-CLIP // 2, max(len(s) - CLIP // 2, 1)))  # where the clip starts in s
        lo, hi = max(offset, 0), min(offset + CLIP, len(s))
        if hi > lo:
            out[lo - offset : hi - offset] = s[lo:hi]
        return out
    s = np.asarray(speech, np.float64)[-CLIP:]
    end = CLIP - int(rng.uniform(*end_margin_s) * D.SAMPLE_RATE)
    start = max(0, end - len(s))
    out[start : start + len(s[-(end - start):])] = s[-(end - start):]
    return out


def clip_of(speech: np.ndarray, rng: np.random.Generator, end_margin_s: tuple[float, float] | None) -> np.ndarray:
    """Speed and room on the speech, then placed in a CLIP-long buffer, then noise over the whole
    clip at -5..20 dB SNR and a random gain. int16 (CLIP,)"""
    s = D.change_speed(speech, rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:
        s = D.reverberate(s, D.room_impulse(rng.uniform(0.2, 0.8), rng))
    clip = place(s, rng, end_margin_s)
    bg = D.noise(str(rng.choice(["white", "pink", "brown"])), CLIP, rng)
    mixed = D.mix_at_snr(clip, bg, rng.uniform(-5.0, 20.0)) if np.any(clip) else bg * 300
    return D.to_int16(mixed * 10 ** (rng.uniform(-12, 6) / 20))


def negative_text(wakeword: str, kind: int, rng: np.random.Generator) -> str:
    """Text of a spoken negative: 0-1 a confusable phrase, 2-3 random words, 4 a training sentence."""
    if kind < 2:
        return str(rng.choice(D.CONFUSABLE[wakeword]))
    if kind < 4:
        return D.word_sequence(rng)
    return str(rng.choice(D.SENTENCES))


def _speech(specs: list[tuple[str, D.Voice]], rng: np.random.Generator, chunk: int = 2000):
    """Yield synthesised speech for (text, voice) specs with random pitch and speed, in order,
    batching festival's requests `chunk` at a time."""
    for i in range(0, len(specs), chunk):
        part = [(t, v, int(rng.integers(20, 80)), int(rng.integers(120, 200))) for t, v in specs[i : i + chunk]]
        yield from D.synthesize_many(part)


def build(wakeword: str, voices: list[D.Voice], n_pos: int, n_neg: int, seed: int,
          progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, SPAN, N_MELS) float32 and labels (N,) of a freshly synthesised dataset.
    Negatives cycle through six kinds: confusables (2), random words (2), sentences, noise."""
    rng = np.random.default_rng(seed)
    x = np.empty((n_pos + n_neg, SPAN, N_MELS), np.float32)
    y = np.zeros(n_pos + n_neg, np.float32)
    y[:n_pos] = 1.0
    done = 0

    def add(samples: np.ndarray) -> None:
        nonlocal done
        x[done] = log_mel(samples)
        done += 1
        if progress is not None and done % 2000 == 0:
            progress(done, len(y))

    for speech in _speech([(wakeword, D.pick_voice(voices, rng)) for _ in range(n_pos)], rng):
        add(clip_of(speech, rng, (0.05, 0.25)))
    kinds = np.arange(n_neg) % 6
    spoken = [(negative_text(wakeword, int(k), rng), D.pick_voice(voices, rng)) for k in kinds if k != 5]
    for speech in _speech(spoken, rng):
        # Negatives are seen as a streaming window sees them: any part of the phrase, anywhere.
        add(clip_of(speech, rng, None))
    for _ in range(int((kinds == 5).sum())):  # noise or near-silence
        add(D.to_int16(D.noise(str(rng.choice(["white", "pink", "brown"])), CLIP, rng) * 10 ** rng.uniform(0.5, 3.5)))
    assert done == len(y)
    return x, y


def mine_hard_negatives(model_dir: Path, wakeword: str, voices: list[D.Voice], minutes: float, top: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of negative speech (training voices only) the current model scores highest:
    ((top, SPAN, N_MELS), their scores, highest first). Streams sentences, random words and
    confusables through the device engine and keeps the SPAN mel frames behind each of the
    top-scoring steps (at least 0.8 s apart)."""
    from assistant.kws.backbone import Backbone
    from assistant.kws.detector import Detector
    from assistant.kws.engine import Engine
    from assistant.kws.head import Head

    rng = np.random.default_rng(seed)
    engine = Engine(Backbone(model_dir / "backbone.onnx"), Head.load(model_dir / "head.npz"), Detector())
    n = int(minutes * 60 / 1.8)  # utterances average about 1.8 s
    specs = [(negative_text(wakeword, int(rng.integers(5)), rng), D.pick_voice(voices, rng)) for _ in range(n)]
    parts = [D.to_int16(D.mix_at_snr(s.astype(np.float64), D.noise("pink", len(s), rng), rng.uniform(0, 25)))
             for s in _speech(specs, rng)]
    audio = np.concatenate(parts)
    scores = []
    for i in range(0, len(audio) - 1280 + 1, 1280):
        st = engine.process(audio[i : i + 1280])
        scores.append(-1.0 if st.score is None else st.score)
    scores = np.array(scores)
    mel = log_mel(audio)
    def available(f: int) -> int:  # mel frames the engine has after audio frame f
        return 1 + ((f + 1) * 1280 - WIN) // HOP

    picks = []
    for f in np.argsort(-scores):
        if available(int(f)) < SPAN or any(abs(int(f) - p) < 10 for p in picks):
            continue
        picks.append(int(f))
        if len(picks) == top:
            break
    windows = np.stack([mel[available(p) - SPAN : available(p)] for p in picks]).astype(np.float32)
    return windows, scores[picks]


def make_model():
    """(backbone, head) torch modules; the head mirrors assistant.kws.head.Head."""
    import torch
    from torch import nn

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv1d(N_MELS, 64, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
                nn.Conv1d(64, EMBED, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1))
            self.norm = nn.LayerNorm(EMBED)

        def forward(self, mel: torch.Tensor) -> torch.Tensor:  # (B, CONTEXT, N_MELS) -> (B, EMBED)
            return self.norm(self.net(mel.transpose(1, 2)).squeeze(-1))

    class HeadNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(WINDOW * EMBED, HIDDEN)
            self.l2 = nn.Linear(HIDDEN, 1)

        def forward(self, emb: torch.Tensor) -> torch.Tensor:  # (B, WINDOW, EMBED) -> (B,) logits
            return self.l2(torch.relu(self.l1(emb.flatten(1)))).squeeze(-1)

    return Backbone(), HeadNet()


def embed_windows(backbone, mel):
    """(B, SPAN, N_MELS) -> (B, WINDOW, EMBED): the embeddings the device computes step by step."""
    import torch

    starts = [i * STEP for i in range(WINDOW)]
    crops = torch.stack([mel[:, s : s + CONTEXT] for s in starts], 1)  # (B, WINDOW, CONTEXT, N_MELS)
    b = mel.shape[0]
    return backbone(crops.reshape(b * WINDOW, CONTEXT, N_MELS)).reshape(b, WINDOW, EMBED)


def train(x: np.ndarray, y: np.ndarray, out: Path, epochs: int, resume: bool, seed: int = 0,
          log=print) -> dict:
    """Train, checkpoint every epoch to out/checkpoint.pt, export backbone.onnx and head.npz."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    backbone, head = make_model()
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    start, ckpt = 0, out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        backbone.load_state_dict(state["backbone"])
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        start = int(state["epoch"])
        log(f"resumed from epoch {start}")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    pos_weight = torch.tensor(float((y == 0).sum() / max(1, (y == 1).sum())))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    t0 = time.time()
    for epoch in range(start, epochs):
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = loss_fn(head(embed_windows(backbone, xt[idx])), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        torch.save({"backbone": backbone.state_dict(), "head": head.state_dict(), "opt": opt.state_dict(),
                    "epoch": epoch + 1}, ckpt)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(perm):.4f} ({time.time() - t0:.0f} s)")
    backbone.eval()
    torch.onnx.export(backbone, torch.zeros(1, CONTEXT, N_MELS), str(out / "backbone.onnx"),
                      input_names=["mel"], output_names=["embedding"], opset_version=17, dynamo=False)
    with torch.no_grad():
        h = Head(head.l1.weight.T.double().numpy(), head.l1.bias.double().numpy(),
                 head.l2.weight[0].double().numpy(), np.array(float(head.l2.bias[0])), WINDOW, EMBED)
    h.save(out / "head.npz")
    return {"epochs": epochs, "train_seconds": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wakeword", default="hey snips", choices=sorted(D.CONFUSABLE))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--positives", type=int, default=4000)
    p.add_argument("--negatives", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mine", type=int, default=0, metavar="ROUNDS",
                   help="after training, rounds of hard-negative mining, each followed by --mine-epochs more")
    p.add_argument("--mine-epochs", type=int, default=4)
    p.add_argument("--mine-top", type=int, default=3000, help="hard negatives added per round")
    p.add_argument("--mine-minutes", type=float, default=60.0, help="minutes of speech scored per round")
    args = p.parse_args(argv)
    train_voices, test_voices = D.split_voices(D.all_voices())
    t0 = time.time()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    x, y = build(args.wakeword, train_voices, args.positives, args.negatives, args.seed,
                 progress=lambda done, n: log(f"dataset: {done}/{n} clips ({time.time() - t0:.0f} s)"))
    log(f"dataset: {len(y)} clips ({int(y.sum())} positive) in {time.time() - t0:.0f} s")
    info = train(x, y, args.out, args.epochs, args.resume, args.seed, log=log)
    epochs = args.epochs
    for r in range(args.mine):
        log(f"mining round {r + 1}: scoring {args.mine_minutes:g} minutes of negative speech")
        hard, _ = mine_hard_negatives(args.out, args.wakeword, train_voices, args.mine_minutes, args.mine_top,
                                      args.seed + 100 + r)
        x, y = np.concatenate([x, hard]), np.concatenate([y, np.zeros(len(hard), np.float32)])
        epochs += args.mine_epochs
        log(f"mining round {r + 1}: {len(hard)} hard negatives; training to epoch {epochs}")
        more = train(x, y, args.out, epochs, True, args.seed, log=log)
        info["train_seconds"] = round(info["train_seconds"] + more["train_seconds"], 1)
    info["epochs"] = epochs
    info["mining_rounds"] = args.mine
    info["arguments"] = {k: str(v) for k, v in vars(args).items()}
    info.update({"wakeword": args.wakeword, "positives": args.positives, "negatives": args.negatives,
                 "train_voices": len(train_voices),
                 "held_out_variants": sorted({v.variant for v in test_voices if v.engine == "espeak"}),
                 "held_out_recorded": sorted(v.name for v in test_voices if v.engine != "espeak"),
                 "train_recorded": sorted(v.name for v in train_voices if v.engine != "espeak"),
                 "wall_seconds": round(time.time() - t0, 1),
                 "dataset_seconds": round(time.time() - t0 - info["train_seconds"], 1)})
    (args.out / "training.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
