import json
import re

import numpy as np
import pytest
from onnx_models import bursts, energy_onnx

from proslushka.formats import FORMATS, cues, render, timestamp, to_srt, to_tsv, to_vtt
from proslushka.infer import Transcriber, Transcript, Word, ctc_words
from proslushka.text import LABELS

B = len(LABELS)  # blank
SP, A, B_, V = LABELS.index(" "), LABELS.index("а"), LABELS.index("б"), LABELS.index("в")


def test_ctc_words_from_hand_made_frames():
    # frames:  0  1  2  3  4   5   6  7  8  9  10  11  12
    ids = [B, A, A, B, B_, B_, SP, B, V, B, V, V, B]
    words = ctc_words(ids, B, LABELS, 0.02, offset=10.0)
    assert [w.word for w in words] == ["аб", "вв"]  # v, blank, v is two letters; v, v one
    # "аб" starts at its first emission (frame 1) and ends after the last repeat of "б" (frame 5)
    assert words[0].start == pytest.approx(10.02) and words[0].end == pytest.approx(10.12)
    assert words[1].start == pytest.approx(10.16) and words[1].end == pytest.approx(10.24)


def test_ctc_words_edge_cases():
    assert ctc_words([], B, LABELS, 0.02) == []
    assert ctc_words([B, SP, SP, B], B, LABELS, 0.02) == []
    (w,) = ctc_words([A], B, LABELS, 0.02)  # a word on the last frame is flushed, one frame long
    assert (w.word, w.start, w.end) == ("а", 0.0, 0.02)
    words = ctc_words([A, SP, A, SP, B, A], B, LABELS, 0.02)
    assert [w.word for w in words] == ["а", "а", "а"] and [w.start for w in words] == pytest.approx([0, 0.04, 0.1])


def _transcript(words):
    return Transcript(" ".join(w for w, _, _ in words), [Word(*w) for w in words], 10.0)


def test_cues_break_on_pauses_length_and_word_limit():
    t = _transcript([("раз", 0.0, 0.3), ("два", 0.4, 0.7), ("три", 2.0, 2.3), ("четыре", 2.4, 2.9)])
    assert cues(t.words) == [(0.0, 0.7, "раз два"), (2.0, 2.9, "три четыре")]  # a 1.3 s pause starts a cue
    assert [c[2] for c in cues(t.words, max_words=1)] == ["раз", "два", "три", "четыре"]
    long = [(f"слово{i}", i * 0.5, i * 0.5 + 0.4) for i in range(12)]
    assert all(len(text) <= 42 for _, _, text in cues(_transcript(long).words))


def test_timestamp():
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(3723.4567) == "01:02:03,457"
    assert timestamp(59.9996, ".") == "00:01:00.000"


SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n")
VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n")


def _seconds(h, m, s, ms):
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    blocks = [b + "\n" for b in text.strip("\n").split("\n\n")] if text.strip() else []
    out = []
    for i, block in enumerate(blocks, 1):
        m = SRT_CUE.fullmatch(block)
        assert m and int(m[1]) == i, block
        out.append((_seconds(*m.groups()[1:5]), _seconds(*m.groups()[5:9]), m[10]))
    return out


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n")
    body = text[len("WEBVTT\n\n") :]
    blocks = [b + "\n" for b in body.strip("\n").split("\n\n")] if body.strip() else []
    out = []
    for block in blocks:
        m = VTT_CUE.fullmatch(block)
        assert m, block
        out.append((_seconds(*m.groups()[0:4]), _seconds(*m.groups()[4:8]), m[9]))
    return out


def parse_tsv(text: str) -> list[tuple[float, float, str]]:
    lines = text.splitlines()
    assert lines[0] == "start\tend\tword"
    return [(float(a), float(b), w) for a, b, w in (line.split("\t") for line in lines[1:])]


SPANS = [(0.5, 1.0), (1.3, 2.0), (3.0, 3.25), (5.5, 6.4), (6.6, 7.0)]


@pytest.fixture(scope="module")
def heard(tmp_path_factory):
    """The energy model's transcript of noise bursts at SPANS in 8 s of audio: one word per burst."""
    tr = Transcriber(energy_onnx(tmp_path_factory.mktemp("energy")))
    return tr.transcribe_audio(bursts(SPANS, 8.0))


def test_word_times_follow_the_sound(heard):
    assert heard.text == " ".join(["а"] * len(SPANS)) and heard.duration == 8.0
    for w, (a, b) in zip(heard.words, SPANS, strict=True):
        assert abs(w.start - a) <= 0.02 and abs(w.end - b) <= 0.03


@pytest.mark.parametrize("fmt", ["srt", "vtt", "tsv", "json"])
def test_formats_parse_back_with_increasing_times_inside_the_audio(heard, fmt):
    text = render(heard, fmt, max_words=1, audio_filepath="x.wav")
    if fmt == "json":
        d = json.loads(text)
        assert d["audio_filepath"] == "x.wav" and d["text"] == heard.text and d["duration"] == 8.0
        items = [(w["start"], w["end"], w["word"]) for w in d["words"]]
    else:
        items = {"srt": parse_srt, "vtt": parse_vtt, "tsv": parse_tsv}[fmt](text)
    assert [w for _, _, w in items] == [w.word for w in heard.words]
    starts, ends = np.array([a for a, _, _ in items]), np.array([b for _, b, _ in items])
    assert np.all(starts < ends) and np.all(starts[1:] >= ends[:-1]) and np.all(np.diff(starts) > 0)
    assert starts[0] >= 0 and ends[-1] <= heard.duration
    assert np.abs(starts - [w.start for w in heard.words]).max() <= 0.0005


def test_subtitle_cues_group_words(heard):
    grouped = parse_srt(to_srt(heard))
    assert [c[2] for c in grouped] == ["а а а", "а а"]  # the 2.25 s pause before 5.5 s starts a new cue
    assert parse_vtt(to_vtt(heard))[0][:2] == pytest.approx(grouped[0][:2], abs=0.0005)


def test_empty_transcript_in_every_format():
    t = Transcript("", [], 1.0)
    assert render(t, "txt") == "\n" and to_srt(t) == "" and to_vtt(t) == "WEBVTT\n\n"
    assert to_tsv(t) == "start\tend\tword\n" and json.loads(render(t, "json"))["words"] == []
    assert set(FORMATS) == {"txt", "json", "srt", "vtt", "tsv"}
    with pytest.raises(ValueError, match="unknown format"):
        render(t, "doc")
