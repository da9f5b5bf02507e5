import numpy as np
import pytest
import soundfile as sf
from conftest import AUDIO

from proslushka.audio import AudioError, load_audio, load_audio_bytes


def test_wav_decodes_exactly_as_pcm16(reference):
    wave = load_audio(AUDIO / "utt1.wav")
    pcm, sr = sf.read(AUDIO / "utt1.wav", dtype="int16")
    assert sr == 16000 and wave.dtype == np.float32
    assert np.array_equal(wave, pcm.astype(np.float32) / 32768)
    assert np.array_equal(wave, reference["quartznet_tiny"]["utt1_waveform"].reshape(-1))


@pytest.mark.parametrize("clip", ["utt1", "utt2", "utt3"])
def test_opus_decodes_to_the_same_length(clip):
    assert abs(len(load_audio(AUDIO / f"{clip}.opus")) - len(load_audio(AUDIO / f"{clip}.wav"))) < 160


def test_resamples_and_downmixes(tmp_path):
    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t)], 1) * 0.5
    sf.write(tmp_path / "s.flac", stereo, 44100)
    wave = load_audio(tmp_path / "s.flac")
    assert abs(len(wave) - 16000) <= 1 and 0.45 < np.abs(wave).max() < 0.55


def test_bytes_round_trip():
    data = (AUDIO / "utt1.opus").read_bytes()
    assert abs(len(load_audio_bytes(data)) - 22480) < 160


def _bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("это не аудио\n" * 20)
    (tmp_path / "noise.opus").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "truncated.wav").write_bytes((AUDIO / "utt1.wav").read_bytes()[:30])
    return {
        tmp_path / "missing.wav": "no such file",
        tmp_path / "empty.wav": "empty file",
        tmp_path / "notes.txt": "not readable audio",
        tmp_path / "noise.opus": "not readable audio",
        tmp_path / "truncated.wav": "",
    }


def test_bad_audio_raises_one_clear_error_naming_the_file(tmp_path):
    for path, reason in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as e:
            load_audio(path)
        msg = str(e.value)
        assert msg.startswith(str(path)) and reason in msg and "\n" not in msg


def test_empty_bytes_raise():
    with pytest.raises(AudioError, match="empty"):
        load_audio_bytes(b"", "upload")
