import os
import subprocess
import wave

import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO

from proslushka import audio
from proslushka.audio import AudioError, AudioTooLongError, ffmpeg_path, load_audio, load_audio_bytes


def ffmpeg(*args):
    """Run the ffmpeg command-line tool: the independent reference (and the encoder of test files)."""
    return subprocess.run([ffmpeg_path(), "-nostdin", "-v", "error", "-y", *map(str, args)], check=True,
                          capture_output=True).stdout  # fmt: skip


def ffmpeg_decode(path):
    return np.frombuffer(ffmpeg("-i", path, "-f", "s16le", "-ac", "1", "-ar", 16000, "-"), "<i2") / 32768


def snr_db(ref, x):
    return 10 * np.log10((ref**2).sum() / (((ref - x) ** 2).sum() + 1e-20))  # identical: 200 dB


def pcm16(path):
    """A PCM WAV's samples as int16, read with Python's own wave module."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2")


def test_wav_decodes_exactly_as_pcm16(reference):
    wave_ = load_audio(AUDIO / "utt1.wav")
    assert wave_.dtype == np.float32
    assert np.array_equal(wave_, pcm16(AUDIO / "utt1.wav").astype(np.float32) / 32768)  # NeMo's int16 / 32768
    assert np.array_equal(wave_, reference["quartznet_tiny"]["utt1_waveform"].reshape(-1))  # what NeMo read


@pytest.mark.parametrize("clip", ["utt1", "utt2", "utt3"])
def test_opus_decodes_close_to_ffmpeg(clip):
    got, want = load_audio(AUDIO / f"{clip}.opus"), ffmpeg_decode(AUDIO / f"{clip}.opus")
    assert len(got) == len(want) == len(load_audio(AUDIO / f"{clip}.wav"))  # pre-skip and end trim as ffmpeg
    assert snr_db(want, got) > 30  # libopus at 16 kHz vs ffmpeg's own decoder at 48 kHz: measured 36-46 dB


@pytest.mark.parametrize("ext, codec", [("mp3", "libmp3lame"), ("m4a", "aac"), ("ogg", "libvorbis")])
def test_compressed_formats_keep_the_exact_length(tmp_path, ext, codec):
    path = tmp_path / f"utt2.{ext}"
    ffmpeg("-i", AUDIO / "utt2.wav", "-c:a", codec, "-b:a", "64k", path)
    got, want = load_audio(path), ffmpeg_decode(path)
    assert len(got) == len(want) == len(pcm16(AUDIO / "utt2.wav"))  # encoder delay and padding removed
    assert snr_db(want, got) > 30


def test_resamples_with_librosas_length_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t + 0.5)
    sf.write(tmp_path / "s.flac", np.stack([left, right], 1) * 0.5, 44100, subtype="PCM_24")
    wave_ = load_audio(tmp_path / "s.flac")
    t16 = np.arange(16000) / 16000
    mean = 0.25 * (np.sin(2 * np.pi * 440 * t16) + np.sin(2 * np.pi * 440 * t16 + 0.5))  # the channels' mean
    assert len(wave_) == 16000  # ceil(44100 × 16000 / 44100)
    assert np.abs(wave_ - mean)[200:-200].max() < 1e-3  # away from the edges, where the filter has no past


def test_bytes_round_trip():
    data = (AUDIO / "utt1.opus").read_bytes()
    assert np.array_equal(load_audio_bytes(data), load_audio(AUDIO / "utt1.opus"))


def test_names_are_never_protocols(tmp_path):
    for ext, codec in [("wav", "pcm_s16le"), ("m4a", "aac")]:  # both decoders
        path = tmp_path / f"file:x.{ext}"
        ffmpeg("-i", AUDIO / "utt1.wav", "-c:a", codec, tmp_path / f"real.{ext}")
        (tmp_path / f"real.{ext}").rename(path)
        (tmp_path / f"x.{ext}").write_bytes(b"the wrong file")  # what the file: protocol would open
        assert len(load_audio(path)) == 22480


def test_a_long_limit_is_kept_whatever_the_decoder(tmp_path):
    sf.write(tmp_path / "a.wav", np.zeros(48000, np.int16), 16000)
    ffmpeg("-i", tmp_path / "a.wav", "-c:a", "aac", tmp_path / "a.m4a")
    for name in ("a.wav", "a.m4a"):  # the header's length / the decoded length
        assert len(load_audio(tmp_path / name, max_seconds=3)) == 48000
        with pytest.raises(AudioTooLongError, match="limit of 2 s"):
            load_audio(tmp_path / name, max_seconds=2)


def _bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("это не аудио\n" * 20)
    (tmp_path / "noise.opus").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "truncated.wav").write_bytes((AUDIO / "utt1.wav").read_bytes()[:30])
    opus = (AUDIO / "utt3.opus").read_bytes()
    (tmp_path / "truncated.opus").write_bytes(opus[: len(opus) // 2])
    ffmpeg("-i", AUDIO / "utt3.wav", "-c:a", "flac", tmp_path / "whole.flac")
    flac = (tmp_path / "whole.flac").read_bytes()
    (tmp_path / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    ffmpeg("-i", AUDIO / "utt3.wav", "-c:a", "aac", "-movflags", "+faststart", tmp_path / "whole.m4a")
    m4a = (tmp_path / "whole.m4a").read_bytes()
    (tmp_path / "truncated.m4a").write_bytes(m4a[: len(m4a) // 2])
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5", "-c:v", "mpeg4", tmp_path / "silent_film.mp4")
    (tmp_path / "folder.wav").mkdir()
    return {
        tmp_path / "missing.wav": "no such file",
        tmp_path / ("x" * 300 + ".wav"): "File name too long",
        tmp_path / "folder.wav": "not a file",
        tmp_path / "empty.wav": "empty file",
        tmp_path / "notes.txt": "not readable audio",
        tmp_path / "noise.opus": "not readable audio",
        tmp_path / "truncated.wav": "",
        tmp_path / "truncated.opus": "truncated",
        tmp_path / "truncated.flac": "truncated",
        tmp_path / "truncated.m4a": "partial file",
        tmp_path / "silent_film.mp4": "no audio stream",
    }


def test_bad_audio_raises_one_clear_error_naming_the_file(tmp_path):
    for path, reason in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as e:
            load_audio(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and reason in msg and "\n" not in msg, msg


def test_libsndfile_formats_start_no_process(monkeypatch, tmp_path):
    monkeypatch.setattr(audio.subprocess, "Popen", None)  # any ffmpeg run would fail
    sf.write(tmp_path / "a.flac", np.zeros(1600, np.int16), 16000)
    for path in (AUDIO / "utt1.wav", AUDIO / "utt1.opus", tmp_path / "a.flac"):
        assert len(load_audio(path))


def test_empty_bytes_raise():
    with pytest.raises(AudioError, match="empty"):
        load_audio_bytes(b"", "upload")


def _wav_with_data_size(path, size):
    """A 1 s PCM16 WAV whose RIFF and data chunk sizes say `size` (a recorder's placeholder, or a lie)."""
    sf.write(path, np.random.default_rng(1).uniform(-0.5, 0.5, 16000), 16000, subtype="PCM_16")
    if size is None:
        return path
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[4:8] = data[at + 4 : at + 8] = size.to_bytes(4, "little")
    path.write_bytes(data)
    return path


def test_a_wav_cut_short_is_refused_as_flac_is(tmp_path):
    whole = tmp_path / "whole.wav"
    sf.write(whole, np.zeros(16000, np.int16), 16000)
    data = whole.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # the header still says 1 s
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "cut.wav")
    assert str(e.value) == f"{tmp_path / 'cut.wav'}: truncated (0.50 s of 1.00 s)"


