"""Synthetic speech for training and testing wake-word models, and its augmentation.

Voices: espeak-ng accents crossed with its voice variants (about 800), plus the flite and festival
voices Debian packages (recorded speakers, so closer to real timbre). They are split into train
and test sets by speaker: espeak variants by a hash of their name, flite and festival voices by
the person recorded, so the split is stable and no test voice is ever heard in training. Augmentation: gain, speed
(resampling), a synthetic room impulse response (exponentially decaying noise), and additive
noise at a chosen SNR (white, pink, brown, or any recording).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000

#: Phrases that sound like each wake word: hard negatives.
CONFUSABLE = {
    "hey snips": ["hey snaps", "hey sniffs", "say snips", "hey slips", "hey ships", "a snip", "hey skips",
                  "hey nips", "they snip", "hey tips"],
    "hey jarvis": ["hey jarvi", "hey service", "hey travis", "hey harvest", "hey jar", "a jarvis",
                   "hey marvin", "hey jaws", "hey carpets", "say jarvis"],
}

#: Ordinary speech: negatives that must never fire.
SENTENCES = [
    "what is the weather like today", "please turn off the kitchen lights", "i will be home at six",
    "the cat is sleeping on the sofa", "can you set a timer for ten minutes", "we need more milk and bread",
    "the train leaves from platform four", "my sister lives in a small town", "open the window please",
    "that was a very good movie", "how far is it to the station", "the meeting starts after lunch",
    "turn the music down a little", "remind me to call my mother", "snippets of the news at nine",
    "jars of jam on the top shelf", "service was slow at the restaurant", "hey there how are you",
]

#: Natural sentences kept for evaluation only: never synthesised in training.
TEST_SENTENCES = [
    "could you tell me a story before bed", "the bus was late again this morning", "i think it might rain later",
    "where did i leave my glasses", "let us go for a walk in the park", "the children are playing outside",
    "dinner will be ready in twenty minutes", "have you seen the new bridge downtown",
    "my phone battery is almost empty",
    "the garden needs water after this heat", "she bought a red bicycle yesterday", "turn up the heating a bit",
    "the library closes early on sundays", "we painted the fence blue last summer", "pass me the salt please",
    "the dog barked at the postman", "is there any coffee left in the pot", "our flight was cancelled twice",
    "he plays the guitar every evening", "the soup tastes better with pepper", "can we talk about this tomorrow",
    "the shop around the corner sells fresh fish", "a strong wind blew the leaves away", "jazz on the radio at night",
    "his jacket has too many pockets", "snow is expected in the hills", "the printer is out of paper again",
    "hey there is someone at the door", "hi how was your day", "yes please and thank you",
]

#: Words for random word sequences: phonetic variety for negatives beyond a fixed list of sentences.
_VOCAB_TEXT = """a about after again air all also always and animal answer any apple are area around ask at away back
bag ball bank bar base basket be bear beautiful bed been before begin behind bell best better between big
bird black blue board boat body book bottle box boy bread break bring brother brown build bus busy but buy
by cake call came can car card care carry case cat catch chair chance change check chicken child city class
clean clear clock close cloud coat cold colour come cook cool corner could count country cover cup cut dance
dark day dear deep desk did different dinner do doctor does dog door down draw dream dress drink drive dry
during each early earth easy eat egg eight end enough evening every example eye face fact fall family far farm
fast father feel few field fill find fine finger finish fire first fish five floor flower fly follow food foot
for forest forget four free friend from front fruit full game garden gate gave get girl give glass go gold
good great green grey ground group grow had hair half hand happy hard has hat have he head hear heavy help
her here high hill him his hold hole home hope horse hot hour house how hundred hungry i ice idea if in inside
into is island it jacket jam job join joke jump just keep key kind king kitchen knee know lake lamp land large
last late laugh learn leave left leg lemon less letter light like line lion list listen little live long look
lot loud love low lucky lunch made make man many map market may me meet milk minute miss money month moon
more morning mother mountain mouth move much music must my name near neck need never new next nice night nine
no noise north not nothing now number ocean of off often oil old on once one only open or orange other our
out over page paint paper park party pass past pen people pepper person picture piece pink place plan plant
play please pocket point pool poor potato present pretty pull push put queen question quick quiet rabbit race
radio rain read ready real red remember rest rice rich ride right ring river road rock roof room round run
sad safe salt same sand say school sea seat second see sell send seven shape she sheep shirt shoe shop short
should show shut side sign simple sing sister sit six sky sleep slow small smile snow so soft some song soon
sound soup south speak spring square stand star start station stay step still stone stop story street strong
study sugar summer sun supper sure sweet swim table tail take talk tall tea teach tell ten test than thank
that the then there they thing think this three through time tired to today together tomorrow too top town
toy train travel tree try turn twelve two under until up us use very village visit voice wait walk wall want
warm was wash watch water way we wear weather week well went were west wet what wheel when where which white
who why wide wife wild will wind window winter with without woman wonder wood word work world write year
yellow yes yesterday you young"""
VOCAB = _VOCAB_TEXT.split()

ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc"]


#: flite and festival voices: name -> the person recorded (the unit of the train/test split).
FLITE_VOICES = {"kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"}
FESTIVAL_VOICES = {"kal_diphone": "kal", "ked_diphone": "ked", "cmu_us_slt_arctic_hts": "slt"}
#: Speakers of the recorded voices that only the test set hears.
HELD_OUT_SPEAKERS = frozenset({"slt"})
#: How often each engine is picked (espeak has hundreds of voices, the others a handful each).
ENGINE_WEIGHTS = {"espeak": 0.6, "flite": 0.2, "festival": 0.2}
FESTIVAL_PACKAGES = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"


@dataclass(frozen=True)
class Voice:
    """A synthetic voice: an espeak-ng accent plus variant (en-us+f3), or a flite or festival voice
    (accent "flite" or "festival", variant the voice's name)."""

    accent: str
    variant: str

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"

    @property
    def engine(self) -> str:
        return self.accent if self.accent in ("flite", "festival") else "espeak"

    @property
    def speaker(self) -> str:
        """Who the voice sounds like: the split keeps each speaker on one side."""
        if self.engine == "flite":
            return FLITE_VOICES[self.variant]
        if self.engine == "festival":
            return FESTIVAL_VOICES[self.variant]
        return "espeak:" + self.variant


def espeak_variants() -> list[str]:
    """The voice variants espeak-ng has here (m1, f3, Alex, ...)."""
    out = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[3] for line in out.splitlines()[1:] if len(line.split()) >= 4})


