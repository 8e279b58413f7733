"""Playing a clip on the device's speaker, in a child process.

PortAudio (through sounddevice, imported only in the child) may be missing, may find no output
device, and ALSA writes its complaints straight to file descriptor 2, which is the terminal the UI
draws on. A child process keeps all three away from the UI: its stderr goes nowhere, its one-line
reason for failing comes back on stdout, and a crash in PortAudio ends only the child."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from assistant.errors import AudioError

NO_PORTAUDIO = 3
NO_OUTPUT = 4
PLAY_FAILED = 5


class Player:
    """One clip at a time; `stop()` ends the one playing."""

    def __init__(self) -> None:
        self._child: subprocess.Popen[str] | None = None

    @property
    def playing(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def play(self, clip: Path, timeout_s: float = 120.0) -> None:
        """Play a 16 kHz mono WAV to the end (blocks: call it from a worker thread). AudioError saying
        why there is no sound; nothing when stopped."""
        self.stop()
        self._child = child = subprocess.Popen(
            [sys.executable, "-m", "tui.review.playback", str(clip)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            out, _ = child.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise AudioError(f"playing {clip.name} took longer than {timeout_s:.0f} s; stopped it") from None
        if child.returncode < 0:  # stopped by `stop()`, or PortAudio crashed
            if child.returncode in (-15, -9):
                return
            raise AudioError(f"the audio player crashed (signal {-child.returncode}); is the sound card working?")
        if child.returncode != 0:
            raise AudioError(out.strip() or f"the audio player failed (exit {child.returncode})")

    def stop(self) -> None:
        """End the clip playing now, if any."""
        if self.playing:
            self._child.terminate()  # type: ignore[union-attr]


def main(argv: list[str]) -> int:
    """The child: play the WAV file argv[0]; one line on stdout and a non-zero exit when it cannot."""
    from assistant.audio import SAMPLE_RATE, read_audio

    try:
        samples = read_audio(Path(argv[0]))
    except AudioError as exc:
        print(f"cannot play: {exc}")
        return PLAY_FAILED
    try:
        import sounddevice
    except (OSError, ImportError):  # OSError: the Python package is there, the PortAudio library is not
        print("cannot play: PortAudio is missing (install it: sudo apt-get install libportaudio2)")
        return NO_PORTAUDIO
    try:
        if not any(d["max_output_channels"] > 0 for d in sounddevice.query_devices()):
            print("cannot play: no audio output device (check `aplay -l`)")
            return NO_OUTPUT
        sounddevice.play(samples, SAMPLE_RATE, blocking=True)
    except (sounddevice.PortAudioError, ValueError) as exc:
        print(f"cannot play: {exc} (check `aplay -l`)")
        return PLAY_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