@pytest.mark.parametrize("size", [0, 0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_a_streamed_wavs_placeholder_size_is_read_to_the_end(tmp_path, size):
    path = _wav_with_data_size(tmp_path / "streamed.wav", size)
    want = pcm16(_wav_with_data_size(tmp_path / "real.wav", None)).astype(np.float32) / 32768
    assert np.array_equal(load_audio(path), want)  # all of it, exactly (size 0: libsndfile alone reads nothing)


def test_an_mp3_cut_short_is_refused_when_its_header_counts_the_frames(tmp_path):
    seconds = len(pcm16(AUDIO / "utt2.wav")) / 16000
    for xing in ("1", "0"):  # LAME's Info frame (ffmpeg's default) / none: the length is then only a guess
        whole = tmp_path / f"xing{xing}.mp3"
        ffmpeg("-i", AUDIO / "utt2.wav", "-c:a", "libmp3lame", "-b:a", "64k", "-write_xing", xing, whole)
        n = len(load_audio(whole))  # a whole file is never taken for a cut one, with or without
        cut = tmp_path / f"cut{xing}.mp3"
        cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        if xing == "1":
            with pytest.raises(AudioError, match=rf"cut1.mp3: truncated \(\d\.\d\d s of {seconds:.2f} s\)$"):
                load_audio(cut)
        else:
            assert len(load_audio(cut)) < 0.6 * n  # no reliable count to check against: read as it is


def test_sample_rates_too_low_for_speech_are_refused(tmp_path):
    sf.write(tmp_path / "1hz.wav", np.zeros(6000, np.int16), 1)  # 6 KB: would be 100 min at 16 kHz
    sf.write(tmp_path / "3999hz.wav", np.zeros(3999, np.int16), 3999)
    sf.write(tmp_path / "4000hz.wav", np.zeros(4000, np.int16), 4000)
    for name, rate in (("1hz.wav", 1), ("3999hz.wav", 3999)):
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: a sample rate of {rate} Hz; speech needs at least 4000 Hz"
    assert len(load_audio(tmp_path / "4000hz.wav")) == 16000


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_samples_that_are_not_numbers_are_refused(tmp_path, bad):
    x = np.zeros((32000, 2), np.float32)
    x[24000, 1] = bad  # 1.5 s in, one channel
    sf.write(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as e:
        load_audio(tmp_path / "f.wav")
    assert str(e.value) == f"{tmp_path / 'f.wav'}: NaN or infinite samples (at 1.50 s)"


def test_names_that_are_not_utf8_are_read_and_unusable_names_are_one_error(tmp_path):
    good = tmp_path / os.fsdecode(b"good\xff.wav")  # what Python makes of a Latin-1 name on a UTF-8 system
    sf.write(tmp_path / "a.wav", np.full(1600, 0.25, np.float32), 16000, subtype="PCM_16")
    (tmp_path / "a.wav").rename(good)
    assert np.array_equal(load_audio(good), np.full(1600, 0.25, np.float32))
    for name, why in (("a\ud800.wav", "surrogates not allowed"), ("a\0.wav", "embedded null byte")):
        with pytest.raises(AudioError) as e:  # e.g. from a manifest's JSON: no file can have that name
            load_audio(tmp_path / name)
        assert str(e.value) == f"{tmp_path / name}: not a usable file name ({why})"
