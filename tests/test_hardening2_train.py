"""Hardening, round 2, for training (#26): two runs on one folder, and a manifest whose duration lies."""

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pytest
from conftest import ROOT
from test_data import write_jsonl, write_wav
from test_trainer import tiny_cfg

from proslushka.audio import AudioError
from proslushka.data import AudioDataset, read_manifest
from proslushka.settings import TrainError
from proslushka.trainer import Trainer, train


def test_a_second_training_on_a_folder_in_use_is_refused(tmp_path):
    first = Trainer(tiny_cfg(tmp_path, max_steps=2))
    for second in (tiny_cfg(tmp_path, max_steps=2), tiny_cfg(tmp_path, max_steps=2, overwrite=True)):
        with pytest.raises(TrainError) as e:
            Trainer(second)
        assert e.value.code == 2
        assert str(e.value).startswith(
            f"{tmp_path / 'run'}: another training is writing in this folder (pid {os.getpid()})"
        )
    first.fit()  # its end lets the folder go
    last = tmp_path / "run" / "last.pt"
    train(tiny_cfg(tmp_path, max_steps=3, resume=str(last)))


def test_a_killed_run_does_not_leave_its_folder_locked(tmp_path):
    cfg = tiny_cfg(tmp_path)
    run = tmp_path / "run"
    args = ["--train_manifest", cfg.train_manifest, "--out_dir", run, "--model", "tiny", "--batch_size", "2"]
    args += ["--num_workers", "0", "--max_steps", "1000", "--save_every", "1", "--no_progress"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, args)], stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").exists():
        time.sleep(0.2)
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args), "--overwrite"], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 2 and f"another training is writing in this folder (pid {proc.pid})" in r.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    train(tiny_cfg(tmp_path, max_steps=1, overwrite=True))  # the kernel dropped the dead run's lock


def test_a_failed_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(TrainError):
        Trainer(tiny_cfg(tmp_path, train_manifest=str(tmp_path / "missing.jsonl")))
    assert not (tmp_path / "run").exists()


def test_a_clip_longer_than_its_manifest_says_is_refused_without_decoding_it_whole(tmp_path):
    long = write_wav(tmp_path / "audio" / "long.wav", 120)  # 2 minutes, said to be 2 s
    write_wav(tmp_path / "audio" / "ok.wav", 2.0, seed=1)
    rows = [{"audio_filepath": "audio/ok.wav", "text": "да", "duration": 2.0}]
    rows.append({"audio_filepath": "audio/long.wav", "text": "нет", "duration": 2.0})
    manifest = read_manifest(write_jsonl(tmp_path / "m.jsonl", rows))
    ds = AudioDataset(manifest, cache_dir=tmp_path / "cache")
    assert len(ds[0][0]) == 32000  # an honest row loads as before
    tracemalloc.start()
    with pytest.raises(AudioError) as e:
        ds[1]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(e.value) == f"{long}: longer than its manifest duration of 2 s (manifest line 2); correct the duration"
    assert peak < 120 * 16000 * 4 / 4  # a fraction of the whole clip's float32 samples (7.7 MB)
    assert not list((tmp_path / "cache").glob("*.npy"))[1:]  # only the honest clip was cached

    # in a training run: one line naming the file, exit 1
    cfg = tiny_cfg(tmp_path / "t", train_manifest=str(tmp_path / "m.jsonl"), batch_size=1, max_steps=4)
    with pytest.raises(TrainError) as e:
        train(cfg)
    assert e.value.code == 1 and f"{long}: longer than its manifest duration of 2 s" in str(e.value)
