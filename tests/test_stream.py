"""The streaming recognizer (proslushka/stream.py) against the offline one: transcribe.py on the same audio."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import ROOT
from onnx_models import bursts

import transcribe
from proslushka.audio import load_audio
from proslushka.infer import Transcriber
from proslushka.segment import Chunker, split
from proslushka.stream import PARTIAL_BEAM, Stream

SR = 16000
MODEL = ROOT / "models" / "demo.onnx"
LM = ROOT / "models" / "demo-lm.bin"
HOTWORDS = "прослушка:5,иммортелей"
CLIPS = ["kredit", "portret", "smotrite", "ty_zhivoy"]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The four sample clips joined by pauses of quiet room noise (1.2 s, 3 s, 0.9 s), as 16-bit samples."""
    rng = np.random.default_rng(0)
    parts = [np.zeros(SR // 2, np.float32)]
    for clip, pause in zip(CLIPS, (1.2, 3.0, 0.9, 1.5), strict=True):
        parts += [load_audio(ROOT / "samples" / f"{clip}.opus"), 1e-4 * rng.standard_normal(int(pause * SR))]
    return np.round(np.concatenate(parts) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def tr() -> Transcriber:
    t = Transcriber(MODEL)
    t.use_lm(LM, None, {"прослушка": 5.0, "иммортелей": 10.0})  # what transcribe.py makes of --hotwords HOTWORDS
    return t


def feed(stream: Stream, blocks) -> tuple[list, list[str]]:
    """(finals, the partial after each block that completed none)."""
    finals, partials = [], []
    for block in blocks:
        done = stream.accept(block)
        finals += done
        if not done:
            partials.append(stream.partial())
    return finals + stream.finish(), partials


def test_chunker_cuts_exactly_as_split_whatever_the_blocks():
    # pauses long and short, and 14 s of speech with only 0.2 s pauses: cut at the 10 s limit
    spans = [(0.5, 2.0), (2.3, 3.1), (4.5, 5.0)] + [(6.0 + 0.9 * i, 6.7 + 0.9 * i) for i in range(16)] + [(22.0, 22.4)]
    audio = bursts(spans, 23.3)
    want = list(split([audio], max_seconds=10, align=320, skip_silence=True))
    assert len(want) >= 4
    rng = np.random.default_rng(1)
    for sizes in ([1, 7, 320, 319, 321], [16000], [100_000], list(rng.integers(1, 9000, 50))):
        chunker, got, at, k = Chunker(SR, max_seconds=10, align=320, skip_silence=True), [], 0, 0
        while at < len(audio):
            n = int(sizes[k % len(sizes)])
            got += chunker.push(audio[at : at + n])
            at, k = at + n, k + 1
        got += chunker.flush()
        assert [s for s, _ in got] == [s for s, _ in want]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


def test_finals_equal_transcribe_py_word_for_word(tmp_path, speech, tr, capsys):
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, SR, subtype="PCM_16")
    out = tmp_path / "speech.json"
    assert transcribe.main([str(wav), "--format", "json", "--hotwords", HOTWORDS, "-o", str(out)]) == 0
    offline = json.loads(out.read_text())
    assert "иммортелей" in offline["text"]
    # bytes of s16le in frames of an odd size: every other frame splits a sample between two frames
    data = speech.tobytes()
    finals, _ = feed(Stream(tr, partial_seconds=1e9), (data[i : i + 3001] for i in range(0, len(data), 3001)))
    assert len(finals) == 4  # one per clip: each pause ends one
    assert " ".join(f.text for f in finals) == offline["text"]
    words = [{"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)} for f in finals for w in f.words]
    assert words == offline["words"]
    assert all(f.start <= f.words[0].start and f.words[-1].end <= f.end for f in finals)  # a segment holds its words
    assert all(a.end < b.start for a, b in zip(finals, finals[1:], strict=False))


def test_partials_grow_with_the_speech_and_are_throttled(speech, tr, monkeypatch):
    """With the LM (the default): the partials spell the final's words before it comes."""
    runs = []
    run = tr.logprobs
    monkeypatch.setattr(tr, "logprobs", lambda audios: runs.append(len(audios[0])) or run(audios))
    x = speech.astype(np.float32) / 32768
    (a, second) = list(split([x], align=320, skip_silence=True))[1]
    x = x[: a + len(second) + SR // 2]  # the first two clips: partials cost a decode each
    block = SR // 10
    stream = Stream(tr, partial_seconds=0.4)
    finals, partials = feed(stream, (x[i : i + block] for i in range(0, len(x), block)))
    assert len(finals) == 2
    texts = [p for p in partials if p]
    for f in finals:  # each final's first word showed in a partial before it, as did most of its words
        assert any(p.split()[0] == f.words[0].word for p in texts)
        assert max(len(set(p.split()) & {w.word for w in f.words}) for p in texts) >= len(f.words) - 2
    assert partials[-1] == ""  # after the last final, in the pause: nothing pending
    # throttled: a decode per 0.4 s of a chunk's growth at most, plus the final's
    speech_seconds = sum(f.end - f.start for f in finals)
    assert len(runs) <= speech_seconds / 0.4 + 2 * len(finals)
    assert len(runs) >= speech_seconds / 0.4 / 2  # and partials did come at that pace
    runs.clear()
    feed(Stream(tr, partial_seconds=2.0), (x[i : i + block] for i in range(0, len(x), block)))
    assert len(runs) <= speech_seconds / 2.0 + 2 * len(finals)
    stream = Stream(tr)  # a busy server asks for no decode: the last partial comes back as it was
    assert stream.accept(x[: 2 * SR]) == []  # the first clip under way
    runs.clear()
    assert stream.partial(decode=False) == "" and runs == []
    first = stream.partial()
    assert first and len(runs) == 1
    assert stream.accept(x[2 * SR : 2 * SR + SR // 4]) == []  # 0.25 s more of it
    assert stream.partial(decode=False) == first and len(runs) == 1


def test_partials_use_the_lm_at_a_narrow_beam_or_greedy_and_finals_keep_the_lm(speech, tr):
    """A partial is the chunk so far read by the same LM and hotwords at a beam of PARTIAL_BEAM (as a Transcriber
    built with that beam reads it), or with greedy_partials the LM-free reading; the finals are the LM's at its
    tuned beam either way (hotwords included)."""
    narrow = Transcriber(MODEL)
    narrow.use_lm(LM, {"beam_width": PARTIAL_BEAM}, {"прослушка": 5.0, "иммортелей": 10.0})
    greedy = Transcriber(MODEL)
    x = speech.astype(np.float32) / 32768
    seen = []
    for reader, greedy_partials in ((narrow, False), (greedy, True)):
        stream, block, checked, finals = Stream(tr, 16000, 0.4, greedy_partials=greedy_partials), SR // 10, 0, []
        seen.append([])
        for i in range(0, len(x), block):
            finals += stream.accept(x[i : i + block])
            current, text = stream.chunker.current(), stream.partial()
            if current is not None and stream.partial_at == len(current[1]):  # decoded just now, from its start
                assert text == " ".join(w.word for w in reader.words_of(reader.logprobs([current[1]])[0]))
                checked += 1
                seen[-1].append(text)
        finals += stream.finish()
        assert checked >= 15
        assert " ".join(f.text for f in finals) == tr.transcribe_audio(x).text
        assert "иммортелей" in finals[1].text  # a hotword: the LM's, not greedy's spelling
    assert seen[0] != seen[1]  # the two readings differ somewhere on this speech


def test_other_rates_are_resampled_as_they_come(speech, tr):
    at8k = soxr.resample(speech.astype(np.float32) / 32768, SR, 8000, "HQ")
    back = soxr.resample(at8k, 8000, SR, "HQ")  # what the model hears of it: no sound above 4 kHz
    offline = tr.transcribe_audio(back)
    stream = Stream(tr, sample_rate=8000, partial_seconds=1e9)
    finals = feed(stream, (at8k[i : i + 2999] for i in range(0, len(at8k), 2999)))[0]
    assert " ".join(f.text for f in finals if f.text) == offline.text
    words = [(w.start, w.end) for f in finals for w in f.words]
    assert np.allclose(words, [(w.start, w.end) for w in offline.words], atol=0.021)
    assert abs(stream.seconds - len(back) / SR) < 0.01


def test_reset_ends_the_segment_and_the_clock_goes_on(speech, tr):
    x = speech.astype(np.float32) / 32768
    offline = tr.transcribe_audio(x)
    (a, first), (b, _) = list(split([x], align=320, skip_silence=True))[1:3]
    reset = (a + len(first) + b) // 2 // 320 * 320  # on the frame grid, in the pause after the second clip
    stream = Stream(tr, partial_seconds=1e9)
    finals = feed(stream, [x[:reset]])[0]  # finish() here and more audio after it: Vosk's reset
    assert len(finals) == 2 and stream.partial() == ""
    finals += feed(stream, [x[reset:]])[0]
    assert [(w.word, w.start, w.end) for f in finals for w in f.words] == [
        (w.word, w.start, w.end) for w in offline.words
    ]
    assert stream.seconds == len(x) / SR


def test_bad_blocks_and_settings_are_refused(tr):
    stream = Stream(tr)
    for block, why in [
        (np.full(10, np.nan, np.float32), "NaN"),
        (np.zeros((2, 10), np.float32), "one channel"),
        (np.zeros(10, np.int32), "float32 or int16"),
    ]:
        with pytest.raises(ValueError, match=why):
            stream.accept(block)
    for rate in (0, 100, float("nan"), 10**7):
        with pytest.raises(ValueError, match="sample_rate"):
            Stream(tr, sample_rate=rate)
    assert stream.accept(np.zeros(SR, np.float32)) == [] and stream.partial() == "" and stream.finish() == []


def test_transcribe_py_live_prints_the_finals_of_stdin_or_a_paced_file(tmp_path, speech, monkeypatch, capsys):
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech, SR, subtype="PCM_16")
    offline = Transcriber(MODEL).transcribe_audio(speech.astype(np.float32) / 32768)  # greedy: the LM's load is slow
    assert transcribe.main(["--live", str(wav), "--speed", "100", "--lm", "none"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and " ".join(lines) == offline.text  # a line per clip
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(speech.tobytes())))
    assert transcribe.main(["--live", "-", "--lm", "none"]) == 0
    assert capsys.readouterr().out.splitlines() == lines
    for bad in (["--live", "-", str(wav)], ["--live", "-", "--format", "srt"], ["--live", "-", "--speed", "0"]):
        with pytest.raises(SystemExit) as e:
            transcribe.main(bad)
        assert e.value.code == 2