def espeak_voices() -> list[Voice]:
    """Every accent crossed with every variant."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is missing: `sudo apt-get install espeak-ng` (make test does it as root)")
    return [Voice(a, v) for a in ACCENTS for v in espeak_variants()]


def all_voices() -> list[Voice]:
    """espeak-ng, flite and festival voices. All three must be installed, so that a dataset or a
    test set is the same on every machine."""
    if shutil.which("flite") is None:
        raise RuntimeError("flite is missing: `sudo apt-get install flite` (make test does it as root)")
    if shutil.which("festival") is None:
        raise RuntimeError(f"festival is missing: `sudo apt-get install {FESTIVAL_PACKAGES}`")
    have = set(subprocess.run(["flite", "-lv"], capture_output=True, text=True, check=True).stdout.split())
    missing = sorted(set(FLITE_VOICES) - have)
    if missing:
        raise RuntimeError(f"flite lacks voices {missing}: reinstall flite")
    listed = subprocess.run(["festival", "--pipe"], input="(print (voice.list))", capture_output=True,
                            text=True, check=True).stdout
    missing = sorted(v for v in FESTIVAL_VOICES if v not in listed)
    if missing:
        raise RuntimeError(f"festival lacks voices {missing}: `sudo apt-get install {FESTIVAL_PACKAGES}`")
    return (espeak_voices() + [Voice("flite", v) for v in sorted(FLITE_VOICES)]
            + [Voice("festival", v) for v in sorted(FESTIVAL_VOICES)])


def split_voices(voices: list[Voice], test_fraction: float = 0.2) -> tuple[list[Voice], list[Voice]]:
    """(train, test) by speaker: whole espeak variants (by a hash of the name, in every accent) and
    whole recorded speakers (HELD_OUT_SPEAKERS, in every engine) are held out, so a test voice's
    timbre is never heard in training. Stable across runs and machines."""
    def held_out(v: Voice) -> bool:
        if v.engine != "espeak":
            return v.speaker in HELD_OUT_SPEAKERS
        h = int.from_bytes(hashlib.sha256(b"voice-split\x00" + v.variant.encode()).digest()[:4], "big")
        return h / 2**32 < test_fraction

    return [v for v in voices if not held_out(v)], [v for v in voices if held_out(v)]


def pick_voice(voices: list[Voice], rng: np.random.Generator) -> Voice:
    """A random voice: first an engine by ENGINE_WEIGHTS (among those present), then a voice of it."""
    by_engine: dict[str, list[Voice]] = {}
    for v in voices:
        by_engine.setdefault(v.engine, []).append(v)
    engines = sorted(by_engine)
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    group = by_engine[engines[rng.choice(len(engines), p=w / w.sum())]]
    return group[rng.integers(len(group))]


def word_sequence(rng: np.random.Generator, low: int = 3, high: int = 10) -> str:
    """Random words from VOCAB: phonetic variety no fixed sentence list has."""
    return " ".join(rng.choice(VOCAB, int(rng.integers(low, high + 1))))


def _wav(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    return resample(x, rate, SAMPLE_RATE).astype(np.int16)


def _tract_factor(pitch: int) -> float:
    """For the recorded voices (a handful of speakers, mostly male), espeak's pitch 0..99 as a
    resampling factor that scales pitch and formants together, as a shorter or longer vocal tract
    would: 0.89 at pitch 20 up to 1.26 at 80, so a male recording can also sound like a smaller
    speaker. Duration is stretched first by the same factor, so speed is kept."""
    return 2 ** ((pitch - 40) / 120)


def synthesize(text: str, voice: Voice, pitch: int = 50, speed: int = 160) -> np.ndarray:
    """Speech at 16 kHz int16 (n,). pitch 0..99 (50 neutral), speed in words per minute (160 neutral)."""
    if voice.engine == "festival":
        return synthesize_many([(text, voice, pitch, speed)])[0]
    if voice.engine == "flite":
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "x.wav"
            f = _tract_factor(pitch)
            # the final F0 after resampling by f is 60 + 2 * pitch Hz (100..220)
            subprocess.run(["flite", "-voice", voice.variant, "--setf", f"duration_stretch={160 / speed * f:.3f}",
                            "--setf", f"int_f0_target_mean={(60 + 2 * pitch) / f:.1f}", "-t", text, "-o", str(path)],
                           capture_output=True, check=True)
            return change_speed(_wav(path.read_bytes()), f).astype(np.int16)
    out = subprocess.run(["espeak-ng", "-v", voice.name, "-p", str(pitch), "-s", str(speed), "--stdout", text],
                         capture_output=True, check=True).stdout
    return _wav(out)


def synthesize_many(requests: list[tuple[str, Voice, int, int]]) -> list[np.ndarray]:
    """synthesize() for many (text, voice, pitch, speed) at once: festival requests are batched
    into one festival process (it takes ~0.2 s to start); pitch as _tract_factor."""
    out: list[np.ndarray | None] = [None] * len(requests)
    fest = [i for i, r in enumerate(requests) if r[1].engine == "festival"]
    for i, (text, voice, pitch, speed) in enumerate(requests):
        if voice.engine != "festival":
            out[i] = synthesize(text, voice, pitch, speed)
    if fest:
        with tempfile.TemporaryDirectory() as d:
            lines = []
            for i in fest:
                text, voice, pitch, speed = requests[i]
                stretch = 160 / speed * _tract_factor(pitch)
                quoted = text.replace("\\", " ").replace('"', " ")
                # Diphone voices take Duration_Stretch; HTS voices ignore it and take hts_engine's -r rate.
                rate = (f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {1 / stretch:.3f}))))'
                        if voice.variant.endswith("_hts") else "")
                lines.append(f"(voice_{voice.variant})(Parameter.set 'Duration_Stretch {stretch:.3f}){rate}"
                             f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{d}/{i}.wav" \'riff)')
            script = Path(d) / "batch.scm"
            script.write_text("\n".join(lines) + "\n")
            subprocess.run(["festival", "-b", str(script)], capture_output=True, check=True)
            for i in fest:
                x = _wav((Path(d) / f"{i}.wav").read_bytes())
                out[i] = change_speed(x, _tract_factor(requests[i][2])).astype(np.int16)
    return out  # type: ignore[return-value]


def resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    """Linear-interpolation resampling (float64). Enough for 16 kHz wake-word features."""
    n_out = round(len(x) * rate_out / rate_in)
    if n_out <= 1 or len(x) <= 1:
        return np.zeros(max(n_out, 0))
    return np.interp(np.linspace(0, len(x) - 1, n_out), np.arange(len(x)), x)


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Faster (factor > 1) or slower speech, pitch shifting with it, as a tape would."""
    return resample(np.asarray(x, np.float64), factor, 1.0)


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance white, pink (1/f) or brown (1/f^2) noise. (n,) float64"""
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spec = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spec /= np.sqrt(f) if kind == "pink" else f
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def mix_at_snr(speech: np.ndarray, background: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + background scaled so that 10 log10(P_speech / P_background) = snr_db. float64"""
    s = np.asarray(speech, np.float64)
    b = np.resize(np.asarray(background, np.float64), len(s))
    ps, pb = np.mean(s**2), np.mean(b**2)
    if ps == 0 or pb == 0:
        return s.copy()
    return s + b * np.sqrt(ps / (pb * 10 ** (snr_db / 10)))


