"""The synthetic-speech data recipe: voices, the held-out split, synthesis and augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from models import data as D


@pytest.fixture(scope="module")
def voices():
    return D.espeak_voices()


def test_voice_split_is_stable_disjoint_and_holds_out_whole_variants(voices):
    train, test = D.split_voices(voices)
    assert len(voices) > 200 and 0.1 < len(test) / len(voices) < 0.3
    assert {v.variant for v in train}.isdisjoint({v.variant for v in test})
    assert D.split_voices(list(reversed(voices)))[1] == list(reversed(test))  # order-independent


def test_synthesis_gives_16khz_speech_of_plausible_length(voices):
    x = D.synthesize("hey snips", voices[0], pitch=50, speed=160)
    assert x.dtype == np.int16 and 0.3 < len(x) / 16000 < 2.5 and np.abs(x).max() > 1000
    slow = D.synthesize("hey snips", voices[0], pitch=50, speed=100)
    assert len(slow) > 1.3 * len(x)
    other = D.synthesize("hey snips", voices[-1], pitch=50, speed=160)
    assert not np.array_equal(x[: len(other)], other[: len(x)])


def test_mixing_reaches_the_requested_snr_exactly():
    rng = np.random.default_rng(0)
    s = np.sin(np.arange(16000) / 5) * 3000
    for snr in (-5.0, 0.0, 10.0, 20.0):
        mixed = D.mix_at_snr(s, D.noise("pink", 4000, rng), snr)
        b = mixed - s
        assert 10 * np.log10(np.mean(s**2) / np.mean(b**2)) == pytest.approx(snr, abs=1e-9)


def test_noise_colours_speed_and_reverberation():
    rng = np.random.default_rng(1)
    n = 1 << 15
    def low_share(x):
        p = np.abs(np.fft.rfft(x)) ** 2
        return p[: len(p) // 16].sum() / p.sum()
    assert low_share(D.noise("white", n, rng)) < low_share(D.noise("pink", n, rng)) < low_share(
        D.noise("brown", n, rng))
    x = rng.standard_normal(16000)
    assert len(D.change_speed(x, 1.25)) == 12800 and len(D.change_speed(x, 0.8)) == 20000
    h = D.room_impulse(0.5, rng)
    assert np.sum(h**2) == pytest.approx(1.0)
    click = np.zeros(8000)
    click[100] = 1.0
    wet = D.reverberate(click, h)
    assert len(wet) == 8000 and np.abs(wet[2000:4000]).max() > 0  # the room rings on


def test_augmentation_never_clips_and_changes_the_clip(voices):
    rng = np.random.default_rng(2)
    x = D.synthesize("hey jarvis", voices[3])
    outs = [D.augment(x, rng) for _ in range(20)]
    assert all(o.dtype == np.int16 and np.abs(o.astype(int)).max() <= 0.9 * 32767 + 1 for o in outs)
    assert len({len(o) for o in outs}) > 5  # speeds differ
    assert D.CONFUSABLE["hey snips"] and "hey snips" not in D.CONFUSABLE["hey snips"]


def test_recorded_voices_are_split_by_speaker_in_every_engine():
    train, test = D.split_voices(D.all_voices())
    recorded_test = {v for v in test if v.engine != "espeak"}
    assert {v.engine for v in recorded_test} == {"flite", "festival"}
    assert {v.speaker for v in recorded_test} == set(D.HELD_OUT_SPEAKERS)
    assert {v.speaker for v in train}.isdisjoint({v.speaker for v in test})
    assert {v.engine for v in train} == {"espeak", "flite", "festival"}


@pytest.mark.parametrize("voice", [D.Voice("flite", "awb"), D.Voice("festival", "kal_diphone"),
                                   D.Voice("festival", "cmu_us_slt_arctic_hts")], ids=lambda v: v.name)
def test_flite_and_festival_speak_with_pitch_and_speed(voice):
    x = D.synthesize("hey jarvis", voice, pitch=50, speed=160)
    assert x.dtype == np.int16 and 0.4 < len(x) / 16000 < 2.5 and np.abs(x).max() > 1000
    slow = D.synthesize("hey jarvis", voice, pitch=50, speed=100)
    assert len(slow) > 1.3 * len(x)
    low, high = (D.synthesize("hey jarvis", voice, pitch=p, speed=160) for p in (20, 80))
    assert not np.array_equal(low[: len(high)], high[: len(low)])


def test_batched_festival_matches_one_at_a_time_and_keeps_order():
    reqs = [("hey snips", D.Voice("festival", "ked_diphone"), 40, 150), ("one two", D.Voice("flite", "rms"), 50, 160),
            ("open the door", D.Voice("festival", "kal_diphone"), 60, 180)]
    many = D.synthesize_many(reqs)
    for r, m in zip(reqs, many, strict=True):
        assert np.array_equal(m, D.synthesize(*r))


def test_pick_voice_follows_the_engine_weights_and_word_sequences_use_the_vocabulary():
    train, _ = D.split_voices(D.all_voices())
    rng = np.random.default_rng(3)
    engines = [D.pick_voice(train, rng).engine for _ in range(3000)]
    for e, w in D.ENGINE_WEIGHTS.items():
        assert abs(engines.count(e) / 3000 - w) < 0.04
    words = D.word_sequence(rng, 3, 10).split()
    assert 3 <= len(words) <= 10 and set(words) <= set(D.VOCAB)
    assert not set(D.TEST_SENTENCES) & set(D.SENTENCES)
