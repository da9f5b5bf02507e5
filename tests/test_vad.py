"""Speech detection and speech-only chunking of long audio (segment.split with skip_silence)."""

import numpy as np
import pytest
from conftest import AUDIO, CLIPS
from onnx_models import bursts

from proslushka import augment, segment
from proslushka.audio import load_audio
from proslushka.segment import split
from proslushka.vad import SpeechDetector, frame_energy_db

FRAME = 320
SR = 16000


def _chunks(audio, skip_silence=True, **kw):
    blocks = (audio[i : i + 7000] for i in range(0, len(audio), 7000))  # blocks that line up with nothing
    return list(split(blocks, align=FRAME, skip_silence=skip_silence, **kw))


def test_chunks_hold_the_speech_with_margins_and_skip_long_pauses():
    spans = [(1.0, 2.5), (4.0, 4.6), (4.9, 6.0), (9.0, 10.0)]  # the 0.3 s pause stays inside a chunk
    audio = bursts(spans, 12.0)
    got = [(s / SR, (s + len(c)) / SR) for s, c in _chunks(audio)]
    m = segment.MARGIN_SECONDS
    want = [(1.0 - m, 2.5 + m), (4.0 - m, 6.0 + m), (9.0 - m, 10.0 + m)]
    assert np.abs(np.array(got) - want).max() <= 0.02 + 1e-9  # one frame of 20 ms
    for s, c in _chunks(audio):
        assert s % FRAME == 0 and np.array_equal(c, audio[s : s + len(c)])  # the file's own samples, frame-aligned


def test_silence_and_steady_noise_give_no_chunk():
    assert _chunks(np.zeros(SR * 30, np.float32)) == []
    hiss = (np.random.default_rng(0).standard_normal(SR * 30) * 0.01).astype(np.float32)  # -40 dBFS room noise
    assert _chunks(hiss) == []


def test_speech_over_room_noise_is_found_at_10_db_snr():
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(SR * 12) * 0.01).astype(np.float32)  # -40 dBFS noise all along
    for a, b in [(2.0, 3.0), (7.0, 8.5)]:
        n = int((b - a) * SR)
        tone = 0.0316 * np.sqrt(2) * np.sin(2 * np.pi * 300 * np.arange(n) / SR)  # 10 dB over the noise
        audio[int(a * SR) : int(b * SR)] += tone.astype(np.float32)
    got = [(s / SR, (s + len(c)) / SR) for s, c in _chunks(audio)]
    m = segment.MARGIN_SECONDS
    assert np.abs(np.array(got) - [(2.0 - m, 3.0 + m), (7.0 - m, 8.5 + m)]).max() <= 0.04


def test_long_speech_is_still_cut_to_max_seconds():
    audio = bursts([(0.5 + 2.5 * i, 2.8 + 2.5 * i) for i in range(20)], 51.0)  # 0.2 s pauses: one long stretch
    pieces = _chunks(audio, max_seconds=10, search_seconds=4)
    assert len(pieces) >= 5 and all(len(c) <= 10 * SR + FRAME for _, c in pieces)
    first, end = pieces[0][0], pieces[-1][0] + len(pieces[-1][1])
    assert np.array_equal(np.concatenate([c for _, c in pieces]), audio[first:end])


def test_detector_floor_follows_the_noise_down_and_up_slowly():
    e = np.array([-40.0] * 50 + [-20.0] * 50 + [-40.0] * 50)
    d = SpeechDetector(0.02)
    active = np.concatenate([d.active(e[:70]), d.active(e[70:])])  # fed in two calls: the same as one
    assert not active[:50].any() and active[50:100].all() and not active[100:].any()
    tone = 0.1 * np.sqrt(2) * np.sin(2 * np.pi * 400 * np.arange(FRAME * 2) / SR)  # 8 whole periods a frame
    assert np.abs(frame_energy_db(tone, FRAME) + 20).max() < 1e-6  # RMS 0.1: -20 dBFS
    assert (frame_energy_db(np.full(FRAME * 2, 0.5, np.float32), FRAME) == -100).all()  # a DC offset alone: silence


def _speech() -> np.ndarray:
    """The three fixture clips with pauses of 0.3 s (kept inside a chunk), 1.5 s and 1 s of silence around them."""
    clips = [load_audio(AUDIO / f"{c}.wav") for c in CLIPS]
    pauses = [np.zeros(int(s * SR), np.float32) for s in (0.3, 1.5)]
    edge = np.zeros(SR, np.float32)
    return np.concatenate([edge, augment.join(clips, pauses), edge])


@pytest.mark.parametrize("kind", ["none", "white", "pink", "brown", "hum"])
def test_a_dc_offset_moves_neither_the_speech_chunks_nor_the_cuts(kind):
    speech = _speech()
    if kind != "none":  # room noise 20 dB under the speech
        speech = augment.add_at_snr(speech, augment.noise(len(speech), kind, np.random.default_rng(0)), 20)

    def spans(x, **kw):
        return [(s, len(c)) for s, c in _chunks(x, **kw)]

    want, cuts = spans(speech), spans(speech, max_seconds=3, search_seconds=2, skip_silence=False)
    assert len(want) >= 2 and len(cuts) >= 4  # the test has chunks and pause cuts to move
    for offset in (0.01, 0.05, 0.1, 0.2, 0.5):  # cheap microphones and some sound cards have one
        moved = speech + np.float32(offset)
        assert spans(moved) == want, offset
        assert spans(moved, max_seconds=3, search_seconds=2, skip_silence=False) == cuts, offset


def test_transcriber_skips_silence_but_keeps_times_and_duration(tmp_path):
    from onnx_models import energy_onnx

    from proslushka.infer import Transcriber

    quiet = Transcriber(energy_onnx(tmp_path)).transcribe_audio(np.zeros(SR * 5, np.float32))
    assert quiet.text == "" and quiet.words == [] and quiet.duration == 5.0
    audio = bursts([(1.0, 1.5), (4.0, 4.4)], 6.0)  # the energy model writes "а" over each burst
    for skip in (True, False):
        got = Transcriber(energy_onnx(tmp_path), skip_silence=skip).transcribe_audio(audio)
        assert [w.word for w in got.words] == ["а", "а"] and got.duration == 6.0
        times = np.array([(w.start, w.end) for w in got.words])
        assert np.abs(times - [(1.0, 1.5), (4.0, 4.4)]).max() <= 0.02 + 1e-9  # one frame