def room_impulse(rt60_s: float, rng: np.random.Generator, length_s: float = 0.3) -> np.ndarray:
    """A synthetic room: a direct path then exponentially decaying noise reaching -60 dB at rt60."""
    n = int(length_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    h = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60_s) * 0.3
    h[0] = 1.0
    return h / np.sqrt(np.sum(h**2))


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """x convolved with h, same length as x (FFT convolution)."""
    n = len(x) + len(h) - 1
    y = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(h, n), n)[: len(x)]
    return y


def to_int16(x: np.ndarray, peak: float = 0.9) -> np.ndarray:
    """Scale down if needed so the loudest sample is at most `peak` of full scale; int16."""
    m = np.max(np.abs(x)) if len(x) else 0.0
    if m > peak * 32767:
        x = x * (peak * 32767 / m)
    return np.round(x).astype(np.int16)


def augment(speech: np.ndarray, rng: np.random.Generator, backgrounds: list[np.ndarray] | None = None,
            snr_db: tuple[float, float] = (-5.0, 20.0)) -> np.ndarray:
    """One random augmentation of a clip: speed 0.9-1.1, a room (half the time), noise at an SNR
    drawn from `snr_db`, gain -12..+6 dB. int16."""
    x = change_speed(speech, rng.uniform(0.9, 1.1))
    if rng.random() < 0.5:
        x = reverberate(x, room_impulse(rng.uniform(0.2, 0.8), rng))
    bg = (backgrounds[rng.integers(len(backgrounds))] if backgrounds
          else noise(str(rng.choice(["white", "pink", "brown"])), len(x), rng))
    x = mix_at_snr(x, bg, rng.uniform(*snr_db))
    return to_int16(x * 10 ** (rng.uniform(-12, 6) / 20))
