import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from proslushka import audio
from proslushka.data import (
    AudioDataset,
    ManifestError,
    SpecAugment,
    change_speed,
    collate,
    read_manifest,
)
from proslushka.text import LABELS, encode


def write_wav(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(int(seconds * 16000)) * 3000).clip(-32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm, 16000, subtype="PCM_16")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    """Three short clips in tmp_path/audio, referenced by relative paths."""
    for i, seconds in enumerate((0.3, 0.5, 0.8)):
        write_wav(tmp_path / "audio" / f"{i}.wav", seconds, seed=i)
    return tmp_path


def row(i: int, text: str = "привет мир", duration: float = 0.5) -> dict:
    return {"audio_filepath": f"audio/{i}.wav", "text": text, "duration": duration}


# ----------------------------------------------------------------------------- manifests


def test_reads_and_resolves_relative_paths(corpus, monkeypatch):
    manifest = write_jsonl(corpus / "m.jsonl", [row(0, "Привет, Мир!", 0.3), "", row(1, "ёлка", 0.5)])
    monkeypatch.chdir("/")  # relative to the manifest's folder, not the working directory
    utts = read_manifest(manifest)
    assert [u.audio_filepath for u in utts] == [str((corpus / f"audio/{i}.wav").resolve()) for i in (0, 1)]
    assert [u.text for u in utts] == ["привет мир", "елка"]
    assert [u.duration for u in utts] == [0.3, 0.5]
    assert [u.line for u in utts] == [1, 3]  # the blank line 2 is skipped, not an error
    assert utts.skipped == [] and utts.filtered == 0


BAD_ROWS = [
    ('{"audio_filepath": "audio/0.wav", "text": "да"', "malformed JSON"),
    ({"audio_filepath": "audio/0.wav", "duration": 1.0}, "missing field 'text'"),
    ({"text": "да", "duration": 1.0}, "missing field 'audio_filepath'"),
    ({"audio_filepath": "audio/0.wav", "text": "да"}, "missing field 'duration'"),
    (row(0, duration="long"), "duration is not a number"),
    (row(0, duration=None), "duration is not a number"),
    (row(0, duration=0), "duration must be positive"),
    (row(0, duration=-1.5), "duration must be positive"),
    (row(7), "audio file not found"),
    ({**row(0), "audio_filepath": "empty.wav"}, "empty audio file"),
    ({**row(0), "audio_filepath": "audio"}, "audio path is not a file"),
    (row(0, "hello мир"), "characters outside the alphabet: 'e' 'h' 'l' 'o'"),
    (row(0, "в 2024 году"), "characters outside the alphabet: '0' '2' '4'"),
    (row(0, " ?! "), "empty text"),
    ("[1, 2]", "not a JSON object"),
]


@pytest.mark.parametrize("bad, reason", BAD_ROWS, ids=[r for _, r in BAD_ROWS])
def test_each_bad_row_kind_is_reported_with_file_and_line(corpus, bad, reason):
    (corpus / "empty.wav").write_bytes(b"")
    manifest = write_jsonl(corpus / "m.jsonl", [row(0), row(1), bad])
    with pytest.raises(ManifestError) as e:
        read_manifest(manifest)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("1 bad row in ")
    assert len(lines) == 2
    assert lines[1].startswith(f"{manifest}:3: ")
    assert reason in lines[1]


def test_all_bad_rows_in_one_error_and_skip_bad(corpus):
    rows = [row(0), "{not json", row(1, "latin"), row(2), {"text": "да"}, row(9)]
    manifest = write_jsonl(corpus / "m.jsonl", rows)
    with pytest.raises(ManifestError) as e:
        read_manifest(manifest)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("4 bad rows in ")
    assert [ln.split(": ")[0] for ln in lines[1:]] == [f"{manifest}:{i}" for i in (2, 3, 5, 6)]
    assert "missing field 'audio_filepath'; missing field 'duration'" in lines[3]  # every reason of a row

    utts = read_manifest(manifest, skip_bad=True)
    assert [u.line for u in utts] == [1, 4]
    assert utts.skipped == lines[1:]


def test_check_audio_off_skips_the_file_checks(corpus):
    utts = read_manifest(write_jsonl(corpus / "m.jsonl", [row(7)]), check_audio=False)
    assert utts[0].audio_filepath.endswith("7.wav")


def test_duration_filters_drop_rows_and_count_them(corpus):
    rows = [row(0, duration=0.3), row(1, duration=0.5), row(2, duration=0.8), row(0, duration=25.0)]
    utts = read_manifest(write_jsonl(corpus / "m.jsonl", rows), min_duration=0.4, max_duration=20.0)
    assert [u.duration for u in utts] == [0.5, 0.8]
    assert utts.filtered == 2
    assert "2 outside the duration limits" in utts.summary()


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv(corpus, suffix, sep):
    lines = [
        sep.join(["duration", "text", "audio_filepath", "speaker"]),
        sep.join(["0.3", "Привет", "audio/0.wav", "a"]),
        sep.join(["0.5", "hi", "audio/1.wav", "b"]),
        sep.join(["abc", "да", "audio/2.wav", "c"]),
        sep.join(["0.8", "да"]),
    ]
    manifest = corpus / f"m{suffix}"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    utts = read_manifest(manifest, skip_bad=True)
    assert [(u.text, u.duration, u.line) for u in utts] == [("привет", 0.3, 2)]
    assert utts[0].audio_filepath == str((corpus / "audio/0.wav").resolve())
    assert [s.split(": ")[0] for s in utts.skipped] == [f"{manifest}:{i}" for i in (3, 4, 5)]
    assert "missing field 'audio_filepath'" in utts.skipped[2]


