import subprocess
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import AUDIO, CLIPS
from onnx_models import bursts, energy_onnx, write_wav

from proslushka import audio
from proslushka.audio import AudioError, ffmpeg_path, load_audio
from proslushka.infer import Transcriber
from proslushka.segment import pause_cut, split, stream_audio

FRAME = 320  # samples per model output frame: hop 160 × stride 2


@pytest.fixture(scope="module")
def m4a(tmp_path_factory):
    """utt2 as AAC in MP4: a format libsndfile does not read, so ffmpeg decodes it."""
    path = tmp_path_factory.mktemp("m4a") / "utt2.m4a"
    subprocess.run([ffmpeg_path(), "-v", "error", "-i", AUDIO / "utt2.wav", "-c:a", "aac", path], check=True)
    return path


@pytest.mark.parametrize("name", ["utt2.wav", "utt2.opus", "m4a"])
def test_streamed_blocks_equal_the_whole_decode(name, m4a):
    path = m4a if name == "m4a" else AUDIO / name
    blocks = list(stream_audio(path, block_seconds=0.5))
    assert len(blocks) == 8 and all(len(b) == 8000 for b in blocks[:-1])
    assert np.array_equal(np.concatenate(blocks), load_audio(path))


def test_streamed_resampling_equals_resampling_the_whole(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 44100 * 3 + 7).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 44100, subtype="FLOAT")
    blocks = list(stream_audio(tmp_path / "a.wav", block_seconds=0.3))
    whole = soxr.resample(x, 44100, 16000, "HQ")  # librosa.resample(res_type="soxr_hq") before its length fix
    assert len(blocks) > 10 and sum(map(len, blocks)) == -(-len(x) * 16000 // 44100)  # ceil, as librosa
    assert np.array_equal(np.concatenate(blocks)[: len(whole)], whole)


def test_stream_errors_name_the_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.wav").write_text("это не аудио\n" * 20)
    for name, reason in [("missing.wav", "no such file"), ("empty.wav", "empty file"), ("notes.wav", "not readable")]:
        with pytest.raises(AudioError, match=f"^{tmp_path / name}: {reason}"):
            list(stream_audio(tmp_path / name))


def test_stopping_early_leaves_no_ffmpeg_behind(monkeypatch, m4a):
    started = []
    popen = audio.subprocess.Popen
    monkeypatch.setattr(audio.subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    stream = stream_audio(m4a, block_seconds=0.1)
    next(stream)
    assert started[0].poll() is None  # ffmpeg is still decoding
    stream.close()
    assert started[0].returncode is not None  # killed and reaped, not left running or a zombie


def test_streaming_memory_does_not_grow_with_length(tmp_path):
    block = (np.random.default_rng(0).standard_normal(160000) * 3000).astype(np.int16)  # 10 s

    def run(minutes):
        with sf.SoundFile(tmp_path / f"{minutes}.wav", "w", 16000, 1, subtype="PCM_16") as f:
            for _ in range(6 * minutes):
                f.write(block)
        tracemalloc.start()
        n = sum(len(b) for b in stream_audio(tmp_path / f"{minutes}.wav"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return n, peak

    (n1, peak1), (n8, peak8) = run(1), run(8)
    assert n8 == 8 * n1 == 8 * 60 * 16000
    assert peak8 < peak1 * 1.2 < 3e6  # a block or two of 10 s (0.64 MB as float32), whatever the length


def test_pause_cut_picks_the_middle_of_the_longest_pause():
    audio = bursts([(0, 2.0), (2.2, 4.0), (5.0, 8.0)], 8.0)  # pauses: 2.0-2.2 and 4.0-5.0
    cut = pause_cut(audio, 16000, 7 * 16000, 480)
    assert abs(cut / 16000 - 4.5) < 0.03


def test_split_cuts_in_pauses_and_keeps_every_sample():
    spans = [(0.2 + 3 * i, 2.6 + 3 * i) for i in range(20)]  # 2.4 s of sound, 0.6 s pauses, 60 s
    audio = bursts(spans, 60.0)
    blocks = (audio[i : i + 7000] for i in range(0, len(audio), 7000))  # blocks that do not line up with anything
    pieces = list(split(blocks, max_seconds=10, search_seconds=4, align=FRAME))
    assert np.array_equal(np.concatenate([c for _, c in pieces]), audio)
    assert [s for s, _ in pieces] == list(np.cumsum([0] + [len(c) for _, c in pieces[:-1]]))
    for start, chunk in pieces[1:]:
        t = start / 16000
        assert start % FRAME == 0 and len(chunk) <= 10 * 16000
        assert any(b + 0.05 < t < a - 0.05 for (_, b), (a, _) in zip(spans, spans[1:], strict=False)), t


def test_split_memory_does_not_grow_with_length():
    block = np.random.default_rng(0).standard_normal(160000).astype(np.float32) * 0.1  # 10 s

    def run(minutes):
        tracemalloc.start()
        n = sum(1 for _ in split((block for _ in range(6 * minutes)), max_seconds=20))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return n, peak

    (n5, peak5), (n30, peak30) = run(5), run(30)
    assert n30 > 5 * n5 - 5
    assert peak30 < peak5 * 1.2 < 8e6  # a few buffers of 20-30 s, whether 5 or 30 minutes go through


def _concatenation(clips, seconds):
    """The clips one after another with silence between (each clip starting on a model frame), to `seconds`."""
    audio, offsets = [np.zeros(FRAME * 50, np.float32)], []
    i = 0
    while sum(map(len, audio)) < seconds * 16000:
        clip = clips[i % len(clips)]
        offsets.append(sum(map(len, audio)))
        gap = FRAME * (100 + 3 * i) - len(clip) % FRAME  # 2-3 s of silence, so the next clip is frame-aligned
        audio += [clip, np.zeros(gap, np.float32)]
        i += 1
    return np.concatenate(audio), offsets


def test_long_audio_gives_the_clips_transcripts_at_their_offsets(tmp_path):
    tr = Transcriber(energy_onnx(tmp_path))
    clips = [load_audio(AUDIO / f"{c}.wav") for c in CLIPS]
    alone = [tr.transcribe_audio(c) for c in clips]
    assert all(t.words for t in alone)
    long, offsets = _concatenation(clips, 75)
    path = write_wav(tmp_path / "long.wav", long)

    got = tr.transcribe_path(path, max_seconds=20)  # streamed from the decoder and cut into at least four chunks
    want = [(w.word, w.start + o / 16000, w.end + o / 16000) for i, o in enumerate(offsets) for w in alone[i % 3].words]
    assert [w.word for w in got.words] == [w for w, _, _ in want]
    assert np.abs(np.array([(w.start, w.end) for w in got.words]) - [(a, b) for _, a, b in want]).max() < 1e-6
    assert got.text == " ".join(w for w, _, _ in want) and got.duration == len(long) / 16000
    assert len(list(split([long], max_seconds=20))) >= 4
    whole = tr.transcribe_audio(long, max_seconds=1000)  # one piece: the cuts changed nothing
    assert [(w.word, round(w.start, 6), round(w.end, 6)) for w in whole.words] == [
        (w.word, round(w.start, 6), round(w.end, 6)) for w in got.words
    ]
