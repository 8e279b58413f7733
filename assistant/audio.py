"""Audio in: 16 kHz mono int16 in 80 ms frames, from a microphone, a WAV/FLAC file, or stdin.

Every source yields frames of FRAME_SAMPLES int16 samples; a `RingBuffer` keeps the last seconds
so a detection, a near miss or a "you missed me" can save the clip that led to it.
"""

from __future__ import annotations

import sys
import time
import wave
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import AudioError

SAMPLE_RATE = 16_000
FRAME_MS = 80
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 1280


def read_audio(path: Path) -> np.ndarray:
    """All samples of a 16 kHz mono file (WAV, or FLAC through soundfile) as int16. (n,)

    AudioError for a missing, corrupt, multi-channel or wrong-rate file, saying what was found.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.suffix.lower() == ".flac":
        return _read_flac(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError, RuntimeError) as exc:  # RuntimeError: a chunk past its parent's end
        raise AudioError(f"{path}: not a readable WAV file ({exc or type(exc).__name__})") from exc
    _check_format(path, rate, channels)
    if width != 2:
        raise AudioError(f"{path}: {8 * width}-bit samples; need 16-bit PCM (sox IN -b 16 OUT.wav)")
    if len(raw) != 2 * n * channels:
        raise AudioError(f"{path}: truncated: header says {n} samples, file holds {len(raw) // 2}")
    return np.frombuffer(raw, "<i2").copy()


def _read_flac(path: Path) -> np.ndarray:
    try:
        import soundfile
    except ImportError as exc:  # pragma: no cover - soundfile is a dependency
        raise AudioError("reading FLAC needs the soundfile package (pip install soundfile)") from exc
    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="int16", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"{path}: not a readable FLAC file ({exc})") from exc
    _check_format(path, rate, info.channels)
    return data[:, 0].copy()


def _check_format(path: Path, rate: int, channels: int) -> None:
    if rate != SAMPLE_RATE:
        raise AudioError(f"{path}: {rate} Hz; need {SAMPLE_RATE} Hz (sox IN -r 16000 OUT.wav)")
    if channels != 1:
        raise AudioError(f"{path}: {channels} channels; need mono (sox IN -c 1 OUT.wav)")


def write_wav(path: Path, samples: np.ndarray) -> None:
    """Write int16 samples as a 16 kHz mono WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(samples, "<i2").tobytes())


def frames(samples: np.ndarray) -> Iterator[np.ndarray]:
    """Cut samples into FRAME_SAMPLES frames; the last one is zero-padded."""
    samples = np.asarray(samples, np.int16)
    for start in range(0, len(samples), FRAME_SAMPLES):
        f = samples[start : start + FRAME_SAMPLES]
        if len(f) < FRAME_SAMPLES:
            f = np.concatenate([f, np.zeros(FRAME_SAMPLES - len(f), np.int16)])
        yield f


def file_frames(path: Path) -> Iterator[np.ndarray]:
    """Frames of a WAV/FLAC file."""
    return frames(read_audio(path))


def stdin_frames(stream: BinaryIO | None = None) -> Iterator[np.ndarray]:
    """Frames of raw 16 kHz mono little-endian int16 PCM (e.g. `arecord -f S16_LE -r 16000 -c 1`)."""
    stream = stream or sys.stdin.buffer
    want = 2 * FRAME_SAMPLES
    buf = b""
    while True:
        chunk = stream.read(want - len(buf))
        if not chunk:
            break
        buf += chunk
        if len(buf) == want:
            yield np.frombuffer(buf, "<i2").copy()
            buf = b""
    if buf:
        if len(buf) % 2:
            buf = buf[:-1]
        yield next(frames(np.frombuffer(buf, "<i2")))


def paced(source: Iterable[np.ndarray], clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> Iterator[np.ndarray]:
    """The frames of `source` at real time, one per FRAME_MS, so a file can stand in for a microphone.
    A late frame is not made up for by skipping: every frame is yielded."""
    start = clock()
    for i, frame in enumerate(source):
        delay = start + i * FRAME_MS / 1000 - clock()
        if delay > 0:
            sleep(delay)
        yield frame


def microphone_frames(device: str | int | None = None) -> Iterator[np.ndarray]:
    """Frames from a microphone through PortAudio (sounddevice, imported only here)."""
    try:
        import sounddevice
    except OSError as exc:  # the Python package is there, the PortAudio library is not
        raise AudioError("PortAudio is missing: install it with `sudo apt-get install libportaudio2`") from exc
    try:
        if not any(d["max_input_channels"] > 0 for d in sounddevice.query_devices()):
            raise AudioError("no input device found: plug in a USB microphone (check with `arecord -l`)")
        stream = sounddevice.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                         blocksize=FRAME_SAMPLES, device=device)
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise AudioError(f"cannot open the microphone ({exc}): check `arecord -l` and --device") from exc
    with stream:
        while True:
            data, _ = stream.read(FRAME_SAMPLES)
            yield data[:, 0].copy()


class RingBuffer:
    """The last `seconds` of audio, for saving the clip behind a detection."""

    def __init__(self, seconds: float = 4.0):
        self.capacity = int(seconds * SAMPLE_RATE)
        self._buf = np.zeros(self.capacity, np.int16)
        self._written = 0

    def append(self, frame: np.ndarray) -> None:
        """Add samples (any length)."""
        frame = np.asarray(frame, np.int16)[-self.capacity :]
        n = len(frame)
        start = self._written % self.capacity
        end = start + n
        if end <= self.capacity:
            self._buf[start:end] = frame
        else:
            cut = self.capacity - start
            self._buf[start:] = frame[:cut]
            self._buf[: n - cut] = frame[cut:]
        self._written += n

    def last(self, seconds: float | None = None) -> np.ndarray:
        """The most recent `seconds` (default: all kept), oldest sample first."""
        n = min(self._written, self.capacity if seconds is None else int(seconds * SAMPLE_RATE), self.capacity)
        end = self._written % self.capacity
        idx = (np.arange(end - n, end)) % self.capacity
        return self._buf[idx].copy()