def test_csv_without_a_needed_column(corpus):
    manifest = corpus / "m.csv"
    manifest.write_text("audio_filepath,text\naudio/0.wav,да\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"m\.csv:1: header lacks column duration"):
        read_manifest(manifest)


# ----------------------------------------------------------------------------- dataset, cache, collate


def test_dataset_decodes_and_caches(corpus, monkeypatch):
    utts = read_manifest(write_jsonl(corpus / "m.jsonl", [row(0, "да", 0.3), row(1, "нет", 0.5)]))
    cache = corpus / "cache"
    first = [AudioDataset(utts, cache_dir=cache)[i] for i in range(2)]
    wave, ids = first[0]
    pcm, _ = sf.read(corpus / "audio/0.wav", dtype="int16")
    assert wave.dtype == torch.float32 and ids.dtype == torch.int64
    assert torch.equal(wave, torch.from_numpy(pcm.astype(np.float32) / 32768))
    assert ids.tolist() == encode("да", LABELS)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob("*.tmp"))

    def no_ffmpeg(*args, **kwargs):
        raise AssertionError("ffmpeg ran on a cached clip")

    monkeypatch.setattr(audio, "load_audio", no_ffmpeg)
    again = AudioDataset(utts, cache_dir=cache)  # a new dataset, as in a new run
    for i in range(2):
        assert torch.equal(again[i][0], first[i][0])


def test_cache_notices_a_changed_file(corpus):
    utts = read_manifest(write_jsonl(corpus / "m.jsonl", [row(0, "да", 0.3)]))
    ds = AudioDataset(utts, cache_dir=corpus / "cache")
    before = ds[0][0]
    write_wav(corpus / "audio/0.wav", 0.4, seed=5)
    assert len(ds[0][0]) == 6400 != len(before)


def test_collate_pads():
    batch = [(torch.ones(5), torch.tensor([3, 4])), (torch.full((3,), 2.0), torch.tensor([5, 6, 7]))]
    audio_batch, audio_lengths, targets, target_lengths = collate(batch)
    assert audio_batch.tolist() == [[1] * 5, [2, 2, 2, 0, 0]]
    assert audio_batch.dtype == torch.float32
    assert audio_lengths.tolist() == [5, 3] and audio_lengths.dtype == torch.int64
    assert targets.tolist() == [[3, 4, 0], [5, 6, 7]] and targets.dtype == torch.int64
    assert target_lengths.tolist() == [2, 3] and target_lengths.dtype == torch.int64


def test_speed_perturb_changes_length_by_the_rate(corpus):
    utts = read_manifest(write_jsonl(corpus / "m.jsonl", [row(2, "да", 0.8)]))
    plain = AudioDataset(utts)[0][0]
    for rate in (0.9, 1.1):
        assert len(AudioDataset(utts, speed_perturb=(rate,))[0][0]) == round(len(plain) / rate)
    # the pick depends on (seed, epoch, index) only: a resumed run sees the same audio
    picks = []
    wave = plain.numpy()
    for _ in range(2):
        ds = AudioDataset(utts * 40, speed_perturb=(0.9, 1.0, 1.1), seed=3)
        ds.set_epoch(2)
        ds.load = lambda path: wave  # skip ffmpeg: only the pick is under test
        picks.append([len(ds[i][0]) for i in range(40)])
    assert picks[0] == picks[1] and len(set(picks[0])) == 3


def test_change_speed_keeps_the_pitch_relation():
    t = np.arange(16000) / 16000
    wave = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    fast = change_speed(wave, 1.1)
    peak = np.argmax(np.abs(np.fft.rfft(fast))) * 16000 / len(fast)
    assert len(fast) == round(16000 / 1.1) and fast.dtype == np.float32
    assert peak == pytest.approx(440 * 1.1, abs=2)


# ----------------------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_only_valid_frames():
    features = torch.randn(4, 64, 300) + 10  # no natural zeros
    lengths = torch.tensor([300, 200, 50, 7])
    aug = SpecAugment(rect_masks=2, rect_freq=50, rect_time=120, freq_masks=1, time_masks=2, time_width=0.1)
    g = torch.Generator().manual_seed(0)
    out = aug(features, lengths, generator=g)
    masked = out == 0
    assert masked.any()
    for i, n in enumerate(lengths.tolist()):
        assert not masked[i, :, n:].any()  # padding is never touched
        assert torch.equal(out[i][~masked[i]], features[i][~masked[i]])
    again = aug(features, lengths, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_spec_augment_rectangles_by_default():
    aug = SpecAugment()
    features = torch.randn(64, 64, 400) + 10
    masked = aug(features, torch.full((64,), 400), generator=torch.Generator().manual_seed(1)) == 0
    assert masked.any()
    assert masked.sum((1, 2)).max() <= 2 * 50 * 120
    assert not masked.all(2).any()  # rectangles, never a whole frequency band
    assert masked.any(1).sum(1).max() <= 2 * 120  # frames touched per item


def test_spec_augment_is_identity_in_eval():
    aug = SpecAugment().eval()
    features = torch.randn(2, 64, 100)
    assert aug(features, torch.tensor([100, 60])) is features
