"""Draw docs/tui-review.svg: the review view of `assistant tui` on a small store, as an SVG.

It fills a temporary store with what the real "hey snips" model hears in the test recordings of
tests/data/kws (three voices saying "hey snips", some over loud noise, and sentences that came close),
labels a few rows, opens the real app under Textual's Pilot at 80x24 and saves the screen.

    .venv/bin/python docs/make_screenshot.py            # writes docs/tui-review.svg
    .venv/bin/python docs/make_screenshot.py OUT.svg
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from assistant.audio import read_audio  # noqa: E402
from assistant.kws.model import load_model  # noqa: E402
from assistant.store import Label, Store  # noqa: E402
from tui.app import AssistantApp  # noqa: E402
from tui.review.scores import stream_scores  # noqa: E402

CLIPS = ROOT / "tests" / "data" / "kws"
MODEL = ROOT / "models" / "hey_snips"
OUT = ROOT / "docs" / "tui-review.svg"
START = datetime(2026, 11, 24, 7, 12, 5, tzinfo=UTC).timestamp()  # the first row; the rest follow in the day
SIZE = (80, 24)

# (minutes after START, recording, offset in s, noise SNR in dB or None, the owner's label or None)
MOMENTS: list[tuple[int, str, float, float | None, Label | None]] = [
    (0, "positive_hey_snips_en-gb-scotland_Boris.wav", 0.0, None, Label.TRUE_ACCEPT),
    (47, "positive_hey_snips_en-gb_male3.wav", 0.0, 10.0, Label.TRUE_ACCEPT),
    (95, "negative_speech.wav", 11.5, None, Label.FALSE_ACCEPT),
    (188, "positive_hey_snips_en-us_female2.wav", 0.0, 5.0, Label.TRUE_ACCEPT),
    (251, "positive_hey_snips_en-gb-scotland_Boris.wav", 0.0, -15.0, Label.MISSED_WAKE_WORD),
    (430, "positive_hey_snips_en-gb_male3.wav", 0.0, None, None),
    (512, "positive_hey_snips_en-us_female2.wav", 0.0, None, None),
    (640, "positive_hey_snips_en-us_female2.wav", 0.0, -15.0, None),
    (703, "positive_hey_snips_en-gb-scotland_Boris.wav", 0.0, 5.0, None),
    (815, "negative_speech.wav", 12.0, None, None),
]


def clip(name: str, offset_s: float, snr_db: float | None) -> np.ndarray:
    """3 s of a test recording, with the noise recording mixed in at `snr_db` (None: clean)."""
    speech = read_audio(CLIPS / name)
    start = int(offset_s * 16_000)
    x = speech[start:start + 48_000].astype(np.float64)
    if snr_db is not None:
        noise = read_audio(CLIPS / "negative_noise.wav")[48_000:48_000 + len(x)].astype(np.float64)
        x = x + noise * np.sqrt((x ** 2).mean() / (noise ** 2).mean() / 10 ** (snr_db / 10))
    return np.clip(x, -32768, 32767).astype(np.int16)


def fill(store: Store) -> int:
    """Save what the shipped model makes of each moment: a detection at or over its threshold, a near
    miss under it (when the store admits it), with the owner's label. Returns the number of rows."""
    model = load_model(MODEL)
    engine = model.engine()
    threshold = model.threshold if model.threshold is not None else 0.5
    rows = 0
    for minutes, name, offset_s, snr_db, label in MOMENTS:
        samples = clip(name, offset_s, snr_db)
        _, scores = stream_scores(engine, samples)
        score, t = max(scores), START + 60 * minutes
        if score >= threshold:
            row = store.record_detection(samples, score, model.version, None, time_s=t)
        else:
            row = store.record_near_miss(samples, score, threshold, model.version, None, time_s=t)
        if row is None:
            continue
        rows += 1
        if label is not None:
            store.label(row, label, time_s=t + 600)
    return rows


def make_screenshot(out: Path = OUT) -> Path:
    """Write the review view, all rows shown, the cursor on a labelled detection, to `out` (SVG)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "store", clock=lambda: START + 43_200) as store:
        fill(store)
        app = AssistantApp(store, control_path=Path(tmp) / "no-service.sock", model_dir=MODEL, tz=UTC, poll_s=0)

        async def main() -> None:
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                await pilot.press("f", "down", "down", "down", "down", "down")  # all rows; a labelled one
                await app.workers.wait_for_complete()
                await pilot.pause()
                app.save_screenshot(out.name, str(out.parent))

        asyncio.run(main())
    return out


if __name__ == "__main__":
    print(make_screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
