"""Audio sources: files, stdin, the microphone's error, and the ring buffer."""

from __future__ import annotations

import io
import subprocess
import sys
import wave

import numpy as np
import pytest

from assistant.audio import (
    FRAME_SAMPLES,
    RingBuffer,
    file_frames,
    microphone_frames,
    read_audio,
    stdin_frames,
    write_wav,
)
from assistant.errors import AudioError


def tone(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


def test_wav_and_flac_round_trip_and_frames(tmp_path):
    import soundfile

    x = tone(0.5)
    write_wav(tmp_path / "a.wav", x)
    assert np.array_equal(read_audio(tmp_path / "a.wav"), x)
    soundfile.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    assert np.array_equal(read_audio(tmp_path / "a.flac"), x)
    fr = list(file_frames(tmp_path / "a.wav"))
    assert len(fr) == 7 and all(len(f) == FRAME_SAMPLES for f in fr)  # 8000 samples: 6 whole + 1 padded
    assert np.array_equal(np.concatenate(fr)[: len(x)], x) and not fr[-1][len(x) - 6 * FRAME_SAMPLES :].any()


@pytest.mark.parametrize("rate, channels, width, needle", [
    (44100, 1, 2, "44100 Hz; need 16000"), (16000, 2, 2, "2 channels; need mono"), (16000, 1, 1, "8-bit")])
def test_wrong_format_files_give_a_clear_error(tmp_path, rate, channels, width, needle):
    p = tmp_path / "bad.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(width * channels * 1600))
    with pytest.raises(AudioError, match=needle):
        read_audio(p)


def test_corrupt_truncated_and_missing_files_give_a_clear_error(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00not really a wav file at all")
    with pytest.raises(AudioError, match="not a readable WAV"):
        read_audio(tmp_path / "junk.wav")
    write_wav(tmp_path / "t.wav", tone(0.5))
    data = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        read_audio(tmp_path / "t.wav")
    (tmp_path / "junk.flac").write_bytes(b"fLaC" + bytes(50))
    with pytest.raises(AudioError, match="not a readable FLAC"):
        read_audio(tmp_path / "junk.flac")
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "absent.wav")


def test_raw_pcm_on_stdin_in_any_chunking():
    x = tone(0.3)

    class Trickle(io.RawIOBase):  # a pipe that hands out at most 333 bytes a read
        def __init__(self, data):
            self.data = data

        def read(self, n=-1):
            out, self.data = self.data[: min(n, 333)], self.data[min(n, 333) :]
            return out

    got = np.concatenate(list(stdin_frames(Trickle(x.tobytes()))))
    assert np.array_equal(got[: len(x)], x) and len(got) % FRAME_SAMPLES == 0


def test_missing_portaudio_gives_an_error_naming_the_fix(tmp_path):
    # A Python whose sounddevice cannot find the PortAudio library (as on a system without
    # libportaudio2): sounddevice raises OSError at import, we say which package to install.
    stub = tmp_path / "sounddevice.py"
    stub.write_text("raise OSError('PortAudio library not found')\n")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n"
            "from assistant.audio import microphone_frames\n"
            "from assistant.errors import AudioError\n"
            "try:\n    next(microphone_frames())\nexcept AudioError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "sudo apt-get install libportaudio2" in out.stdout, out.stderr


def test_no_input_device_gives_an_error_naming_the_fix():
    # Real PortAudio, asked for a device that is not there (on a machine with no sound card at
    # all the answer is "no input device"): either way the message says what to check.
    with pytest.raises(AudioError, match="arecord -l"):
        next(microphone_frames(device="no-such-microphone-xyz"))


def test_ring_buffer_keeps_the_last_seconds_in_order():
    r = RingBuffer(seconds=1.0)
    x = np.arange(40_000, dtype=np.int64).astype(np.int16)
    for i in range(0, len(x), 1280):
        r.append(x[i : i + 1280])
    assert np.array_equal(r.last(), x[-16000:])
    assert np.array_equal(r.last(0.5), x[-8000:])
    r.append(np.ones(50_000, np.int16))  # more than the capacity at once
    assert np.array_equal(r.last(), np.ones(16000, np.int16))
