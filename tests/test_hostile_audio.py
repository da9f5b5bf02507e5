"""Odd but real audio: a DC offset (cheap microphones, some sound cards) and chained Ogg streams (voice messages
joined with `cat`) are transcribed as the plain audio is, and a chain cut short is still refused."""

import json

import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO, ROOT

from proslushka.audio import AudioError, AudioTooLongError, load_audio, load_audio_bytes
from proslushka.infer import Transcriber
from proslushka.metrics import edit_distance

SAMPLES = ROOT / "samples"
SR = 16000


@pytest.fixture(scope="module")
def demo():
    return Transcriber(ROOT / "models" / "demo.onnx", threads=1)


@pytest.fixture(scope="module")
def texts(demo):
    rows = [json.loads(line) for line in (SAMPLES / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    return {r["audio_filepath"]: demo.transcribe_path(SAMPLES / r["audio_filepath"]).text for r in rows}


def test_a_dc_offset_leaves_the_transcript_as_it_is(tmp_path, demo, texts):
    for name, want in texts.items():
        for offset in (0.2, 0.5):
            path = tmp_path / f"{offset}-{name}.wav"
            sf.write(path, load_audio(SAMPLES / name) + np.float32(offset), SR, subtype="FLOAT")  # no clipping
            got = demo.transcribe_path(path).text
            # the features keep 3% of the offset (pre-emphasis), which can move a letter or a space
            assert edit_distance(want, got) <= 2, (offset, want, got)
            if name == "kredit.opus":
                assert got == want


def _vorbis(tmp_path, clip):
    path = tmp_path / f"{clip}.ogg"
    sf.write(path, load_audio(AUDIO / f"{clip}.wav"), SR, format="OGG", subtype="VORBIS")
    return path


def _chain(tmp_path, parts, name="chain.ogg"):
    path = tmp_path / name
    path.write_bytes(b"".join(p.read_bytes() for p in parts))  # `cat a b > chain`
    return path


@pytest.mark.parametrize("kind", ["opus", "vorbis", "mixed", "three"])
def test_a_chained_ogg_is_decoded_link_by_link(tmp_path, kind):
    opus, vorbis = [SAMPLES / "kredit.opus", SAMPLES / "portret.opus"], [_vorbis(tmp_path, c) for c in ("utt1", "utt2")]
    parts = {"opus": opus, "vorbis": vorbis, "mixed": [opus[0], vorbis[0]], "three": [*opus, opus[0]]}[kind]
    chain = _chain(tmp_path, parts)
    want = np.concatenate([load_audio(p) for p in parts])  # each file decoded on its own
    got = load_audio(chain)
    assert len(got) == len(want) and np.array_equal(got, want)
    assert np.array_equal(load_audio_bytes(chain.read_bytes()), want)  # the serverless handler's path
    with pytest.raises(AudioTooLongError):  # the limit counts the whole chain, not link by link
        load_audio(chain, max_seconds=len(want) / SR - 0.1)


def test_a_chained_opus_gets_both_transcripts(tmp_path, demo, texts):
    chain = _chain(tmp_path, [SAMPLES / "kredit.opus", SAMPLES / "portret.opus"], "chain.opus")
    got = demo.transcribe_path(chain)
    joined = np.concatenate([load_audio(SAMPLES / "kredit.opus"), load_audio(SAMPLES / "portret.opus")])
    assert got.text == demo.transcribe_audio(joined).text  # what the two files played one after the other say
    # ...which is both transcripts, but for a letter or two where the second starts without a pause
    assert edit_distance(f"{texts['kredit.opus']} {texts['portret.opus']}", got.text) <= 2
    assert got.duration == pytest.approx(2.278 + 3.009, abs=0.001)


def test_a_chain_cut_short_is_refused(tmp_path):
    a, b = (SAMPLES / "kredit.opus").read_bytes(), (SAMPLES / "portret.opus").read_bytes()
    cut = b.rfind(b"OggS")  # the start of the second link's last page: whole pages, no end-of-stream page
    for name, data in [("second", a + b[: len(b) // 2]), ("second-at-a-page", a + b[:cut]), ("first", a[:-200] + b)]:
        (tmp_path / f"{name}.opus").write_bytes(data)
        with pytest.raises(AudioError, match=f"^{tmp_path / name}.opus: truncated"):
            load_audio(tmp_path / f"{name}.opus")


def test_a_chain_whose_second_link_is_not_audio_is_one_line(tmp_path):
    # one page that opens and closes a stream (flags BOS | EOS) of 16 bytes that no decoder knows
    page = b"OggS\x00\x06" + bytes(8) + b"junk" + bytes(8) + b"\x01\x10" + b"x" * 16
    (tmp_path / "junk.opus").write_bytes((SAMPLES / "kredit.opus").read_bytes() + page)
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "junk.opus")
    assert str(e.value).startswith(f"{tmp_path / 'junk.opus'}: not readable audio (Ogg link 2 of 2: ")
    assert "\n" not in str(e.value) and "object at" not in str(e.value)
